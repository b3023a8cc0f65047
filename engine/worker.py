"""``python -m engine.worker``: one GPU worker that takes image jobs from Redis through taskiq.

Run one process per GPU (pick it with ``CUDA_VISIBLE_DEVICES``). The process loads the pipeline
once, then takes one job at a time from the taskiq Redis Streams broker, reports every denoising
step to the bot, and returns the PNG with the parameters used through the result backend.

Why a job reaches the user exactly once although the stream delivers at least once:

* the message is acknowledged only after the result is saved (``WHEN_SAVED``), so a worker
  killed mid-job leaves it pending and another worker reclaims it (XAUTOCLAIM) once it has been
  idle for ``IMAGINE_REDELIVER_AFTER_S``;
* while a worker runs a job it renews the stream entry's idle time and its claim every
  heartbeat, so a *slow* job is never mistaken for an abandoned one;
* a redelivered job whose result exists is skipped, a job claimed by a live worker is waited
  for, and results are stored first-write-wins.

Deadlines and cancellation act inside the pipeline's step callback (``should_stop``), so a job
nobody waits for any more frees the GPU at the next step instead of running to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
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
from taskiq.exceptions import NoResultError
from taskiq.receiver import Receiver

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult
from engine.metrics import WorkerMetrics
from engine.remote import (
    ERROR_MESSAGE,
    REDIS_DOWN,
    TASK_NAME,
    JobEventsMiddleware,
    RedisKeys,
    RemoteSettings,
    ResilientStreamBroker,
    make_broker,
    make_redis,
    redact_url,
    retry_forever,
)
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

# Renew, in one atomic step, the idle time of every stream entry this worker holds (so it is
# not redelivered while it runs) and the job claim, if it is still ours.
RENEW_LEASES = """
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 10, ARGV[2])
local renewed = 0
if ok then
  for _, entry in ipairs(pending) do
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry[1], 'JUSTID')
    renewed = renewed + 1
  end
end
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return renewed
"""

STOP_POLL_S = 0.25


def default_worker_name() -> str:
    """Host name plus the GPU it was given, e.g. ``gpu-box-gpu1``: what /status shows."""
    host = socket.gethostname().split(".")[0] or "worker"
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"{host}-gpu{devices.replace(',', '+')}" if devices else host


def _failure(kind: FailureKind, message: str) -> dict[str, Any]:
    return {"ok": False, "error": JobFailed(kind, message).to_dict()}


class Worker:
    """One GPU, one pipeline, one job at a time."""

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
        self.state = "starting"
        self.current_job: str | None = None
        self.jobs_done = 0
        self.started_at = time.time()
        self._sec_per_step: float | None = None
        self._info: dict[str, Any] = {}
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-gpu")
        self._redis: Redis | None = None
        self._broker: ResilientStreamBroker | None = None
        self._stop: asyncio.Event | None = None
        self._events: asyncio.Queue[dict[str, Any]] | None = None
        self._redis_down = False

    # ---------------------------------------------------------------- lifecycle
    def request_stop(self) -> None:
        """Finish the current job, take no new one, then exit (SIGTERM)."""
        if self._stop is not None and not self._stop.is_set():
            logger.info("stopping after the current job")
            self.state = "stopping"
            self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        self._stop = stop or asyncio.Event()
        self._events = asyncio.Queue(maxsize=256)
        self._redis = make_redis(self.remote)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="imagine-heartbeat"),
            asyncio.create_task(self._publisher(), name="imagine-events"),
        ]
        try:
            if self.generator is None:
                self.state = "loading"
                await self._beat_quietly()
                self.generator = await asyncio.to_thread(self._load)
            if self._stop.is_set():
                return
            self._info = dict(self.generator.info())
            self.metrics.describe({"name": self.name, **self._info})
            broker = make_broker(self.remote, self.keys, consumer_name=self.consumer)
            broker.is_worker_process = True
            broker.add_middlewares(JobEventsMiddleware(self._redis, self.keys, self.name))
            broker.register_task(self._task_function(), task_name=TASK_NAME)
            self._broker = broker
            await retry_forever("joining the job stream", broker.startup)
            await self._forget_dead_consumers()
            self.state = "idle" if not self._stop.is_set() else "stopping"
            await self._beat_quietly()
            self._emit({"type": "worker", "worker": self.name, "state": self.state})
            logger.info(
                "worker %s ready on %s (%s, %s) — jobs from %s",
                self.name,
                self._info.get("gpu"),
                self._info.get("memory_mode"),
                self._info.get("model"),
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
            self.state = "stopping"
            await self._leave()
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
        self.state = "stopping"
        broker.closing = True
        await self._beat_quietly()  # capacity 0 at once: the bot sends nothing more here

    def _load(self) -> Any:
        from engine.pipeline import ImageGenerator  # torch is imported here, not at import time

        generator = ImageGenerator.load(self.engine)
        if self.engine.warmup and hasattr(generator, "warmup"):
            generator.warmup()
        return generator

    async def _leave(self) -> None:
        """Disappear from /status at once and drop this consumer if it holds nothing."""
        if self._redis is None:
            return
        with contextlib.suppress(*REDIS_DOWN):
            await self._redis.delete(self.keys.worker(self.consumer))
            await self._redis.zrem(self.keys.workers, self.consumer)
            await self._redis.publish(
                self.keys.events,
                json.dumps({"type": "worker", "worker": self.name, "state": "gone"}),
            )
            pending = await self._redis.xpending_range(
                self.keys.stream, self.keys.group, "-", "+", 1, consumername=self.consumer
            )
            if not pending:
                await self._redis.xgroup_delconsumer(
                    self.keys.stream, self.keys.group, self.consumer
                )

    async def _forget_dead_consumers(self) -> None:
        """Consumers of exited workers pile up in the group; drop those holding no job."""
        assert self._redis is not None
        with contextlib.suppress(*REDIS_DOWN):
            for consumer in await self._redis.xinfo_consumers(self.keys.stream, self.keys.group):
                name = consumer["name"].decode()
                if consumer["pending"] == 0 and consumer["idle"] > 3_600_000:
                    await self._redis.xgroup_delconsumer(self.keys.stream, self.keys.group, name)

    # --------------------------------------------------------------- heartbeats
    def heartbeat(self) -> dict[str, Any]:
        ready = self.state in ("idle", "busy")
        return {
            "name": self.name,
            "consumer": self.consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state,
            "capacity": 1 if ready else 0,
            "gpu": self._info.get("gpu", "loading"),
            "memory_gb": self._info.get("memory_gb", 0.0),
            "memory_mode": self._info.get("memory_mode", "loading"),
            "model": self._info.get("model", self.engine.model),
            "fast_available": bool(self._info.get("fast_available", False)),
            "current_job": self.current_job,
            "jobs_done": self.jobs_done,
            "sec_per_step": self._sec_per_step,
            "started_at": self.started_at,
            "last_seen": time.time(),
        }

    async def _beat(self) -> None:
        assert self._redis is not None
        beat = self.heartbeat()
        ttl_ms = int(self.remote.worker_ttl_s * 1000)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.keys.worker(self.consumer), json.dumps(beat), px=ttl_ms)
        pipe.zadd(self.keys.workers, {self.consumer: beat["last_seen"]})
        pipe.zremrangebyscore(self.keys.workers, "-inf", beat["last_seen"] - 86_400)
        await pipe.execute()

    async def _beat_quietly(self) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            await self._beat()

    async def _renew_leases(self) -> int:
        assert self._redis is not None
        claim = self.keys.claim(self.current_job) if self.current_job else None
        keys = [self.keys.stream, claim] if claim else [self.keys.stream]
        return int(
            await self._redis.eval(
                RENEW_LEASES,
                len(keys),
                *keys,
                self.keys.group,
                self.consumer,
                int(self.remote.claim_ttl_s * 1000),
            )
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._beat()
                if self._broker is not None:
                    await self._renew_leases()
                    await self._sample_queue_depth()
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

    async def _sample_queue_depth(self) -> None:
        assert self._redis is not None
        with contextlib.suppress(*REDIS_DOWN):
            for group in await self._redis.xinfo_groups(self.keys.stream):
                if group["name"].decode() == self.keys.group:
                    lag = group.get("lag") or 0
                    self.metrics.queue_depth.set(int(lag) + int(group["pending"]))

    # --------------------------------------------------------------- job events
    def _emit(self, event: dict[str, Any]) -> None:
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
                await self._redis.publish(self.keys.events, json.dumps(event))

    # ---------------------------------------------------------------------- jobs
    def _task_function(self) -> Any:
        """A plain function for taskiq to register (it renames what it wraps)."""

        async def generate_image(request: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
            return await self._job(request, meta)

        return generate_image

    async def _job(self, request: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """The taskiq task. Returns the outcome as data; raises only ``NoResultError`` (a
        duplicate whose result another worker stored: nothing is saved, the entry is acked)."""
        assert self._redis is not None
        job = JobRequest.from_dict(request)
        job_id = job.job_id
        picked_at = time.time()
        dispatched_at = float(meta.get("dispatched_at") or picked_at)
        self.metrics.ack_latency.observe(max(0.0, picked_at - dispatched_at))
        keys = self.keys

        if picked_at - dispatched_at > self.remote.result_ttl_s:
            # Only a consumer group rebuilt by hand replays entries this old; nobody waits.
            logger.warning(
                "job %s was handed out %.0fs ago; dropping it", job_id, picked_at - dispatched_at
            )
            self.metrics.outcome("stale")
            raise NoResultError
        if await retry_forever("checking a job", functools.partial(self._finished, job_id)):
            logger.info("job %s was already delivered; skipping the duplicate", job_id)
            self.metrics.outcome("duplicate")
            raise NoResultError
        attempt = int(
            await retry_forever("counting a delivery", functools.partial(self._count, job_id))
        )
        if attempt > 1:
            self.metrics.redeliveries.inc()
            logger.warning("job %s: delivery %d (a worker stopped answering)", job_id, attempt)
        if attempt > self.remote.max_attempts:
            self.metrics.outcome("error")
            return _failure(
                FailureKind.ERROR,
                f"This image stopped its GPU worker {attempt - 1} times, so it was not tried "
                "again.",
            )
        if not await self._claim(job_id):
            self.metrics.outcome("duplicate")
            raise NoResultError
        cancelled = functools.partial(self._redis.exists, keys.cancel(job_id))
        if await retry_forever("checking a job", cancelled):
            self.metrics.outcome("cancelled")
            return _failure(FailureKind.CANCELLED, "The generation was cancelled.")
        return await self._render(job, meta, picked_at)

    async def _count(self, job_id: str) -> int:
        assert self._redis is not None
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(self.keys.attempts(job_id))
        pipe.expire(self.keys.attempts(job_id), self.remote.result_ttl_s)
        count, _ = await pipe.execute()
        return int(count)

    async def _finished(self, job_id: str) -> bool:
        assert self._redis is not None
        return bool(await self._redis.exists(self.keys.result(job_id), self.keys.done(job_id)))

    async def _claim(self, job_id: str) -> bool:
        """Take the job's claim, waiting while another *live* worker holds it (its claim is
        renewed every heartbeat, and lapses within ``claim_ttl_s`` if that worker died).
        False when the job got finished elsewhere meanwhile."""
        assert self._redis is not None
        redis, key = self._redis, self.keys.claim(job_id)
        ttl_ms = int(self.remote.claim_ttl_s * 1000)
        waited = False
        while True:

            async def attempt() -> tuple[bool, bytes | None]:
                if await redis.set(key, self.consumer, nx=True, px=ttl_ms):
                    return True, None
                return False, await redis.get(key)

            won, holder = await retry_forever("claiming a job", attempt)
            if won or holder == self.consumer.encode():
                return True
            if await retry_forever("checking a job", functools.partial(self._finished, job_id)):
                return False
            if not waited:
                logger.info("job %s is being rendered by %r; waiting for it", job_id, holder)
                waited = True
            await asyncio.sleep(min(1.0, self.remote.heartbeat_s / 2))

    async def _render(
        self, job: JobRequest, meta: dict[str, Any], picked_at: float
    ) -> dict[str, Any]:
        assert self._redis is not None
        job_id = job.job_id
        loop = asyncio.get_running_loop()
        stop: list[FailureKind] = []
        superseded: list[bool] = []
        last: list[tuple[int, float]] = [(0, 0.0)]

        def on_progress(step: int, total: int, elapsed: float, per_step: float) -> None:
            done_steps, done_s = last[0]
            if step > done_steps:
                self.metrics.step_seconds.observe((elapsed - done_s) / (step - done_steps))
            last[0] = (step, elapsed)
            self._emit(
                {
                    "type": "progress",
                    "job_id": job_id,
                    "worker": self.name,
                    "step": step,
                    "total": total,
                    "elapsed_s": elapsed,
                    "sec_per_step": per_step,
                }
            )

        def on_step(step: int, total: int, elapsed: float, per_step: float) -> None:
            loop.call_soon_threadsafe(on_progress, step, total, elapsed, per_step)

        def should_stop() -> FailureKind | None:
            return stop[0] if stop else None

        self.current_job = job_id
        self.state = "busy"
        self.metrics.busy.set(1)
        self._emit({"type": "started", "job_id": job_id, "worker": self.name})
        await self._beat_quietly()
        watcher = asyncio.create_task(self._watch(job_id, stop, superseded))
        try:
            result: JobResult = await loop.run_in_executor(
                self._gpu, functools.partial(self.generator.generate, job, on_step, should_stop)
            )
        except JobFailed as exc:
            if superseded:
                self.metrics.outcome("duplicate")
                raise NoResultError from None
            logger.info("job %s failed: %s", job_id, exc)
            self.metrics.outcome(str(exc.kind))
            return {"ok": False, "error": exc.to_dict()}
        except Exception:
            logger.exception("job %s crashed", job_id)
            if hasattr(self.generator, "free_memory"):
                self.generator.free_memory()
            self.metrics.outcome("error")
            return _failure(FailureKind.ERROR, ERROR_MESSAGE)
        finally:
            watcher.cancel()
            self.current_job = None
            self.state = "stopping" if self._stop is not None and self._stop.is_set() else "idle"
            self.metrics.busy.set(0)
            await self._beat_quietly()
        self.jobs_done += 1
        self.metrics.image_seconds.observe(result.run_s)
        if result.steps:
            per_step = result.run_s / result.steps
            ema = self._sec_per_step
            self._sec_per_step = per_step if ema is None else 0.7 * ema + 0.3 * per_step
        submitted_at = float(meta.get("submitted_at") or picked_at)
        result = dataclasses.replace(
            result, worker=self.name, queued_s=max(0.0, picked_at - submitted_at)
        )
        self.metrics.outcome("done")
        logger.info("job %s done in %.2fs (%s)", job_id, result.run_s, result.mode)
        return {"ok": True, "result": result.to_dict()}

    async def _watch(self, job_id: str, stop: list[FailureKind], superseded: list[bool]) -> None:
        """Turn a cancel flag, or a result stored by another worker, into a stop at the next
        step. A Redis outage does not stop the job: it goes on and saves when Redis is back."""
        assert self._redis is not None
        keys = self.keys
        while not stop:
            await asyncio.sleep(STOP_POLL_S)
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.exists(keys.cancel(job_id))
                pipe.exists(keys.result(job_id), keys.done(job_id))
                cancelled, finished = await pipe.execute()
            except REDIS_DOWN:
                continue
            if finished:
                logger.info("job %s was finished by another worker; stopping this copy", job_id)
                superseded.append(True)
                stop.append(FailureKind.CANCELLED)
            elif cancelled:
                logger.info("job %s cancelled", job_id)
                stop.append(FailureKind.CANCELLED)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker",
        description="GPU worker: takes image jobs from Redis (IMAGINE_REDIS_URL). Run one per "
        "GPU, choosing it with CUDA_VISIBLE_DEVICES.",
    )
    parser.add_argument("--name", help="name shown in /status (default: host and GPU)")
    parser.add_argument("--log-level", default=os.environ.get("IMAGINE_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("taskiq.receiver.receiver", "taskiq.process-manager"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        remote = RemoteSettings()
    except ValueError as exc:
        logger.error("bad settings: %s", exc)
        return 2
    if not remote.redis_url:
        logger.error("IMAGINE_REDIS_URL is not set: a worker takes its jobs from Redis")
        return 2
    worker = Worker(remote, EngineSettings(), name=args.name)
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
    return 0


if __name__ == "__main__":
    # Run as the importable module, so log records say "engine.worker", not "__main__".
    from engine.worker import main as _main

    sys.exit(_main())
