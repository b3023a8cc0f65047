"""The memory plan carried out on the tiny model: every weight format and placement the planner
can choose that runs on a CPU gives the same image size and parameters, and the image itself
stays within each format's error (CUDA streams and FP8 matmuls are the GPU benchmark's part)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from PIL import Image

from engine.contract import JobRequest, JobResult, Mode
from engine.diffusers_types import Pipeline
from engine.edit.swap import TransformerSwap
from engine.loader import make_plan
from engine.optimize.quant import AdapterSwitch, QuantLinear
from engine.pipeline import ImageGenerator
from engine.placing import carry_out, spread, usable_card
from engine.planning import (
    Component,
    ComponentPlan,
    LoraForm,
    MemoryPlan,
    Placement,
    WeightFormat,
)
from engine.settings import EngineSettings, MemoryMode
from engine.streaming import BlockStreamer, StreamedBlock, stream_blocks

CPU = torch.device("cpu")


def settings(model: Path, **overrides: object) -> EngineSettings:
    values: dict[str, object] = {
        "model": str(model), "max_side": 64, "warmup": False, "compile": False,
        "edit_model": "",
    }  # fmt: skip
    values.update(overrides)
    return EngineSettings(**values)  # type: ignore[arg-type]


def render(generator: ImageGenerator, mode: Mode) -> tuple[np.ndarray, JobResult]:
    result = generator.generate(
        JobRequest(job_id=f"p-{mode}", user_id=1, prompt="a red fox", seed=7, mode=mode)
    )
    pixels = np.asarray(Image.open(io.BytesIO(result.image.png)).convert("RGB"), dtype=np.int16)
    return pixels, result


def chunks(result: JobResult) -> dict[str, object]:
    with Image.open(io.BytesIO(result.image.png)) as image:
        return cast(dict[str, object], json.loads(image.text["parameters_json"]))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> dict[Mode, tuple[np.ndarray, JobResult]]:
    """bf16 (here: the CPU's fp32) resident: what every other placement is compared with."""
    generator = ImageGenerator.load(settings(tiny_model_dir))
    return {mode: render(generator, mode) for mode in (Mode.FAST, Mode.STANDARD)}


# The largest pixel difference (0-255) each format may make on the tiny model at 64 px.
TOLERANCE = {"int8": 4, "fp8": 8, "int4": 24}


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4"])
def test_each_compact_format_makes_the_same_image_within_its_error(
    tiny_model_dir: Path, reference: dict[Mode, tuple[np.ndarray, JobResult]], fmt: str
) -> None:
    generator = ImageGenerator.load(settings(tiny_model_dir, weights=fmt))
    assert generator.memory_plan is not None and generator.memory_plan.weights == fmt
    compact = [m for m in generator.pipe.transformer.modules() if isinstance(m, QuantLinear)]
    assert compact and all(m.fmt == fmt for m in compact)
    assert isinstance(generator.lora_switch, AdapterSwitch)
    assert "lora-adapter" in generator.optimizations
    for mode in (Mode.FAST, Mode.STANDARD):
        pixels, result = render(generator, mode)
        expected_pixels, expected = reference[mode]
        assert (result.image.width, result.image.height) == (64, 64)
        assert (result.steps, result.true_cfg_scale, result.mode) == (
            expected.steps, expected.true_cfg_scale, expected.mode,
        )  # fmt: skip
        assert result.model == f"{tiny_model_dir.name} ({fmt} weights)"
        assert chunks(result)["weights"] == fmt
        with Image.open(io.BytesIO(result.image.png)) as image:
            assert f"Weights: {fmt}" in image.text["parameters"]
        difference = np.abs(pixels - expected_pixels)
        assert difference.max() <= TOLERANCE[fmt], (mode, difference.max())
    # The other formats stay within rounding of bf16 here; 4-bit visibly changes pixels.
    if fmt == "int4":
        assert difference.mean() > 0


def test_the_lora_adapter_is_what_makes_fast_mode(tiny_model_dir: Path) -> None:
    generator = ImageGenerator.load(settings(tiny_model_dir, weights="int8"))
    with_lora, _ = render(generator, Mode.FAST)
    switch = generator.lora_switch
    assert isinstance(switch, AdapterSwitch) and switch.modules
    generator.lora_switch = lambda fast: switch(False)  # fast mode without its LoRA
    generator._lora_active = None
    without, _ = render(generator, Mode.FAST)
    assert np.abs(with_lora - without).max() > 0
    # A CFG mode turns the adapter off again.
    generator.lora_switch = switch
    generator._lora_active = None
    render(generator, Mode.FAST)
    assert all(m.lora_on for m in switch.modules)
    render(generator, Mode.STANDARD)
    assert not any(m.lora_on for m in switch.modules)


def half_streamed(fmt: WeightFormat) -> MemoryPlan:
    return MemoryPlan(
        components=(
            ComponentPlan(Component.TRANSFORMER, Placement.STREAMED, fmt, 0.0, 0.0, 0.5),
            ComponentPlan(
                Component.TEXT_ENCODER, Placement.STREAMED, WeightFormat.BF16, 0.0, 0.0, 0.5
            ),
            ComponentPlan(Component.VAE, Placement.RESIDENT, WeightFormat.BF16, 0.0, 0.0),
        ),
        lora=LoraForm.ADAPTER,
        vae_tiling=False,
        gpu_gib=0.0,
        host_gib=0.0,
        usable_gib=0.0,
        text_generation=False,
        edit_available=False,
        reasons=("test: half of each model streams",),
    )


@pytest.mark.parametrize("fmt", [WeightFormat.BF16, WeightFormat.INT8])
def test_half_streamed_models_make_the_resident_image(
    tiny_model_dir: Path,
    reference: dict[Mode, tuple[np.ndarray, JobResult]],
    fmt: WeightFormat,
) -> None:
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

    from engine.loader import lightning_source, load_lightning

    config = settings(tiny_model_dir, weights=str(fmt))
    pipe = cast(Pipeline, QwenImagePipeline.from_pretrained(str(tiny_model_dir)))
    pipe.set_progress_bar_config(disable=True)
    lora, weight = lightning_source(config, tiny=True)
    assert load_lightning(pipe, lora, weight)
    plan = half_streamed(fmt)
    placed = carry_out(pipe, plan, CPU)
    assert len(placed.streamers) == 2  # the transformer's and the text encoder's
    wrapped = [b for b in pipe.transformer.transformer_blocks if isinstance(b, StreamedBlock)]
    assert 0 < len(wrapped) < len(pipe.transformer.transformer_blocks)
    generator = ImageGenerator(
        pipe, config, device=CPU, dtype=torch.float32, memory_mode=MemoryMode.STREAMED,
        max_side=64, fast_available=True, model_name=str(tiny_model_dir), memory_plan=plan,
    )  # fmt: skip
    generator.lora_switch = placed.lora_switch
    generator._apply_speedups()
    for mode in (Mode.STANDARD, Mode.FAST):
        pixels, result = render(generator, mode)
        expected_pixels, _expected = reference[mode]
        assert (result.image.width, result.image.height) == (64, 64)
        limit = 0 if fmt == WeightFormat.BF16 and mode == Mode.STANDARD else TOLERANCE["int8"]
        assert np.abs(pixels - expected_pixels).max() <= limit, mode
    assert placed.moved_bytes > 0
    for streamer in placed.streamers:  # after the forwards every block points at its host copy
        for block in streamer.slots:
            for slot in block:
                tensor = slot.module._parameters.get(slot.name) if slot.parameter else (
                    slot.module._buffers.get(slot.name)
                )  # fmt: skip
                assert tensor is not None and tensor.data_ptr() == slot.host.data_ptr()


def test_streamed_memory_mode_streams_everything_and_keeps_the_image(
    tiny_model_dir: Path, reference: dict[Mode, tuple[np.ndarray, JobResult]]
) -> None:
    generator = ImageGenerator.load(settings(tiny_model_dir, memory_mode="streamed"))
    assert generator.memory_mode == MemoryMode.STREAMED
    blocks = generator.pipe.transformer.transformer_blocks
    assert all(isinstance(block, StreamedBlock) for block in blocks)
    pixels, _ = render(generator, Mode.STANDARD)
    assert np.array_equal(pixels, reference[Mode.STANDARD][0])


def test_block_streamer_copies_one_block_ahead_and_counts_bytes() -> None:
    blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(4)])
    streamer = stream_blocks(blocks, [1, 3], CPU)
    assert isinstance(streamer, BlockStreamer)
    x = torch.randn(2, 8)
    for block in blocks:
        x = block(x)
    per_block = 8 * 8 * 4 + 8 * 4
    # Block 1 is copied, then block 3 ahead of it, then (ahead of the next forward) block 1.
    assert streamer.moved_bytes == 3 * per_block
    assert set(streamer.pending) == {0}  # the first streamed block, ready for the next forward


def test_spread_orders_blocks_so_every_prefix_is_even() -> None:
    order = spread(60)
    assert sorted(order) == list(range(60))
    assert order[:4] == [0, 32, 16, 48]
    assert spread(1) == [0]


def test_a_swap_leaves_streamed_blocks_to_the_streamer(tiny_model_dir: Path) -> None:
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel.from_pretrained(
        str(tiny_model_dir), subfolder="transformer"
    )
    blocks = transformer.transformer_blocks
    stream_blocks(blocks, [len(blocks) - 1], CPU)
    swap = TransformerSwap(CPU, keep_all=False)
    names = swap._tensors(transformer)
    assert names and not any(f"transformer_blocks.{len(blocks) - 1}." in n for n in names)


def test_gpu_memory_setting_caps_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_GPU_MEMORY_GIB", "20")
    monkeypatch.setenv("IMAGINE_WEIGHTS", "int4")
    config = EngineSettings()
    assert config.gpu_memory_gib == 20.0 and config.weights == "int4"
    card = usable_card("RTX 4090", 23.4, (8, 9), config.gpu_memory_gib)
    assert card.usable_gib == 20.0 and card.source == "IMAGINE_GPU_MEMORY_GIB"
    assert usable_card("RTX 4090", 12.0, (8, 9), 20.0).usable_gib == 12.0  # less is free
    assert make_plan(config, CPU) is not None


def test_forced_offload_modes_keep_the_old_placement(tiny_model_dir: Path) -> None:
    assert make_plan(settings(tiny_model_dir, memory_mode="model_offload"), CPU) is None


def test_the_edit_model_takes_the_plans_weight_format_and_fast_edits_keep_their_lora(
    tiny_model_dir: Path, tiny_edit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.contract import TASK_EDIT
    from engine.edit import generator as edit_module
    from engine.edit.generator import EditGenerator
    from engine.edit.images import edit_output_size
    from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE

    monkeypatch.setitem(edit_module.EDIT_STEPS, Mode.STANDARD, 2)
    config = settings(tiny_model_dir, weights="int8", edit_model=str(tiny_edit_dir),
                      edit_lightning_lora=str(tiny_edit_dir / TINY_LORA_DIR),
                      edit_lightning_weight_name=TINY_LORA_FILE)  # fmt: skip
    base = ImageGenerator.load(config)
    editor = EditGenerator.load(base, config)
    compact = [m for m in editor.pipe.transformer.modules() if isinstance(m, QuantLinear)]
    assert compact and all(m.fmt == "int8" for m in compact)
    assert isinstance(editor.lora_switch, AdapterSwitch) and editor.fast_available
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(buffer, "PNG")
    for mode in (Mode.FAST, Mode.STANDARD):
        result = editor.generate(
            JobRequest(
                job_id=f"e-{mode}",
                user_id=1,
                prompt="make it blue",
                seed=3,
                mode=mode,
                task=TASK_EDIT,
                images=(buffer.getvalue(),),
            )
        )
        assert result.model.endswith("(int8 weights)")
        expected = edit_output_size(96, 64, editor.max_side)
        assert (result.image.width, result.image.height) == expected
        assert chunks(result)["weights"] == "int8"
    assert not any(m.lora_on for m in editor.lora_switch.modules)  # standard turned it off
