from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.contract import FailureKind, JobFailed, JobRequest, Mode, StyleSpec
from engine.devices import EngineUnavailable, choose_memory_mode
from engine.pipeline import ImageGenerator
from engine.presets import BUILTIN_STYLES, MODES, NEUTRAL_NEGATIVE
from engine.settings import EngineSettings, MemoryMode
from tests.engine.conftest import CountingTransformer


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {"job_id": "j1", "user_id": 1, "prompt": "a red fox", "seed": 7}
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [Mode.QUALITY, Mode.STANDARD])
def test_true_cfg_runs_the_transformer_twice_per_step(
    generator: ImageGenerator, counting: CountingTransformer, mode: Mode
) -> None:
    result = generator.generate(request(mode=mode))
    assert result.steps == MODES[mode].steps
    assert result.true_cfg_scale == 4.0
    assert counting.calls == 2 * result.steps
    # Without a user negative, the neutral " " is what makes diffusers run CFG at all.
    assert result.negative_prompt == NEUTRAL_NEGATIVE


def test_fast_mode_runs_lightning_without_cfg(
    generator: ImageGenerator, counting: CountingTransformer
) -> None:
    result = generator.generate(request(mode=Mode.FAST))
    assert result.mode == Mode.FAST and result.steps == 8
    assert result.true_cfg_scale == 1.0
    assert counting.calls == result.steps
    scheduler = generator.pipe.scheduler.config
    assert scheduler.base_shift == pytest.approx(1.0986, abs=1e-4)  # log(3)
    assert scheduler.max_shift == pytest.approx(1.0986, abs=1e-4)
    assert scheduler.shift_terminal is None
    # Back to a CFG mode: the stock scheduler and no LoRA.
    generator.generate(request(mode=Mode.STANDARD))
    assert generator.pipe.scheduler.config.shift_terminal == 0.02


def test_guidance_scale_is_never_passed(
    generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}
    original = type(generator.pipe).__call__

    def spy(pipe: object, *args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(type(generator.pipe), "__call__", spy)
    generator.generate(request(mode=Mode.STANDARD))
    assert "guidance_scale" not in seen
    assert seen["true_cfg_scale"] == 4.0 and seen["negative_prompt"] == NEUTRAL_NEGATIVE


def test_style_template_and_negatives_are_combined(generator: ImageGenerator) -> None:
    style = BUILTIN_STYLES["watercolor"]
    result = generator.generate(request(style=style, negative_prompt="text, watermark"))
    assert result.full_prompt.startswith("a red fox, watercolor painting")
    assert result.full_prompt.endswith("Ultra HD, 4K, cinematic composition.")
    assert result.negative_prompt == "text, watermark, " + style.negative
    braces = StyleSpec("braces", "{prompt} in {curly} braces", "")
    assert braces.apply("a {weird} prompt") == "a {weird} prompt in {curly} braces"


def test_png_carries_every_parameter_and_is_reproducible(generator: ImageGenerator) -> None:
    first = generator.generate(request(aspect="3:2", mode=Mode.STANDARD))
    again = generator.generate(request(aspect="3:2", mode=Mode.STANDARD))
    assert first.image.png == again.image.png
    image = Image.open(io.BytesIO(first.image.png))
    assert image.format == "PNG" and image.size == (first.image.width, first.image.height)
    assert first.image.width * 2 == first.image.height * 3
    text = image.text  # type: ignore[attr-defined]
    assert text["prompt"] == "a red fox" and text["seed"] == "7"
    for key in ("negative_prompt", "style", "steps", "true_cfg_scale", "size", "mode", "model"):
        assert key in text
    assert json.loads(text["parameters_json"])["seed"] == 7


def test_seed_is_drawn_when_missing_and_reported(generator: ImageGenerator) -> None:
    seeds = {generator.generate(request(seed=None, mode=Mode.FAST)).image.seed for _ in range(3)}
    assert len(seeds) == 3


def test_bad_seed_and_aspect_are_refused(generator: ImageGenerator) -> None:
    with pytest.raises(JobFailed) as bad_seed:
        generator.generate(request(seed=2**40))
    assert bad_seed.value.kind == FailureKind.INVALID
    with pytest.raises(JobFailed) as bad_aspect:
        generator.generate(request(aspect="5:4"))
    assert bad_aspect.value.kind == FailureKind.INVALID


def test_deadline_stops_the_job_inside_the_step_loop(
    tiny_settings: EngineSettings, generator: ImageGenerator, counting: CountingTransformer
) -> None:
    slow = ImageGenerator(
        generator.pipe,
        tiny_settings.model_copy(update={"test_step_delay_s": 0.05}),
        device=generator.device,
        dtype=generator.dtype,
        memory_mode=generator.memory_mode,
        max_side=64,
        fast_available=False,
        model_name="tiny",
    )
    with pytest.raises(JobFailed) as failure:
        slow.generate(request(mode=Mode.QUALITY, deadline_s=0.3))
    assert failure.value.kind == FailureKind.TIMEOUT
    # The interrupt flag skipped the remaining steps: the GPU was freed early.
    assert counting.calls < 2 * MODES[Mode.QUALITY].steps


def test_oom_is_reported_and_the_next_job_works(
    generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    transformer = generator.pipe.transformer
    original = transformer.forward
    state = {"raised": False}

    def forward(*args: object, **kwargs: object) -> object:
        if not state["raised"]:
            state["raised"] = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", forward)
    with pytest.raises(JobFailed) as failure:
        generator.generate(request())
    assert failure.value.kind == FailureKind.OOM
    assert "out of memory" in failure.value.user_message
    assert generator.generate(request()).image.png.startswith(b"\x89PNG")


def test_fast_mode_falls_back_to_standard_without_the_lora(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EngineSettings(
        model=str(tiny_model_dir),
        max_side=64,
        lightning_lora=str(tmp_path / "missing"),
    )
    # A copy of the tiny model without its bundled LoRA folder.
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("lightning"))
    with caplog.at_level(logging.WARNING, logger="engine.pipeline"):
        gen = ImageGenerator.load(settings.model_copy(update={"model": str(model)}))
    assert not gen.fast_available
    assert sum("fast mode unavailable" in r.message for r in caplog.records) == 1
    result = gen.generate(request(mode=Mode.FAST))
    assert result.mode == Mode.STANDARD and result.requested_mode == Mode.FAST
    assert result.steps == 30 and result.true_cfg_scale == 4.0
    assert result.note and "standard" in result.note


def test_real_model_is_refused_on_cpu_with_a_pointer_to_the_tiny_model() -> None:
    with pytest.raises(EngineUnavailable) as refused:
        ImageGenerator.load(EngineSettings(model="Qwen/Qwen-Image", device="cpu"))
    message = str(refused.value)
    assert "python -m engine tiny" in message and "IMAGINE_MODEL" in message


@pytest.mark.parametrize(
    ("free", "expected"),
    [
        (79.0, MemoryMode.RESIDENT),
        (139.0, MemoryMode.RESIDENT),
        (50.0, MemoryMode.MODEL_OFFLOAD),
        (23.0, MemoryMode.SEQUENTIAL_OFFLOAD),
    ],
)
def test_auto_memory_mode_keeps_models_resident_when_they_fit(
    free: float, expected: MemoryMode
) -> None:
    mode, why = choose_memory_mode(MemoryMode.AUTO, torch.device("cuda"), free)
    assert mode == expected and why
    forced, _ = choose_memory_mode(MemoryMode.MODEL_OFFLOAD, torch.device("cuda"), 79.0)
    assert forced == MemoryMode.MODEL_OFFLOAD
