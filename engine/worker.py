"""``python -m engine.worker``: one GPU worker that takes image jobs from Redis through taskiq.

Run one process per GPU (pick it with ``CUDA_VISIBLE_DEVICES``). The process loads the pipeline
once, then takes one job at a time from the taskiq Redis Streams broker, reports every denoising
step to the bot, and returns the PNG with the parameters used through the result backend.

Why a job reaches the user exactly once although the stream delivers at least once:

* the message is acknowledged only after the result is saved (``WHEN_SAVED``), so a worker
  killed mid-job leaves it pending and another worker reclaims it (XAUTOCLAIM) once it has been
  idle for ``IMAGINE_REDELIVER_AFTER_S``;
* while a worker runs a job it renews the stream entry's idle time and its claim every
  heartbeat (``engine.redis.presence``), so a *slow* job is never mistaken for an abandoned one;
* a redelivered job whose result exists is skipped, a job claimed by a live worker is waited
  for, and results are stored first-write-wins (``engine.redis.ledger``).

Deadlines and cancellation act inside the pipeline's step callback (``should_stop``), so a job
nobody waits for any more frees the GPU at the next step instead of running to the end. A job
message this version cannot read (``engine.redis.wire``) is failed with a plain message and the
worker takes the next one.

A worker loads the edit model too when ``IMAGINE_EDIT_MODEL`` is set (``engine.edit``). Its
heartbeat then announces the capability ``edit`` and it also reads the edit job stream; a
worker without it never reads that stream, so it never takes an edit job
(``engine.redis.keys.RedisKeys.stream_for``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.asyncio import Redis
from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

from engine.contract import CAPABILITY_GENERATE
from engine.metrics import WorkerMetrics
from engine.redis.broker import JobEventsMiddleware, ResilientStreamBroker, make_broker
from engine.redis.connection import REDIS_DOWN, make_redis, retry_forever
from engine.redis.health import check_health, health_file_path, remove_health, write_health
from engine.redis.keys import TASK_NAME, RedisKeys
from engine.redis.ledger import JobLedger
from engine.redis.presence import Presence
from engine.redis.settings import RemoteSettings, redact_url
from engine.redis.task import WorkerJobs
from engine.redis.wire import Heartbeat, WorkerEvent, WorkerState
from engine.settings import EngineSettings, load_settings

logger = logging.getLogger(__name__)


def default_worker_name() -> str:
    """Host name plus the GPU it was given, e.g. ``gpu-box-gpu1``: what /status shows."""
    host = socket.gethostname().split(".")[0] or "worker"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"{host}-gpu{devices.replace(',', '+')}" if devices else host


class Worker(WorkerJobs):
    """One GPU, one pipeline, one job at a time (the job itself: ``WorkerJobs``)."""

    def __init__(
        self,
        remote: RemoteSettings | None = None,
        engine: EngineSettings | None = None,
        generator: Any = None,
        *,
        name: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.remote = remote or RemoteSettings()
        self.engine = engine or EngineSettings()
        if not self.remote.redis_url:
            raise ValueError("the worker needs IMAGINE_REDIS_URL")
        self.keys = RedisKeys(self.remote.redis_prefix)
        self.name = name or self.remote.worker_name or default_worker_name()
        # Unique per process: two workers that share a name never share stream entries.
        self.consumer = f"{self.name}#{uuid.uuid4().hex[:8]}"
        self.generator = generator
        self.metrics = metrics or WorkerMetrics()
        self.state = WorkerState.STARTING
        self.current_job: str | None = None
        self.jobs_done = 0
        # Announced once the models are loaded; until then the worker takes no job at all.
        self.capabilities: tuple[str, ...] = (CAPABILITY_GENERATE,)
        self.started_at = time.time()
        self._sec_per_step: float | None = None
        self._info: dict[str, Any] = {}
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-gpu")
        self._redis: Redis | None = None
        self._presence: Presence | None = None
        self._ledger: JobLedger | None = None
        self._broker: ResilientStreamBroker | None = None
        self._stop: asyncio.Event | None = None
        self._events: asyncio.Queue[str] | None = None
        self._redis_down = False
        self._crashes = 0  # jobs that crashed in a row
        self._crashed_out = False
        self.health_file = health_file_path(self.remote, self.name)
        self._leaving = False
        self._health_warned = False

    @property
    def exit_code(self) -> int:
        """1 after crashes in a row (so a supervisor restarts the process), else 0."""
        return 1 if self._crashed_out else 0

    # ---------------------------------------------------------------- lifecycle
    def request_stop(self) -> None:
        """Finish the current job, take no new one, then exit (SIGTERM)."""
        if self._stop is not None and not self._stop.is_set():
            logger.info("stopping after the current job")
            self.state = WorkerState.STOPPING
            self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        self._stop = stop or asyncio.Event()
        self._events = asyncio.Queue(maxsize=256)
        self._redis = make_redis(self.remote)
        self._presence = Presence(self._redis, self.keys, self.remote, self.consumer)
        self._ledger = JobLedger(self._redis, self.keys, self.remote, self.consumer)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="imagine-heartbeat"),
            asyncio.create_task(self._publisher(), name="imagine-events"),
        ]
        try:
            if self.generator is None:
                self.state = WorkerState.LOADING
                await self._beat_quietly()
                self.generator = await asyncio.to_thread(self._load)
            if self._stop.is_set():
                return
            self._info = dict(self.generator.info())
            self.capabilities = self._capabilities()
            self._presence.streams = self.keys.streams_for(self.capabilities)
            self.metrics.describe({"name": self.name, **self._info})
            broker = make_broker(
                self.remote, self.keys, consumer_name=self.consumer, capabilities=self.capabilities
            )
            broker.is_worker_process = True
            broker.add_middlewares(JobEventsMiddleware(self._redis, self.keys, self.name))
            broker.register_task(self._task_function(), task_name=TASK_NAME)
            self._broker = broker
            await retry_forever("joining the job stream", broker.startup)
            await self._presence.forget_dead_consumers()
            stopping = self._stop.is_set()
            self.state = WorkerState.STOPPING if stopping else WorkerState.IDLE
            await self._beat_quietly()
            self._emit(WorkerEvent(worker=self.name, state=self.state).dumps())
            logger.info(
                "worker %s ready on %s (%s, %s; runs %s) — jobs from %s",
                self.name,
                self._info.get("gpu"),
                self._info.get("memory_mode"),
                self._info.get("model"),
                ", ".join(self.capabilities),
                redact_url(str(self.remote.redis_url)),
            )
            receiver = Receiver(
                broker,
                max_async_tasks=1,
                max_prefetch=0,
                ack_type=AcknowledgeType.WHEN_SAVED,
                run_startup=False,
                propagate_exceptions=False,
            )
            closer = asyncio.create_task(self._close_stream_on_stop(broker))
            background.append(closer)
            await receiver.listen(self._stop)
        finally:
            self.state = WorkerState.STOPPING
            self._leaving = True  # no heartbeat rewrites the health file from here on
            remove_health(self.health_file)
            await self._presence.leave(self.name)
            for task in background:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*background, return_exceptions=True)
            if self._broker is not None:
                with contextlib.suppress(*REDIS_DOWN):
                    await self._broker.shutdown()
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.aclose()
            self._gpu.shutdown(wait=False)
            logger.info("worker %s stopped after %d images", self.name, self.jobs_done)

    async def _close_stream_on_stop(self, broker: ResilientStreamBroker) -> None:
        assert self._stop is not None
        await self._stop.wait()
        self.state = WorkerState.STOPPING
        broker.closing = True
        await self._beat_quietly()  # capacity 0 at once: the bot sends nothing more here

    def _load(self) -> Any:
        from engine.edit import Generators  # torch is imported here, not at import time

        generator = Generators.load(self.engine)
        if self.engine.warmup and hasattr(generator, "warmup"):
            generator.warmup()
        return generator

    def _resident_models(self) -> list[str]:
        """The models on this worker's GPU now (they change when a swap happens)."""
        resident = getattr(self.generator, "resident_models", None)
        if callable(resident):
            return [str(m) for m in resident()]
        model = self._info.get("model")
        return [str(model)] if model else []

    def _capabilities(self) -> tuple[str, ...]:
        """What the loaded generator runs (a plain text-to-image generator: only that)."""
        capabilities = getattr(self.generator, "capabilities", None)
        found = tuple(capabilities()) if callable(capabilities) else ()
        return found or (CAPABILITY_GENERATE,)

    # --------------------------------------------------------------- heartbeats
    def heartbeat(self) -> Heartbeat:
        """What this worker announces now (``/status``, free slots for the dispatcher)."""
        return Heartbeat(
            name=self.name,
            consumer=self.consumer,
            host=socket.gethostname(),
            pid=os.getpid(),
            state=self.state,
            capacity=1 if self.state.ready else 0,
            gpu=str(self._info.get("gpu", "loading")),
            memory_gb=float(self._info.get("memory_gb") or 0.0),
            memory_mode=str(self._info.get("memory_mode", "loading")),
            model=str(self._info.get("model", self.engine.model)),
            fast_available=bool(self._info.get("fast_available", False)),
            current_job=self.current_job,
            jobs_done=self.jobs_done,
            sec_per_step=self._sec_per_step,
            started_at=self.started_at,
            last_seen=time.time(),
            capabilities=list(self.capabilities),
            resident_models=self._resident_models(),
        )

    async def _beat_quietly(self) -> None:
        assert self._presence is not None
        with contextlib.suppress(*REDIS_DOWN):
            await self._presence.beat(self.heartbeat())

    async def _heartbeat_loop(self) -> None:
        assert self._presence is not None
        while True:
            try:
                await self._presence.beat(self.heartbeat())
                self._write_health()
                if self._broker is not None:
                    await self._presence.renew_leases(self.current_job)
                    with contextlib.suppress(*REDIS_DOWN):
                        depth = await self._presence.queue_depth()
                        if depth is not None:
                            self.metrics.queue_depth.set(depth)
                if self._redis_down:
                    logger.info("Redis is reachable again")
                self._redis_down = False
            except REDIS_DOWN as exc:
                if not self._redis_down:
                    logger.warning("Redis unreachable (%s); the current job goes on", exc)
                self._redis_down = True
                if self._broker is not None:
                    self._broker.hold_reclaim()
            await asyncio.sleep(self.remote.heartbeat_s)

    def _write_health(self) -> None:
        """The Docker health check reads this file: rewritten after every heartbeat that
        reached Redis, so a worker that hangs or lost Redis turns unhealthy."""
        if self._leaving or self._crashed_out:
            return
        try:
            write_health(self.health_file, self.name, str(self.state))
            self._health_warned = False
        except OSError as exc:
            if not self._health_warned:
                logger.warning("cannot write the health file %s: %s", self.health_file, exc)
                self._health_warned = True

    # --------------------------------------------------------------- job events
    def _emit(self, event: str) -> None:
        """Queue an event for the bot; progress is best effort and never blocks the GPU."""
        if self._events is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    async def _publisher(self) -> None:
        assert self._events is not None and self._redis is not None
        while True:
            event = await self._events.get()
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.publish(self.keys.events, event)


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

    from engine.pipeline import EngineUnavailable

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
