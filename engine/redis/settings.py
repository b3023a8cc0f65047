"""Settings of the Redis path, shared by the bot (``RedisBackend``) and the GPU workers."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, model_validator

from engine.settings import ImagineBaseSettings


class RemoteSettings(ImagineBaseSettings):
    """``IMAGINE_REDIS_URL`` and the timings of heartbeats, redelivery and results.

    ``redis_url`` is defined here only; the bot reads the same variable to choose this path.
    """

    redis_url: str | None = Field(
        None,
        description="redis://[:password@]host:port/db; when set, the bot sends jobs to workers",
    )
    redis_prefix: str = Field(
        "imagine", description="prefix of every Redis key; one bot deployment per prefix"
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="how often workers announce themselves and renew their job"
    )
    redeliver_after_s: float = Field(
        60.0,
        gt=0,
        description="a dead worker's job goes to another worker after this much silence",
    )
    worker_grace_s: float = Field(
        120.0,
        ge=0,
        description="with no worker online, still accept jobs this long after the last one left",
    )
    result_ttl_s: int = Field(
        86400, gt=0, description="how long an undelivered result waits in Redis for the bot"
    )
    result_keep_s: int = Field(
        900, gt=0, description="how long a delivered result stays (a bot restart can re-read it)"
    )
    max_attempts: int = Field(
        3, ge=1, description="deliveries of one job before it is failed instead of retried"
    )
    answer_margin_s: float = Field(
        180.0,
        gt=0,
        description="(bot) a job with no answer this long after its GPU deadline is failed",
    )
    stream_maxlen: int = Field(10_000, ge=100, description="trim the job stream to about this")
    connect_timeout_s: float = Field(2.0, gt=0)
    worker_name: str | None = Field(
        None, description="name in /status; default: host name and CUDA_VISIBLE_DEVICES"
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="serve Prometheus /metrics on this port (0 = off)"
    )
    worker_metrics_addr: str = Field(
        "127.0.0.1",
        description="address of the metrics server (the worker Docker image sets 0.0.0.0)",
    )
    worker_max_crashes: int = Field(
        3,
        ge=1,
        description="a worker whose jobs lose the GPU's CUDA context this many times in a row "
        "exits, so that its supervisor (Docker, systemd) restarts it with a fresh context; any "
        "other failure costs its job only",
    )
    worker_health_file: Path | None = Field(
        None,
        description="file the worker rewrites at every heartbeat (Docker health check); "
        "default: imagine-worker-<name>.alive in the system temp dir",
    )

    @model_validator(mode="after")
    def _timings(self) -> RemoteSettings:
        # Redelivery must wait for several missed heartbeats, or a live worker loses its job.
        if self.redeliver_after_s < 4 * self.heartbeat_s:
            raise ValueError(
                f"IMAGINE_REDELIVER_AFTER_S ({self.redeliver_after_s}) must be at least 4x "
                f"IMAGINE_HEARTBEAT_S ({self.heartbeat_s})"
            )
        return self

    @property
    def worker_ttl_s(self) -> float:
        """A worker missing three heartbeats is gone."""
        return 3 * self.heartbeat_s

    @property
    def claim_ttl_s(self) -> float:
        """Shorter than the redelivery idle time, so a dead worker's claim is gone by then."""
        return min(3 * self.heartbeat_s, self.redeliver_after_s / 2)


# Query keys whose values are secrets: redis-py reads ``?password=``; ``ssl_password`` and the like
# are treated alike, since hiding a harmless value costs nothing.
_SECRET_KEY = re.compile(r"pass|secret|token|auth", re.IGNORECASE)
_QUERY_ITEM = re.compile(r"(?P<key>[^&;=]*)=(?P<value>[^&;]*)")


def _redact_query(query: str) -> str:
    def hide(item: re.Match[str]) -> str:
        key = item["key"]
        return f"{key}=***" if _SECRET_KEY.search(key) else item[0]

    return _QUERY_ITEM.sub(hide, query)


def redact_url(url: str) -> str:
    """The Redis URL for logs: no password, whether in its userinfo (``:pw@``) or its query
    string (``?password=``). Plain string work, no URL parser: a malformed URL (a port that is
    not a number) is redacted too, never raises."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:  # a user name alone is not a secret (redis-py sends it as one)
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        tail = f"{path}?{_redact_query(query)}{hash_}{fragment}"
    return f"{scheme}://{netloc}{tail}"
