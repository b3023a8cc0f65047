"""Prometheus metrics of the bot, served at ``/metrics`` by ``bot.health``.

They live in their own registry (not the process-wide default) so that building several bots in
one process (tests, harnesses) never registers a metric twice, and ``/metrics`` shows exactly
what this bot measures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Counter(
    "imagine_jobs",
    "Generations that ended, by outcome (done, failed, cancelled, refused).",
    ["outcome"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "imagine_queue_depth",
    "Jobs this bot is waiting for (queued or running).",
    registry=REGISTRY,
)
SECONDS_PER_STEP = Histogram(
    "imagine_seconds_per_step",
    "GPU seconds per denoising step of finished images.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
    registry=REGISTRY,
)
SECONDS_PER_IMAGE = Histogram(
    "imagine_seconds_per_image",
    "GPU seconds per finished image (not counting time in the queue).",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600),
    registry=REGISTRY,
)
ACK_LATENCY = Histogram(
    "imagine_ack_latency_seconds",
    "Seconds from receiving /imagine (or a button) to answering it; Discord allows 3.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0),
    registry=REGISTRY,
)
