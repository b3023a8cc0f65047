"""``python -m engine.worker``: one GPU worker that takes jobs from Redis through taskiq.

Run one process per GPU (pick it with ``CUDA_VISIBLE_DEVICES``). This module is the command
line only: the worker itself (loading, the job stream, heartbeats, each job) is
``engine.redis.worker.Worker``; everything that speaks Redis lives in ``engine/redis/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from engine.redis.health import check_health, health_file_path
from engine.redis.redaction import install_log_redaction
from engine.redis.settings import RemoteSettings
from engine.redis.worker import Worker, default_worker_name
from engine.settings import EngineSettings, load_settings

logger = logging.getLogger(__name__)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker",
        description="GPU worker: takes image jobs from Redis (IMAGINE_REDIS_URL). Run one per "
        "GPU, choosing it with CUDA_VISIBLE_DEVICES.",
    )
    parser.add_argument("--name", help="name shown in /status (default: host and GPU)")
    parser.add_argument("--log-level", default=os.environ.get("IMAGINE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 while this host's worker writes its heartbeat file (Docker HEALTHCHECK), "
        "1 otherwise",
    )
    return parser.parse_args(argv)


def healthcheck(remote: RemoteSettings, name: str | None) -> int:
    """``--healthcheck``: is the worker of this container alive? Prints why, for docker inspect."""
    path = health_file_path(remote, name or remote.worker_name or default_worker_name())
    healthy, why = check_health(path, remote.heartbeat_s)
    print(why)
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("taskiq.receiver.receiver", "taskiq.process-manager"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        remote = load_settings(RemoteSettings)
        install_log_redaction(remote.redis_url)  # the URL may hold a password
        if args.healthcheck:
            return healthcheck(remote, args.name)
        engine = load_settings(EngineSettings)
    except SystemExit as exc:  # the error is printed, by variable, without any value
        return int(exc.code or 2)
    if not remote.redis_url:
        logger.error("IMAGINE_REDIS_URL is not set: a worker takes its jobs from Redis")
        return 2
    worker = Worker(remote, engine, name=args.name)
    try:
        worker.metrics.serve(remote.worker_metrics_port, remote.worker_metrics_addr)
    except OSError as exc:
        logger.error("cannot serve metrics on port %d: %s", remote.worker_metrics_port, exc)
        return 2

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        worker._stop = stop
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                logger.warning("second signal: exiting now; the current job will be redelivered")
                os._exit(1)
            worker.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await worker.run(stop)

    from engine.devices import EngineUnavailable

    try:
        asyncio.run(run())
    except EngineUnavailable as exc:
        logger.error("%s", exc)
        return 2
    return worker.exit_code


if __name__ == "__main__":
    # Run as the importable module, so log records say "engine.worker", not "__main__".
    from engine.worker import main as _main

    sys.exit(_main())
