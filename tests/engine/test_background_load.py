"""``LocalEngine.start`` returns at once and the model loads on the GPU thread: the bot can
connect meanwhile. While it loads, ``status()`` says what it is doing and jobs wait in the line;
if loading fails, the waiting jobs fail with a clear message and new ones are refused."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from engine import generators as generators_module
from engine.contract import FailureKind, JobFailed
from engine.loading import DownloadWatcher, LoadState, hub_cache_dir
from engine.queue import LOAD_FAILED_MESSAGE, LocalEngine
from engine.settings import EngineSettings
from tests.engine.harness import eventually, job


class GatedLoad:
    """``load_generators`` that waits for the test before loading (an artificial load delay)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        real = generators_module.load_generators

        def load(settings: EngineSettings, *args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            assert self.gate.wait(30), "the test never let the load go on"
            if fail:
                raise RuntimeError("/secret/path/model.safetensors is corrupt")
            return real(settings, *args, **kwargs)

        monkeypatch.setattr(generators_module, "load_generators", load)


async def test_start_returns_while_the_model_loads_and_jobs_wait(
    tiny_settings: EngineSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = GatedLoad(monkeypatch)
    local = LocalEngine(tiny_settings.model_copy(update={"edit_model": ""}))
    await local.start()  # returns although the model is not loaded
    try:
        status = await local.status()
        assert not status.ready and status.loading is not None and status.load_error is None
        handle = await local.submit(job("early"))  # accepted: it waits in the line
        assert await local.position("early") == 1
        assert (await local.status()).queue_length == 1
        gated.gate.set()
        result = await handle.result()
        assert result.job_id == "early" and result.image.png
        status = await local.status()
        assert status.ready and status.loading is None and status.load_progress is None
    finally:
        gated.gate.set()
        await local.close()


async def test_a_failed_load_fails_the_waiting_jobs_and_refuses_new_ones(
    tiny_settings: EngineSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = GatedLoad(monkeypatch, fail=True)
    local = LocalEngine(tiny_settings.model_copy(update={"edit_model": ""}))
    await local.start()
    try:
        handle = await local.submit(job("waiting"))
        gated.gate.set()
        with pytest.raises(JobFailed) as failed:
            await handle.result()
        assert failed.value.kind == FailureKind.UNAVAILABLE
        assert failed.value.user_message == LOAD_FAILED_MESSAGE
        assert "/secret" not in failed.value.user_message

        async def failed_status() -> bool:
            return (await local.status()).load_error is not None

        await eventually(failed_status, "the load error in status()")
        status = await local.status()
        assert not status.ready and status.loading is None
        assert "/secret" not in (status.load_error or "")
        with pytest.raises(JobFailed) as refused:
            await local.submit(job("late"))
        assert refused.value.kind == FailureKind.UNAVAILABLE
        assert refused.value.user_message == LOAD_FAILED_MESSAGE
    finally:
        await local.close()


def test_download_progress_from_the_cache_size(tmp_path: Path) -> None:
    state = LoadState()
    repo = hub_cache_dir("Qwen/Qwen-Image", cache=tmp_path)
    assert repo == tmp_path / "models--Qwen--Qwen-Image"
    watcher = DownloadWatcher(repo, state, total_bytes=4 * 10**9)
    watcher.poll()
    assert state.snapshot().loading == "loading the model"  # nothing downloading
    (repo / "blobs").mkdir(parents=True)
    with (repo / "blobs" / "a.incomplete").open("wb") as handle:
        handle.truncate(10**9)  # a sparse 1 GB file: a download under way
    watcher.poll()
    snapshot = state.snapshot()
    assert snapshot.loading == "downloading the model: 1.0 of 4.0 GB"
    assert snapshot.progress == pytest.approx(0.25)
    (repo / "blobs" / "a.incomplete").rename(repo / "blobs" / "a")
    watcher.poll()  # nothing grew since: the files are being read now
    assert state.snapshot().loading == "loading the model"
