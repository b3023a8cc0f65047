"""Live previews on the tiny pipeline: when they come, what they are, and that the final image
never depends on them."""

from __future__ import annotations

import functools
import io
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from engine import previews as previews_module
from engine.contract import JobRequest, Progress
from engine.pipeline import ImageGenerator
from engine.previews import PREVIEW_MAX_SIDE, PreviewMaker, decode_preview, estimate_x0
from engine.redis.wire import ProgressEvent, parse_event
from engine.tiny import QWEN_IMAGE_SCHEDULER
from tests.engine.harness import Recorder


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {"job_id": "p1", "user_id": 1, "prompt": "a red fox", "seed": 5}
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def no_throttle(generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator.settings, "preview_interval_s", 0.0)


def test_previews_come_from_30_percent_on_and_never_on_the_last_step(
    generator: ImageGenerator, no_throttle: None
) -> None:
    seen = Recorder()
    result = generator.generate(request(), seen)
    assert result.steps == 30
    assert sorted(seen.previews_seen) == list(range(9, 30))  # 9/30 = 30 %; step 30 is the image
    # Every step is reported once: a preview step in place of its plain progress.
    assert sorted(seen.steps + list(seen.previews_seen)) == list(range(1, 31))
    for jpeg in seen.previews_seen.values():
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG"
        assert max(image.size) <= PREVIEW_MAX_SIDE
        assert image.size == (
            result.image.width,
            result.image.height,
        )  # the tiny image is below the cap


def test_the_last_preview_looks_like_the_final_image(
    generator: ImageGenerator, no_throttle: None
) -> None:
    seen = Recorder()
    result = generator.generate(request(), seen)

    def pixels(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)

    final = pixels(result.image.png)
    early, late = pixels(seen.previews_seen[9]), pixels(seen.previews_seen[29])
    assert np.abs(late - final).mean() < np.abs(early - final).mean()
    assert np.abs(late - final).mean() < 12  # JPEG and one step apart: nearly the image


def test_previews_never_change_the_image(generator: ImageGenerator, no_throttle: None) -> None:
    seen = Recorder()
    with_previews = generator.generate(request(), seen)
    without = generator.generate(request())
    assert seen.previews_seen and with_previews.image.png == without.image.png


def test_previews_off_sends_none(
    generator: ImageGenerator, no_throttle: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator.settings, "previews", False)
    seen = Recorder()
    generator.generate(request(), seen)
    assert seen.previews_seen == {}
    assert seen.steps == list(range(1, 31))


def test_previews_are_throttled_by_the_interval(
    generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock where every step takes one second; previews at most every 2.5 s."""
    now = [0.0]
    monkeypatch.setattr(generator.settings, "preview_interval_s", 2.5)
    monkeypatch.setattr(
        "engine.pipeline.PreviewMaker", functools.partial(PreviewMaker, clock=lambda: now[0])
    )

    def tick() -> None:
        now[0] += 1.0

    seen = Recorder(tick)
    generator.generate(request(), seen)
    assert sorted(seen.previews_seen) == [9, 12, 15, 18, 21, 24, 27]


def test_a_variation_gets_previews_of_its_own_steps(
    generator: ImageGenerator, no_throttle: None
) -> None:
    source = generator.generate(request(seed=9))
    seen = Recorder()
    result = generator.generate(request(images=(source.image.png,), strength=0.35), seen)
    assert result.steps == 11
    assert sorted(seen.previews_seen) == list(range(4, 11))  # 3.3 of 11 steps, never step 11


def test_a_failing_preview_costs_nothing_but_previews(
    generator: ImageGenerator,
    no_throttle: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def broken(*args: object) -> bytes:
        calls.append(args)
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(previews_module, "decode_preview", broken)
    seen = Recorder()
    with caplog.at_level(logging.WARNING, logger="engine.previews"):
        result = generator.generate(request(), seen)
    assert result.image.png == generator.generate(request()).image.png
    assert seen.previews_seen == {} and seen.steps == list(range(1, 31))
    assert len(calls) == 1  # tried once, then off for this job
    assert "preview failed" in caplog.text


def test_large_images_give_previews_of_at_most_256_px(generator: ImageGenerator) -> None:
    # 512x288 (16:9): 64x36 latents, averaged down to 32x18 before the VAE decodes them.
    packed = torch.randn(1, (512 // 16) * (288 // 16), 64)
    with torch.inference_mode():
        jpeg = decode_preview(generator.pipe, packed, 512, 288)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (256, 144)


def test_x0_from_two_latents_is_exactly_x_t_minus_sigma_v() -> None:
    """The identity the previews rely on, checked against the real scheduler's Euler step."""
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER)
    scheduler.set_timesteps(30, mu=0.8)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 16, 64, generator=generator)
    for index, t in enumerate(scheduler.timesteps[:12]):
        v = torch.randn(1, 16, 64, generator=generator)
        x_next = scheduler.step(v, t, x_t, return_dict=False)[0]
        sigma_t, sigma_next = previews_module._step_sigmas(scheduler) or (0.0, 0.0)
        assert sigma_t == pytest.approx(float(scheduler.sigmas[index]))
        expected = x_t - sigma_t * v
        assert torch.allclose(estimate_x0(x_t, x_next, sigma_t, sigma_next), expected, atol=1e-4)
        x_t = x_next


def test_progress_carries_the_preview_through_the_wire() -> None:
    plain = Progress("j", 3, 30, 1.0, 0.3)
    assert json.loads(ProgressEvent.of("w", plain).dumps())["preview"] is None
    event = parse_event(ProgressEvent.of("w", plain).dumps())
    assert isinstance(event, ProgressEvent) and event.progress() == plain
    with_preview = Progress("j", 12, 30, 4.0, 0.3, preview=b"\xff\xd8jpeg")
    data = json.loads(ProgressEvent.of("w", with_preview).dumps())
    assert isinstance(data["preview"], str)
    event = parse_event(json.dumps(data))
    assert isinstance(event, ProgressEvent) and event.progress() == with_preview
