"""Variations (img2img) on the tiny pipeline: shared modules, real step counts, true CFG,
Lightning, what the PNG records, and bad input refused before any GPU work."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from diffusers import QwenImageImg2ImgPipeline
from PIL import Image

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, Mode
from engine.img2img import build_img2img, img2img_steps, load_init_image
from engine.pipeline import ImageGenerator
from engine.presets import MODES, NEUTRAL_NEGATIVE, VARY_STRONG_STRENGTH, VARY_SUBTLE_STRENGTH
from engine.redis.wire import JobMessage, WireError, parse_job
from tests.engine.conftest import CountingTransformer
from tests.engine.harness import Recorder


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {"job_id": "v1", "user_id": 1, "prompt": "a red fox", "seed": 7}
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def source(generator: ImageGenerator) -> JobResult:
    """A finished text-to-image result: the image a Vary button starts from."""
    return generator.generate(request(job_id="parent-1", seed=11))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_img2img_pipeline_shares_every_module(generator: ImageGenerator) -> None:
    txt2img = generator.pipe
    img2img = generator.img2img_pipeline()
    assert isinstance(img2img, QwenImageImg2ImgPipeline)
    assert img2img is not txt2img
    assert img2img.transformer is txt2img.transformer
    assert img2img.vae is txt2img.vae
    assert img2img.text_encoder is txt2img.text_encoder
    assert img2img.tokenizer is txt2img.tokenizer
    assert img2img.scheduler is txt2img.scheduler
    assert dict(img2img.scheduler.config) == dict(txt2img.scheduler.config)
    # Not one tensor of its own: every parameter and buffer is the loaded pipeline's storage.
    loaded = {
        t.data_ptr()
        for name in ("transformer", "vae", "text_encoder")
        for module in [getattr(txt2img, name)]
        for t in [*module.parameters(), *module.buffers()]
    }
    for name in ("transformer", "vae", "text_encoder"):
        module = getattr(img2img, name)
        assert all(t.data_ptr() in loaded for t in [*module.parameters(), *module.buffers()])
    # Built once, lazily.
    assert generator.img2img_pipeline() is img2img


def test_building_it_never_recasts_the_shared_weights(generator: ImageGenerator) -> None:
    """``from_pipe`` ends with ``.to(dtype)`` (float32 by default): on shared modules that would
    rewrite the loaded pipeline's own weights (FP8 or bf16) in place."""
    vae = generator.pipe.vae
    vae.register_buffer("probe", torch.ones(2, dtype=torch.float16))
    try:
        img2img = build_img2img(generator.pipe)
        assert img2img.vae is vae
        assert vae.probe.dtype == torch.float16
    finally:
        del vae._buffers["probe"]


@pytest.mark.parametrize(("strength", "steps"), [(0.35, 11), (0.7, 21)])
def test_a_variation_runs_strength_times_steps_with_true_cfg(
    generator: ImageGenerator,
    counting: CountingTransformer,
    source: JobResult,
    strength: float,
    steps: int,
) -> None:
    assert MODES[Mode.STANDARD].steps == 30
    seen = Recorder()
    seen.previews = False
    result = generator.generate(
        request(images=(source.image.png,), strength=strength, parent_job_id=source.job_id),
        seen,
    )
    assert img2img_steps(30, strength) == steps
    assert result.steps == steps
    assert seen.totals == {steps}
    assert seen.steps == list(range(1, steps + 1))
    # True CFG as in text-to-image: two transformer passes per step, neutral negative prompt.
    assert counting.calls == 2 * steps
    assert result.true_cfg_scale == 4.0
    assert result.negative_prompt == NEUTRAL_NEGATIVE
    assert (result.image.width, result.image.height) == (source.image.width, source.image.height)


def test_the_png_records_the_parent_job_and_the_strength(
    generator: ImageGenerator, source: JobResult
) -> None:
    result = generator.generate(
        request(job_id="v2", images=(source.image.png,), strength=0.35, parent_job_id="parent-1")
    )
    text = Image.open(io.BytesIO(result.image.png)).text
    assert text["parent_job_id"] == "parent-1"
    assert float(text["strength"]) == 0.35
    assert text["steps"] == "11" and text["schedule_steps"] == "30"
    parameters = json.loads(text["parameters_json"])
    assert parameters["parent_job_id"] == "parent-1" and parameters["strength"] == 0.35
    # A plain image records neither.
    assert "strength" not in Image.open(io.BytesIO(source.image.png)).text


def test_a_variation_keeps_the_source_and_differs_by_seed(
    generator: ImageGenerator, source: JobResult
) -> None:
    def pixels(result: JobResult) -> torch.Tensor:
        image = Image.open(io.BytesIO(result.image.png)).convert("RGB")
        return torch.from_numpy(np.asarray(image, dtype=np.float32))

    subtle = generator.generate(request(images=(source.image.png,), strength=0.35, seed=1))
    again = generator.generate(request(images=(source.image.png,), strength=0.35, seed=1))
    other = generator.generate(request(images=(source.image.png,), strength=0.35, seed=2))
    assert subtle.image.png == again.image.png  # reproducible from its seed
    assert subtle.image.png != other.image.png  # a new seed, a new variation
    plain = generator.generate(request(seed=1))
    # Closer to the image it started from than a fresh image of the same seed is.
    source_pixels = pixels(source)
    assert (pixels(subtle) - source_pixels).abs().mean() < (
        pixels(plain) - source_pixels
    ).abs().mean()


def test_a_fast_variation_uses_lightning_without_cfg(
    generator: ImageGenerator, counting: CountingTransformer, source: JobResult
) -> None:
    result = generator.generate(
        request(images=(source.image.png,), strength=VARY_STRONG_STRENGTH, mode=Mode.FAST)
    )
    expected = img2img_steps(generator.settings.lightning_steps, VARY_STRONG_STRENGTH)
    assert result.mode == Mode.FAST and result.steps == expected == 6
    assert result.true_cfg_scale == 1.0
    assert counting.calls == expected
    scheduler = generator.img2img_pipeline().scheduler.config
    assert scheduler.base_shift == pytest.approx(math.log(3))
    assert scheduler.shift_terminal is None
    # Back to a CFG mode: the img2img view follows the stock scheduler again.
    generator.generate(request(images=(source.image.png,), strength=VARY_SUBTLE_STRENGTH))
    assert generator.img2img_pipeline().scheduler.config.shift_terminal == 0.02


def test_the_pipeline_gets_the_mode_schedule_and_the_strength(
    generator: ImageGenerator, source: JobResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}
    img2img = generator.img2img_pipeline()
    original = type(img2img).__call__

    def spy(pipe: object, *args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(type(img2img), "__call__", spy)
    generator.generate(request(images=(source.image.png,), strength=0.7, mode=Mode.QUALITY))
    assert seen["num_inference_steps"] == 50 and seen["strength"] == 0.7
    assert seen["true_cfg_scale"] == 4.0 and seen["negative_prompt"] == NEUTRAL_NEGATIVE
    assert "guidance_scale" not in seen
    image = seen["image"]
    assert isinstance(image, Image.Image) and image.size == (
        source.image.width,
        source.image.height,
    )


def test_the_source_is_cropped_to_the_job_aspect_not_stretched() -> None:
    # Red | green | blue thirds, 3:1: a centre crop to a square keeps the green third only.
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 255, 0), (100, 0, 200, 100))
    wide.paste((0, 0, 255), (200, 0, 300, 100))
    square = load_init_image(png_bytes(wide), 64, 64)
    assert square.size == (64, 64) and square.mode == "RGB"
    for x in (2, 32, 61):  # green across the whole width (stretching would show red and blue)
        red, green, blue = square.getpixel((x, 32))
        assert green > 240 and red < 16 and blue < 16
    # Transparency is flattened on white, not black.
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert load_init_image(png_bytes(clear), 16, 16).getpixel((8, 8)) == (255, 255, 255)


def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (4097, 4097)).save(buffer, format="PNG")  # a few KB, 16.8 megapixels
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"images": (b"not an image at all",), "strength": 0.35}, "could not be read"),
        ({"images": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,), "strength": 0.35}, "could not"),
        ({"images": "huge", "strength": 0.35}, "too large"),
        ({"images": "ok", "strength": 0.0}, "strength"),
        ({"images": "ok", "strength": 1.5}, "strength"),
        ({"images": "ok", "strength": math.nan}, "strength"),
        ({"images": "ok", "strength": None}, "strength"),
        ({"images": "ok", "strength": True}, "strength"),
        ({"strength": 0.35}, "needs a source image"),
        ({"images": (b"",), "strength": 0.35}, "empty"),
        ({"images": "ok", "strength": 0.35, "parent_job_id": "x" * 33}, "parent"),
    ],
)
def test_bad_variation_input_is_refused_before_any_gpu_work(
    generator: ImageGenerator,
    counting: CountingTransformer,
    source: JobResult,
    fields: dict[str, object],
    message: str,
) -> None:
    if fields.get("images") == "ok":
        fields = {**fields, "images": (source.image.png,)}
    elif fields.get("images") == "huge":
        fields = {**fields, "images": (huge_png(),)}
    with pytest.raises(JobFailed) as failure:
        generator.generate(request(**fields))
    assert failure.value.kind == FailureKind.INVALID
    assert message in failure.value.user_message
    assert counting.calls == 0
    # The generator is fine afterwards.
    assert generator.generate(request(images=(source.image.png,), strength=0.35)).steps == 11


def test_the_request_round_trips_through_the_wire(source: JobResult) -> None:
    job = request(images=(source.image.png,), strength=0.7, parent_job_id="parent-1")
    message = JobMessage(request=job, submitted_at=1.0, dispatched_at=1.0, attempt=1)
    data = json.loads(json.dumps(message.document()))  # what travels through Redis
    assert isinstance(data["request"]["images"][0], str)  # base64 text
    assert parse_job((data,), {}).request == job
    # A variation from a bot one version older (its source image as ``init_image``).
    old = {**data, "v": 1, "request": {**data["request"]}}
    old["request"]["init_image"] = base64.b64encode(source.image.png).decode()
    del old["request"]["images"], old["request"]["task"]
    assert parse_job((old,), {}).request == job
    with pytest.raises(WireError):
        parse_job(({**data, "request": {**data["request"], "images": ["%%% no %%%"]}},), {})
