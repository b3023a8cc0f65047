"""The engine's speed-ups on the edit transformer (``engine.edit.speedups``): compile of the
repeated blocks reaches the edit pipeline, its edits keep their size and PNG chunks, and an
edit made with speed-ups on matches one made without them up to floating-point noise."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import optimize
from engine.contract import TASK_EDIT, JobRequest, Mode
from engine.edit import EditGenerator
from engine.edit import generator as edit_module
from engine.edit.speedups import apply_edit_speedups
from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE

STEPS = 2


@pytest.fixture(autouse=True)
def few_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(edit_module.EDIT_STEPS, Mode.STANDARD, STEPS)


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def edit_request(*images: bytes) -> JobRequest:
    return JobRequest(
        job_id="e", user_id=1, prompt="make it blue", task=TASK_EDIT, images=images, seed=3
    )


def compiled_blocks(transformer: Any) -> int:
    return sum(
        getattr(block, "_compiled_call_impl", None) is not None
        for block in transformer.transformer_blocks
    )


@pytest.fixture
def editor(
    generator: ImageGenerator, tiny_settings: EngineSettings, tiny_edit_dir: Path
) -> Iterator[EditGenerator]:
    """An editor of its own (compile changes its transformer), with compile on."""
    settings = tiny_settings.model_copy(
        update={
            "edit_model": str(tiny_edit_dir),
            "edit_lightning_lora": str(tiny_edit_dir / TINY_LORA_DIR),
            "edit_lightning_weight_name": TINY_LORA_FILE,
            "compile": True,
        }
    )
    from diffusers.models.transformers import transformer_qwenimage as module

    stock_rotary = module.apply_rotary_emb_qwen
    editor = EditGenerator.load(generator, settings)
    yield editor
    optimize.uncompile_transformer(editor.pipe.transformer)
    module.apply_rotary_emb_qwen = stock_rotary


def test_compile_reaches_the_edit_transformer_and_the_image_stays_the_same(
    editor: EditGenerator, tmp_path: Path
) -> None:
    # On a CPU the engine leaves compile off (it needs a CUDA GPU), as for text-to-image.
    assert "compile" not in editor.optimizations
    assert "vae-2d(shared)" in editor.optimizations  # the VAE is text-to-image's, already 2D
    assert "lora-fused" in editor.optimizations
    assert compiled_blocks(editor.pipe.transformer) == 0
    source = png((96, 64), (200, 30, 30))
    stock = editor.generate(edit_request(source))

    editor.settings = editor.settings.model_copy(update={"compile_cache_dir": tmp_path})
    applied = apply_edit_speedups(editor, cpu_compile_backend="eager")
    editor.optimizations = applied
    assert "compile" in applied and "rope-real" in applied
    assert "prompt-cache" not in applied  # an edit's prompt embedding depends on its images
    blocks = editor.pipe.transformer.transformer_blocks
    assert compiled_blocks(editor.pipe.transformer) == len(blocks)
    assert editor.info().edit_optimizations == tuple(applied)

    fast = editor.generate(edit_request(source))
    assert (
        (fast.image.width, fast.image.height) == (stock.image.width, stock.image.height) == (64, 48)
    )
    image = Image.open(io.BytesIO(fast.image.png))
    assert image.size == (64, 48)
    assert image.text["instruction"] == "make it blue"  # type: ignore[attr-defined]
    assert image.text["input_images"] == hashlib.sha256(source).hexdigest()  # type: ignore[attr-defined]
    a = np.asarray(Image.open(io.BytesIO(stock.image.png)).convert("RGB"), dtype=np.int16)
    b = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # FP noise of the real-arithmetic RoPE, not a new image


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="FP8 matmuls need an Ada/Hopper GPU; none here"
)
def test_fp8_converts_the_edit_transformer_linears(editor: EditGenerator) -> None:
    editor.settings = editor.settings.model_copy(update={"fp8": True, "compile": False})
    assert "fp8-rowwise" in apply_edit_speedups(editor)
    assert any(isinstance(m, optimize.FP8Linear) for m in editor.pipe.transformer.modules())
