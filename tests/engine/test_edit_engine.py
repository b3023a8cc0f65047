"""Editing inside the in-process engine: ``LocalEngine`` loads text-to-image and the edit model
together (``engine.edit.Generators``), shares one text encoder and one VAE between them, routes
each job to the model it needs, reports both in ``status()``, and, when only one transformer
fits, serves jobs grouped by model without letting any job be jumped more than three times."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.admission import EDIT_NEEDS_GPU_MESSAGE
from engine.contract import TASK_EDIT, FailureKind, JobFailed, JobRequest, JobResult, Mode
from engine.cudagraph import GraphedForward
from engine.edit import EditGenerator, TransformerSwap
from engine.edit import generator as edit_module
from engine.generator import UNWATCHED, JobControl, Plan
from engine.generators import Generators, load_generators
from engine.pipeline import ImageGenerator
from engine.presets import public_model_name
from engine.queue import LocalEngine
from engine.settings import EngineSettings
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE

EDIT_STEPS = 2


def edit_settings(base: EngineSettings, edit_dir: Path) -> EngineSettings:
    return base.model_copy(
        update={
            "edit_model": str(edit_dir),
            "edit_lightning_lora": str(edit_dir / TINY_LORA_DIR),
            "edit_lightning_weight_name": TINY_LORA_FILE,
        }
    )


@pytest.fixture(autouse=True)
def few_edit_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(edit_module.EDIT_STEPS, Mode.STANDARD, EDIT_STEPS)


@pytest.fixture(scope="module")
def edit_engine(tiny_settings: EngineSettings, tiny_edit_dir: Path) -> Iterator[LocalEngine]:
    """A LocalEngine that loads both models itself, as ``python -m bot`` does."""
    engine = LocalEngine(edit_settings(tiny_settings, tiny_edit_dir))
    asyncio.run(engine.start())
    asyncio.run(engine.loaded())  # start() returns at once; the models load on its thread
    yield engine
    asyncio.run(engine.close())


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def text_job(job_id: str, user_id: int = 1) -> JobRequest:
    return JobRequest(job_id=job_id, user_id=user_id, prompt="a fox", seed=1, mode=Mode.FAST)


def edit_job(job_id: str, *images: bytes, user_id: int = 1) -> JobRequest:
    images = images or (png((64, 64), (200, 10, 10)),)
    return JobRequest(
        job_id=job_id, user_id=user_id, prompt="make it blue", seed=2, task=TASK_EDIT, images=images
    )


# ------------------------------------------------------------------- loading, sharing
def test_local_engine_loads_editing_with_one_text_encoder_and_one_vae(
    edit_engine: LocalEngine,
) -> None:
    generators = edit_engine._generator
    assert isinstance(generators, Generators)
    base, editor = generators.generators["generate"], generators.generators["edit"]
    assert isinstance(base, ImageGenerator) and isinstance(editor, EditGenerator)
    assert editor.pipe.text_encoder is base.pipe.text_encoder
    assert editor.pipe.vae is base.pipe.vae
    assert editor.pipe.transformer is not base.pipe.transformer


async def test_edit_and_text_to_image_jobs_each_run_on_their_model(
    edit_engine: LocalEngine, tiny_edit_dir: Path, tiny_model_dir: Path
) -> None:
    images = (png((96, 64), (10, 200, 10)), png((64, 64), (0, 0, 0)), png((64, 96), (9, 9, 9)))
    edited = await (await edit_engine.submit(edit_job("e1", *images))).result()
    plain = await (await edit_engine.submit(text_job("t1"))).result()

    # Results name the model, never its path on this host (it travels in the PNG).
    assert edited.model == public_model_name(str(tiny_edit_dir)) == tiny_edit_dir.name
    assert plain.model == public_model_name(str(tiny_model_dir)) == tiny_model_dir.name
    assert str(tiny_edit_dir) not in str(Image.open(io.BytesIO(edited.image.png)).text)  # type: ignore[attr-defined]
    assert (edited.image.width, edited.image.height) == (64, 48)  # the first image's ratio
    text = Image.open(io.BytesIO(edited.image.png)).text  # type: ignore[attr-defined]
    assert text["input_images"].split(",") == [hashlib.sha256(i).hexdigest() for i in images]
    assert edited.steps == EDIT_STEPS and plain.steps == 8

    status = await edit_engine.status()
    assert status.capabilities == ("generate", "edit")
    assert status.resident_models == (tiny_model_dir.name, tiny_edit_dir.name)


# ------------------------------------------------------------------- editing off
async def test_without_an_edit_model_an_edit_job_is_refused_at_submit(
    generator: ImageGenerator, tiny_settings: EngineSettings
) -> None:
    engine = LocalEngine(tiny_settings, load_generators(tiny_settings, main=generator))
    await engine.start()
    try:
        with pytest.raises(JobFailed) as refused:
            await engine.submit(edit_job("e-off"))
        assert refused.value.kind == FailureKind.UNAVAILABLE
        assert refused.value.user_message == EDIT_NEEDS_GPU_MESSAGE  # why, in plain words
        status = await engine.status()
        assert status.capabilities == ("generate",)
        assert status.resident_models == (public_model_name(str(tiny_settings.model)),)
        assert (await engine.position("e-off")) is None
    finally:
        await engine.close()


def test_an_edit_model_that_cannot_load_leaves_text_to_image_running(
    generator: ImageGenerator, tiny_settings: EngineSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tiny_settings.model_copy(update={"edit_model": "org/not-here-and-no-gpu"})
    generators = load_generators(settings, main=generator)
    assert generators.tasks() == ("generate",)
    assert "image editing is off" in caplog.text
    assert generators.info().edit_off == EDIT_NEEDS_GPU_MESSAGE  # says why, no admin did it


# ------------------------------------------------------------------- one transformer at a time
class Held(Generators):
    """The engine's generators, recording the task of each job and holding the first one."""

    def __init__(self, inner: Generators) -> None:
        super().__init__(inner.generators, off=inner.off)
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.first_started = threading.Event()

    def generate(
        self, request: JobRequest, control: JobControl = UNWATCHED, plan: Plan | None = None
    ) -> JobResult:
        if not self.ran:
            self.first_started.set()
            self.gate.wait(30)
        self.ran.append(request.task)
        return super().generate(request, control, plan)


@dataclasses.dataclass
class Swapping:
    """The loaded models as on a GPU where only one transformer fits."""

    generators: Generators
    base: ImageGenerator
    editor: EditGenerator
    swap: TransformerSwap


@pytest.fixture
def swapping(edit_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> Swapping:
    """The loaded models as on a GPU where only one transformer fits (on a CPU the swap is
    bookkeeping only: host and device are one memory)."""
    generators = edit_engine._generator
    assert isinstance(generators, Generators)
    base, editor = generators.generators["generate"], generators.generators["edit"]
    assert isinstance(base, ImageGenerator) and isinstance(editor, EditGenerator)
    swap = TransformerSwap(torch.device("cpu"), keep_all=False)
    swap.add(base.model_name, base.pipe.transformer, on_device=True)
    swap.add(editor.model_name, editor.pipe.transformer, on_device=False)
    monkeypatch.setattr(editor, "swap", swap)
    monkeypatch.setattr(base, "swap", swap)
    return Swapping(generators, base, editor, swap)


async def test_when_one_transformer_fits_jobs_are_grouped_by_model(
    swapping: Swapping, tiny_settings: EngineSettings
) -> None:
    held = Held(swapping.generators)
    engine = LocalEngine(tiny_settings, held)
    await engine.start()
    try:
        handles = [await engine.submit(text_job("first"))]
        assert await asyncio.to_thread(held.first_started.wait, 30)
        for n in range(3):  # arrive interleaved: edit, text, edit, text...
            handles.append(await engine.submit(edit_job(f"e{n}")))
            handles.append(await engine.submit(text_job(f"t{n}")))
        assert (await engine.status()).resident_models == (
            public_model_name(swapping.base.model_name),
        )
        held.gate.set()
        for handle in handles:
            await handle.result()
    finally:
        held.gate.set()
        await engine.close()
    # FIFO would swap before every one of the six; grouped, the text jobs go first (each
    # edit job is jumped at most three times) and the GPU swaps once.
    assert held.ran == ["generate"] * 4 + ["edit"] * 3
    assert swapping.swap.swaps == 1
    assert (await engine.status()).resident_models == (
        public_model_name(swapping.editor.model_name),
    )


def test_a_swap_drops_cuda_graphs_captured_before_it(swapping: Swapping) -> None:
    transformer = swapping.base.pipe.transformer
    graphed = GraphedForward(transformer.forward)
    graphed.graphs[("shape",)] = object()  # type: ignore[assignment]
    transformer.forward = graphed
    try:
        swapping.swap.activate(swapping.editor.model_name)
        assert graphed.graphs == {}  # recaptured on the next forward, never replayed stale
    finally:
        del transformer.forward  # back to the class's forward
        swapping.swap.activate(swapping.base.model_name)
