"""Prometheus metrics of one GPU worker (``python -m engine.worker``).

Each worker gets its own registry, so several workers in one test process (or a worker embedded
in a bot for a dry run) never collide on metric names; the worker serves it on
``IMAGINE_WORKER_METRICS_PORT``. Names carry an ``imagine_worker_`` prefix so that one Prometheus
can scrape the bot (``bot/metrics.py``) and every worker without clashes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)

logger = logging.getLogger(__name__)

# One step of the real model takes 0.2-2 s on a GPU (several seconds when offloaded).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
IMAGE_BUCKETS = (0.5, 1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 90, 120, 300, 600)
# From the bot handing a job to the broker to a worker starting it.
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

OUTCOMES = ("done", "cancelled", "timeout", "oom", "error", "invalid", "duplicate", "stale")


class WorkerMetrics:
    """Jobs by outcome, queue depth, seconds per step and per image, acknowledgement latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "imagine_worker_jobs",
            "Jobs this worker finished, by outcome (duplicate: done elsewhere; stale: too old)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # every series exists from the start (rate() needs a zero)
            self.jobs.labels(outcome)
        self.queue_depth = Gauge(
            "imagine_worker_queue_depth",
            "Jobs in the Redis stream not yet finished (unread plus in progress), all workers",
            registry=self.registry,
        )
        self.busy = Gauge(
            "imagine_worker_busy", "1 while this worker renders an image", registry=self.registry
        )
        self.step_seconds = Histogram(
            "imagine_worker_step_seconds",
            "Seconds per denoising step",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.image_seconds = Histogram(
            "imagine_worker_image_seconds",
            "Seconds of GPU work per finished image",
            buckets=IMAGE_BUCKETS,
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "imagine_worker_ack_latency_seconds",
            "Seconds from the bot handing a job to the broker until this worker took it",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.redeliveries = Counter(
            "imagine_worker_redeliveries",
            "Jobs this worker took over from a worker that stopped answering",
            registry=self.registry,
        )
        self.info = Info("imagine_worker", "GPU, model and memory mode", registry=self.registry)

    def describe(self, details: Mapping[str, object]) -> None:
        self.info.info({k: str(v) for k, v in details.items() if v is not None})

    def outcome(self, outcome: str) -> None:
        self.jobs.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> WSGIServer | None:
        """Start the /metrics HTTP server on a daemon thread; returns the server (or None)."""
        if not port:
            return None
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        logger.info("metrics on http://%s:%d/metrics", addr, port)
        return server
