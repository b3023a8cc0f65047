"""Edit jobs on the Redis path: workers announce what they can run, edit jobs go only to a
worker that can edit, text-to-image still runs on every worker, and with no edit-capable worker
online an edit is refused before anything is queued.

Two real ``engine.redis.worker.Worker`` objects on the test's loop against the real valkey server:
``editor`` runs text-to-image and the tiny edit model, ``plain`` text-to-image only. Each has
its own loaded pipeline (one pipeline must never run two jobs at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.contract import TASK_EDIT, TASK_GENERATE, FailureKind, JobFailed, JobRequest, Mode
from engine.edit import EditGenerator
from engine.edit import generator as edit_module
from engine.generators import Generators
from engine.pipeline import ImageGenerator
from engine.redis.backend import NO_EDIT_WORKER_MESSAGE, RedisBackend
from engine.redis.settings import RemoteSettings
from engine.redis.worker import Worker
from engine.settings import EngineSettings
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE
from tests.engine.harness import eventually
from tests.engine.redis.harness import request


@pytest.fixture(autouse=True)
def few_edit_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(edit_module.EDIT_STEPS, Mode.STANDARD, 2)


@pytest.fixture(scope="module")
def editing(tiny_settings: EngineSettings, tiny_edit_dir: Path) -> Generators:
    """Text-to-image plus editing, on a pipeline of its own."""
    settings = tiny_settings.model_copy(
        update={
            "edit_model": str(tiny_edit_dir),
            "edit_lightning_lora": str(tiny_edit_dir / TINY_LORA_DIR),
            "edit_lightning_weight_name": TINY_LORA_FILE,
        }
    )
    base = ImageGenerator.load(settings)
    return Generators({TASK_GENERATE: base, TASK_EDIT: EditGenerator.load(base, settings)})


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def edit(job_id: str, user_id: int) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        user_id=user_id,
        prompt="make the sky green",
        seed=5,
        task=TASK_EDIT,
        images=(png((64, 64), (user_id * 40, 90, 200)),),
    )


@contextlib.asynccontextmanager
async def workers(
    remote: RemoteSettings, engine: EngineSettings, generators: dict[str, Any]
) -> AsyncIterator[tuple[RedisBackend, dict[str, Worker]]]:
    """The named workers and a started bot-side backend, once every heartbeat is in."""
    stop = asyncio.Event()
    running = {
        name: Worker(remote, engine, generator, name=name) for name, generator in generators.items()
    }
    tasks = [asyncio.create_task(w.run(stop)) for w in running.values()]
    backend = RedisBackend(remote, engine)
    await backend.start()

    async def all_ready() -> bool:
        beats = await backend._refresh_workers(max_age=0.0)
        return sorted(w.name for w in beats if w.state.ready) == sorted(running)

    try:
        await eventually(all_ready, "every worker's first heartbeat")
        yield backend, running
    finally:
        await backend.close()
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)


async def test_edit_jobs_run_only_on_the_worker_that_can_edit(
    remote: RemoteSettings,
    tiny_settings: EngineSettings,
    generator: ImageGenerator,
    editing: Generators,
    tiny_edit_dir: Path,
    slow_steps: Any,
) -> None:
    async with workers(remote, tiny_settings, {"editor": editing, "plain": generator}) as (
        backend,
        running,
    ):
        status = await backend.status()
        announced = {w.name: w.capabilities for w in status.workers}
        assert announced == {"editor": ("generate", "edit"), "plain": ("generate",)}
        assert status.capabilities == ("generate", "edit")
        assert running["plain"]._presence is not None
        assert running["plain"]._presence.streams == [backend.keys.stream]  # never the edit one

        # A mixed line from three members: edits and text-to-image interleaved.
        jobs = []
        for n in range(3):
            jobs.append(edit(f"e{n}", user_id=n + 1))
            jobs.append(request(f"t{n}", user_id=n + 1))
        handles = [await backend.submit(job) for job in jobs]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
        by_id = {r.job_id: r for r in results}
        assert {by_id[f"e{n}"].worker for n in range(3)} == {"editor"}
        assert {by_id[f"e{n}"].model for n in range(3)} == {tiny_edit_dir.name}

        # Text-to-image still runs on both: two slow jobs at once keep both workers busy.
        slow_steps(0.05)
        handles = [await backend.submit(request(f"both{n}", user_id=10 + n)) for n in range(2)]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
        assert {r.worker for r in results} == {"editor", "plain"}


async def test_with_no_edit_capable_worker_an_edit_is_refused_before_queueing(
    remote: RemoteSettings, tiny_settings: EngineSettings, generator: ImageGenerator
) -> None:
    async with workers(remote, tiny_settings, {"plain": generator}) as (backend, _running):
        assert (await backend.status()).capabilities == ("generate",)
        with pytest.raises(JobFailed) as refused:
            await backend.submit(edit("e-none", user_id=1))
        assert refused.value.kind == FailureKind.UNAVAILABLE
        assert refused.value.user_message == NO_EDIT_WORKER_MESSAGE
        assert await backend.position("e-none") is None
        # Text-to-image is not affected.
        handle = await backend.submit(request("t-plain"))
        assert (await asyncio.wait_for(handle.result(), 60)).worker == "plain"
