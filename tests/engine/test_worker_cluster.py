"""Scale-out end to end: real ``python -m engine.worker`` processes, a real Redis-compatible
server, the tiny model, and the bot-side ``RedisBackend`` in this process.

One pool of worker processes serves the whole module (each start imports torch and diffusers,
several seconds on a small machine); the tests run in file order and the speed-up comparison
comes last because it stops two workers. A test-only per-step sleep stands in for GPU time.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from redis.asyncio import Redis

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, Mode
from engine.redis.backend import UNAVAILABLE_MESSAGE, RedisBackend
from engine.redis.jobs import RemoteJob
from engine.redis.keys import RedisKeys
from engine.redis.presence import read_workers
from engine.redis.settings import RemoteSettings
from engine.redis.wire import DoneEvent, Heartbeat, StartedEvent, WorkerState, parse_event
from engine.settings import EngineSettings
from tests.redis_server import RedisServer, free_port, running_redis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEP_DELAY_S = 0.06  # sleep per denoising step: "GPU time" that does not compete for the CPU
HEARTBEAT_S = 0.25
REDELIVER_AFTER_S = 2.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def remote(redis_server: RedisServer) -> RemoteSettings:
    return RemoteSettings(
        redis_url=redis_server.url,
        redis_prefix="cluster",
        heartbeat_s=HEARTBEAT_S,
        redeliver_after_s=REDELIVER_AFTER_S,
    )


class WorkerPool:
    """Worker processes started exactly as an operator starts them on GPU hosts."""

    def __init__(self, remote: RemoteSettings, model_dir: Path, log_dir: Path) -> None:
        self.remote = remote
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_port = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "IMAGINE_REDIS_URL": str(self.remote.redis_url),
                "IMAGINE_REDIS_PREFIX": self.remote.redis_prefix,
                "IMAGINE_HEARTBEAT_S": str(self.remote.heartbeat_s),
                "IMAGINE_REDELIVER_AFTER_S": str(self.remote.redeliver_after_s),
                "IMAGINE_MODEL": str(self.model_dir),
                "IMAGINE_MAX_SIDE": "64",
                "IMAGINE_TEST_STEP_DELAY_S": str(STEP_DELAY_S),
                "IMAGINE_WARMUP": "false",
                "IMAGINE_COMPILE": "false",
                "CUDA_VISIBLE_DEVICES": "",
                # Three processes share two cores: one thread each keeps them from thrashing.
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def spawn(self, *names: str, metrics_port: int = 0) -> None:
        for name in names:
            log = (self.log_dir / f"{name}.log").open("ab")
            env = self.env()
            env["IMAGINE_WORKER_METRICS_PORT"] = str(metrics_port)
            env["IMAGINE_WORKER_METRICS_ADDR"] = "127.0.0.1"
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "engine.worker", "--name", name],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def kill9(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def terminate(self, name: str) -> int:
        """SIGTERM: the worker finishes its job, leaves /status and exits 0."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        return process.wait(60)

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in list(self.processes.values()):
            if process.poll() is None:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()


async def heartbeats(redis: Redis, keys: RedisKeys) -> dict[str, Heartbeat]:
    return {w.name: w for w in await read_workers(redis, keys, 3 * HEARTBEAT_S)}


async def eventually(check: Any, what: str, within: float = 60.0) -> None:
    try:
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 - external state, no event to await
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def wait_ready(redis: Redis, keys: RedisKeys, pool: WorkerPool, names: set[str]) -> None:
    async def ready() -> bool:
        for name in names:
            if name in pool.processes and pool.processes[name].poll() is not None:
                raise AssertionError(f"worker {name} exited:\n{pool.log(name)[-3000:]}")
        beats = await heartbeats(redis, keys)
        return all(n in beats and beats[n].state == WorkerState.IDLE for n in names)

    await eventually(ready, f"workers {sorted(names)} to load the model", within=120)


@pytest.fixture(scope="module")
def pool(
    remote: RemoteSettings, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerPool]:
    workers = WorkerPool(remote, tiny_model_dir, tmp_path_factory.mktemp("worker-logs"))
    # All three start at once and load in parallel; each test waits for the ones it needs.
    workers.metrics_port = free_port()
    workers.spawn("gpu-a", metrics_port=workers.metrics_port)
    workers.spawn("gpu-b", "gpu-c")
    try:
        yield workers
    finally:
        workers.stop_all()


class Bot:
    """The bot side of a test: a RedisBackend plus a listener that counts stored results."""

    def __init__(self, backend: RedisBackend, redis: Redis, keys: RedisKeys) -> None:
        self.backend = backend
        self.redis = redis
        self.keys = keys
        self.stored: collections.Counter[str] = collections.Counter()
        self.started: list[tuple[str, str]] = []
        # Job ids in the order the backend wrote them to the stream (acknowledged entries are
        # deleted from it, so the stream itself no longer tells).
        self.handed_out: list[str] = []
        kick = backend._kick

        async def recording_kick(job: RemoteJob) -> None:
            await kick(job)
            self.handed_out.append(job.request.job_id)

        backend._kick = recording_kick  # type: ignore[method-assign]

    async def listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.events)
        try:
            while True:
                message = await pubsub.get_message(timeout=0.5)
                if message is None:
                    continue
                event = parse_event(message["data"])
                if isinstance(event, DoneEvent) and event.written:
                    self.stored[event.job_id] += 1
                elif isinstance(event, StartedEvent):
                    self.started.append((event.job_id, event.worker))
        finally:
            await pubsub.aclose()

    async def run(self, jobs: list[JobRequest]) -> dict[str, JobResult]:
        handles = [await self.backend.submit(job) for job in jobs]
        results = await asyncio.gather(*(h.result() for h in handles))
        return {r.job_id: r for r in results}


@pytest.fixture
async def bot(remote: RemoteSettings, pool: WorkerPool, tiny_model_dir: Path) -> AsyncIterator[Bot]:
    engine = EngineSettings(model=str(tiny_model_dir), max_queue=200)
    backend = RedisBackend(remote, engine)
    await backend.start()
    redis = Redis.from_url(str(remote.redis_url))
    side = Bot(backend, redis, backend.keys)
    listener = asyncio.create_task(side.listen())
    try:
        await wait_ready(redis, backend.keys, pool, set(pool.processes))
        yield side
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await backend.close()
        await redis.aclose()


def job(job_id: str, user_id: int, mode: Mode = Mode.FAST) -> JobRequest:
    return JobRequest(job_id=job_id, user_id=user_id, prompt=f"image {job_id}", seed=1, mode=mode)


def assert_png(result: JobResult) -> None:
    image = Image.open(io.BytesIO(result.image.png))
    assert image.format == "PNG"
    assert image.size == (result.image.width, result.image.height)


async def assert_stream_settled(bot: Bot) -> None:
    """Every stream entry acknowledged: nothing will be delivered again."""

    async def settled() -> bool:
        info = await bot.redis.xpending(bot.keys.stream, bot.keys.group)
        return info["pending"] == 0

    await eventually(settled, "all stream entries to be acknowledged", within=10)


async def dispatch_order(bot: Bot, prefix: str) -> list[str]:
    """Job ids in the order the bot handed them to the broker (first hand-over of each)."""
    ids = list(dict.fromkeys(bot.handed_out))
    return [i for i in ids if i.startswith(prefix)]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_jobs_from_several_users_spread_over_three_workers_each_delivered_once(
    bot: Bot, pool: WorkerPool
) -> None:
    # Alice (101) queues five images and fills the three workers; then three more users queue
    # three each. With one FIFO queue Alice's other two would run next; taking turns, each
    # user's first image goes before Alice's fifth.
    alice = [job(f"spread-101-{n}", 101) for n in range(5)]
    handles = [await bot.backend.submit(j) for j in alice]

    async def all_busy() -> bool:
        return len(bot.started) >= 3

    await eventually(all_busy, "three workers to be busy")
    others = [job(f"spread-{u}-{n}", u) for u in (102, 103, 104) for n in range(3)]
    handles += [await bot.backend.submit(j) for j in others]
    results = {
        r.job_id: r
        for r in await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    }

    jobs = alice + others
    assert set(results) == {j.job_id for j in jobs}
    for result in results.values():
        assert_png(result)
    assert {r.worker for r in results.values()} == {"gpu-a", "gpu-b", "gpu-c"}
    await assert_stream_settled(bot)
    # Each job's result was stored once: no image rendered twice, none posted twice.
    assert bot.stored == {j.job_id: 1 for j in jobs}
    # Worker gpu-a serves Prometheus metrics, as IMAGINE_WORKER_METRICS_PORT asks.
    metrics = await asyncio.to_thread(scrape, pool.metrics_port)
    on_a = sum(1 for r in results.values() if r.worker == "gpu-a")
    assert f'imagine_worker_jobs_total{{outcome="done"}} {on_a}.0' in metrics
    assert f"imagine_worker_image_seconds_count {on_a}.0" in metrics
    assert f"imagine_worker_ack_latency_seconds_count {on_a}.0" in metrics
    order = await dispatch_order(bot, "spread-")
    assert sorted(order[:3]) == ["spread-101-0", "spread-101-1", "spread-101-2"]
    for user in (102, 103, 104):
        assert order.index(f"spread-{user}-0") < order.index("spread-101-4")
    for user in (101, 102, 103, 104):
        mine = [i for i in order if i.startswith(f"spread-{user}-")]
        assert mine == sorted(mine)  # each user's own images keep their order


async def test_redis_stopped_and_restarted_new_jobs_refused_accepted_jobs_finish(
    bot: Bot, redis_server: RedisServer, pool: WorkerPool
) -> None:
    jobs = [job(f"outage-{u}-{n}", u, Mode.STANDARD) for n in range(2) for u in (201, 202, 203)]
    handles = [await bot.backend.submit(j) for j in jobs]

    async def rendering() -> bool:
        return len(bot.started) >= 3

    await eventually(rendering, "the first jobs to start")
    redis_server.stop()
    with pytest.raises(JobFailed) as refused:
        await bot.backend.submit(job("outage-new", 299))
    assert refused.value.kind == FailureKind.UNAVAILABLE
    assert refused.value.user_message == UNAVAILABLE_MESSAGE
    status = await bot.backend.status()
    assert status.ready is False
    assert status.note == "Redis is unreachable: new images are refused until it is back."
    # Long enough for the running jobs' GPU work to end during the outage: their results
    # must wait for Redis instead of being lost.
    await asyncio.sleep(2.5)
    redis_server.start()

    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    assert sorted(r.job_id for r in results) == sorted(j.job_id for j in jobs)
    for result in results:
        assert_png(result)
    await assert_stream_settled(bot)
    logs = "".join(pool.log(name) for name in pool.processes)
    assert "saving result of outage-" in logs, "the outage was too short to test waiting results"
    for j in jobs:  # nothing rendered twice, although every entry looked idle after the restart
        assert logs.count(f"job {j.job_id} done in") == 1, j.job_id
    # The same worker processes carried on; nobody had to restart them.
    assert all(pool.alive(name) for name in ("gpu-a", "gpu-b", "gpu-c"))
    after = await asyncio.wait_for(
        (await bot.backend.submit(job("outage-after", 299))).result(), 60
    )
    assert_png(after)


async def cli(remote: RemoteSettings, *args: str) -> tuple[int, str]:
    env = dict(os.environ)
    env["IMAGINE_REDIS_URL"] = str(remote.redis_url)
    env["IMAGINE_REDIS_PREFIX"] = remote.redis_prefix
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.remote",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode()


async def test_operators_check_the_workers_without_discord(
    bot: Bot, remote: RemoteSettings, tmp_path: Path
) -> None:
    code, out = await cli(remote, "status")
    assert code == 0, out
    assert "ready: yes" in out
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        assert f"  {name}: cpu " in out
    target = tmp_path / "fox.png"
    code, out = await cli(
        remote, "generate", "a red fox", "--mode", "fast", "--aspect", "4:3", "--out", str(target)
    )
    assert code == 0, out
    assert "wrote" in out and "64x48" in out
    assert Image.open(target).size == (64, 48)


async def test_a_worker_killed_mid_job_hands_it_to_another_and_the_user_gets_it_once(
    bot: Bot, pool: WorkerPool
) -> None:
    jobs = [job(f"kill-{u}-{n}", u, Mode.STANDARD) for n in range(2) for u in (301, 302, 303)]
    handles = {j.job_id: await bot.backend.submit(j) for j in jobs}
    victim: dict[str, str] = {}

    async def mid_job() -> bool:
        for name, beat in (await heartbeats(bot.redis, bot.keys)).items():
            if beat.current_job and name in pool.processes:
                victim.update(name=name, job=beat.current_job)
                return True
        return False

    await eventually(mid_job, "a worker to be rendering")
    await asyncio.sleep(0.3)  # a few steps in
    pool.kill9(victim["name"])

    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles.values())), 120)
    by_id = {r.job_id: r for r in results}
    assert set(by_id) == set(handles)
    for result in results:
        assert_png(result)
    # The killed worker's job was finished by another worker, and reached the user once.
    assert by_id[victim["job"]].worker != victim["name"]
    assert bot.stored[victim["job"]] == 1
    assert all(bot.stored[j] == 1 for j in handles)
    await assert_stream_settled(bot)
    status = await bot.backend.status()
    assert victim["name"] not in {w.name for w in status.workers}

    pool.spawn(victim["name"])  # back to three for the next test


async def test_three_workers_finish_thirty_jobs_at_least_2_5x_faster_than_one(
    bot: Bot, pool: WorkerPool
) -> None:
    async def timed(tag: str) -> float:
        users = range(6)
        jobs = [job(f"speed-{tag}-{u}-{n}", 400 + u) for n in range(5) for u in users]
        started = time.perf_counter()
        results = await asyncio.wait_for(bot.run(jobs), 300)
        elapsed = time.perf_counter() - started
        assert len(results) == 30
        for result in results.values():
            assert_png(result)
        return elapsed

    three = await timed("three")
    # A graceful stop (SIGTERM): the worker finishes what it has and exits cleanly.
    assert pool.terminate("gpu-b") == 0
    assert pool.terminate("gpu-c") == 0

    async def one_left() -> bool:
        return set(await heartbeats(bot.redis, bot.keys)) == {"gpu-a"}

    await eventually(one_left, "the stopped workers to leave /status", within=10)
    one = await timed("one")
    print(f"30 jobs: 1 worker {one:.2f}s, 3 workers {three:.2f}s, speed-up {one / three:.2f}x")
    assert one / three >= 2.5
