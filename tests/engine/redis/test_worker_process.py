"""The worker process around the jobs: crashes in a row, its Docker health check, /metrics.

Real Redis and the real ``engine.redis.worker.Worker`` (in this process, sharing the loaded tiny
pipeline), or ``python -m engine.worker --healthcheck`` as Docker runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult
from engine.generator import JobControl, Plan
from engine.pipeline import ImageGenerator
from engine.redis.backend import RedisBackend
from engine.redis.settings import RemoteSettings
from engine.redis.worker import Worker
from engine.settings import EngineSettings
from tests.engine.harness import GatedGenerator, eventually
from tests.engine.redis.harness import remote_settings, request
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[3]


class CrashingGenerator(GatedGenerator):
    """Jobs named ``crash*`` crash, and so does freeing memory after them (a CUDA context in a
    bad state: every job from now on would crash the same way)."""

    def generate(
        self, request: JobRequest, control: JobControl, plan: Plan | None = None
    ) -> JobResult:
        if request.job_id.startswith("crash"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if request.job_id.startswith("odd"):
            raise ValueError("absolute aspect ratio must be smaller than 200, got 2979.6")
        return super().generate(request, control, plan)

    def free_memory(self) -> None:
        raise RuntimeError("CUDA error: an illegal memory access (while freeing)")


async def test_a_worker_exits_after_crashes_in_a_row_so_its_supervisor_restarts_it(
    redis_server: RedisServer,
    tiny_settings: EngineSettings,
    generator: ImageGenerator,
    tmp_path: Path,
) -> None:
    """Finding 4: a worker whose GPU is broken kept taking jobs and failing every one."""
    remote = remote_settings(
        redis_server, worker_max_crashes=2, worker_health_file=tmp_path / "alive"
    )
    worker = Worker(remote, tiny_settings, CrashingGenerator(generator), name="sick")
    running = asyncio.create_task(worker.run())
    backend = RedisBackend(remote, tiny_settings)
    await backend.start()
    try:

        async def ready() -> bool:
            return (await backend.status()).ready

        await eventually(ready, "the worker's first heartbeat")
        # A crash, a good image (the count starts again), then two crashes in a row.
        for job_id, user in (("crash-1", 1), ("fine", 2), ("crash-2", 3), ("crash-3", 4)):
            handle = await backend.submit(request(job_id, user_id=user))
            if job_id == "fine":
                assert (await handle.result()).image.png.startswith(b"\x89PNG")
                continue
            with pytest.raises(JobFailed) as failed:  # answered, so the member is refunded
                await handle.result()
            assert failed.value.kind == FailureKind.ERROR
        async with asyncio.timeout(30):
            await running  # the worker stopped by itself, after saving the last answer
        assert worker.exit_code == 1
        assert not (tmp_path / "alive").exists()  # unhealthy at once
    finally:
        await backend.close()
        if not running.done():
            worker.request_stop()
            await running


async def test_a_job_the_pipeline_refuses_costs_that_job_not_the_worker(
    redis_server: RedisServer,
    tiny_settings: EngineSettings,
    generator: ImageGenerator,
    tmp_path: Path,
) -> None:
    """issue 20 item 2: an exception from a pipeline call that is no lost CUDA context (here
    the edit processor's ``ValueError`` on an extreme aspect ratio) fails its job only; the
    worker goes on, however many come in a row."""
    remote = remote_settings(redis_server, worker_max_crashes=2)
    worker = Worker(remote, tiny_settings, CrashingGenerator(generator), name="steady")
    running = asyncio.create_task(worker.run())
    backend = RedisBackend(remote, tiny_settings)
    await backend.start()
    try:

        async def ready() -> bool:
            return (await backend.status()).ready

        await eventually(ready, "the worker's first heartbeat")
        for n in range(4):
            handle = await backend.submit(request(f"odd-{n}", user_id=n))
            with pytest.raises(JobFailed) as failed:
                await handle.result()
            assert failed.value.kind == FailureKind.ERROR  # refunded, in plain words
        fine = await backend.submit(request("fine", user_id=9))
        assert (await fine.result()).image.png.startswith(b"\x89PNG")
        assert not running.done() and worker.exit_code == 0
    finally:
        await backend.close()
        worker.request_stop()
        await running


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.worker", "--healthcheck"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_docker_health_check_follows_the_heartbeat(
    redis_server: RedisServer,
    tiny_settings: EngineSettings,
    generator: ImageGenerator,
    tmp_path: Path,
) -> None:
    alive = tmp_path / "imagine-worker.alive"
    remote = remote_settings(redis_server, worker_health_file=alive)
    env = {
        "IMAGINE_REDIS_URL": str(remote.redis_url),
        "IMAGINE_HEARTBEAT_S": str(remote.heartbeat_s),
        "IMAGINE_REDELIVER_AFTER_S": str(remote.redeliver_after_s),
        "IMAGINE_WORKER_HEALTH_FILE": str(alive),
    }
    missing = await asyncio.to_thread(healthcheck, env)
    assert missing.returncode == 1
    assert f"no heartbeat file at {alive}" in missing.stdout

    worker = Worker(remote, tiny_settings, generator, name="hale")
    running = asyncio.create_task(worker.run())
    try:

        async def beating() -> bool:
            return alive.exists() and json.loads(alive.read_text())["state"] == "idle"

        await eventually(beating, "the first heartbeat file")
        healthy = await asyncio.to_thread(healthcheck, env)
        assert healthy.returncode == 0, healthy.stdout
        assert "hale" in healthy.stdout
    finally:
        worker.request_stop()
        await running

    # A worker that hangs (or lost Redis) stops writing: three heartbeats later it is unhealthy.
    stale = {"name": "hale", "state": "idle", "at": time.time() - 60}
    alive.write_text(json.dumps(stale))
    old = await asyncio.to_thread(healthcheck, env)
    assert old.returncode == 1
    age = re.search(r"last heartbeat (\d+)s ago \(limit 0\.6s\)", old.stdout)
    assert age is not None and int(age.group(1)) >= 60, old.stdout


def test_the_health_file_defaults_to_the_temp_dir_by_worker_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in [k for k in os.environ if k.startswith("IMAGINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    remote = RemoteSettings(redis_url="redis://127.0.0.1:1/0")
    worker = Worker(remote, EngineSettings(), object(), name="gpu box/1")
    assert worker.health_file.parent == Path(__import__("tempfile").gettempdir())
    assert worker.health_file.name == "imagine-worker-gpu-box-1.alive"


def test_metrics_listen_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 9: a worker's /metrics listened on every interface by default."""
    for key in [k for k in os.environ if k.startswith("IMAGINE_")]:
        monkeypatch.delenv(key)
    assert RemoteSettings().worker_metrics_addr == "127.0.0.1"
    # Inside the worker image it must listen on the container's interface to be published.
    dockerfile = (ROOT / "Dockerfile").read_text()
    worker_stage = dockerfile.split("AS worker", 1)[1].split("\nFROM ", 1)[0]
    assert "IMAGINE_WORKER_METRICS_ADDR=0.0.0.0" in worker_stage
