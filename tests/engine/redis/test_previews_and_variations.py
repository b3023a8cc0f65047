"""Images from images on the Redis path: live previews carried by progress events (size-capped,
strictly parsed) and a variation rendered by a worker from the image the bot sends."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from engine.contract import Mode, Progress
from engine.img2img import img2img_steps
from engine.pipeline import ImageGenerator
from engine.redis.wire import MAX_PREVIEW_B64_CHARS, ProgressEvent, WireError, parse_event
from tests.engine.redis.harness import Cluster, png_parameters, request

JPEG = b"\xff\xd8\xff\xe0" + bytes(200)


def progress_json(**fields: Any) -> str:
    values: dict[str, Any] = {
        "v": 1,
        "type": "progress",
        "job_id": "9",
        "worker": "gpu-a",
        "step": 10,
        "total": 30,
        "elapsed_s": 1.0,
        "sec_per_step": 0.1,
    }
    values.update(fields)
    return json.dumps(values)


def test_a_preview_travels_in_the_progress_event() -> None:
    event = ProgressEvent.of("gpu-a", Progress("9", 10, 30, 1.0, 0.1, JPEG))
    parsed = parse_event(event.dumps())
    assert isinstance(parsed, ProgressEvent)
    assert parsed.progress() == Progress("9", 10, 30, 1.0, 0.1, preview=JPEG)
    # A step without a preview is the same message as before the field existed.
    plain = ProgressEvent.of("gpu-a", Progress("9", 11, 30, 1.1, 0.1))
    assert (
        "preview" not in json.loads(plain.dumps()) or json.loads(plain.dumps())["preview"] is None
    )
    assert parse_event(progress_json()).progress().preview is None  # type: ignore[union-attr]


def test_a_preview_too_large_for_the_wire_is_dropped_not_the_step() -> None:
    big = bytes(MAX_PREVIEW_B64_CHARS)  # base64 makes it a third larger
    event = ProgressEvent.of("gpu-a", Progress("9", 10, 30, 1.0, 0.1, big))
    assert event.preview is None and event.step == 10


@pytest.mark.parametrize(
    "preview",
    ["not base64 at all!", "A" * (MAX_PREVIEW_B64_CHARS + 4), 12345, ""],
    ids=["not-base64", "too-large", "not-text", "empty"],
)
def test_a_malformed_preview_makes_the_event_unreadable(preview: Any) -> None:
    with pytest.raises(WireError, match="preview"):
        parse_event(progress_json(preview=preview))


async def test_worker_sends_previews_with_progress(
    cluster: Cluster, generator: ImageGenerator, slow_steps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator.settings, "preview_interval_s", 0.0)
    slow_steps(0.05)
    progress: list[Progress] = []
    handle = await cluster.backend.submit(
        request("2101", mode=Mode.STANDARD, seed=5), progress.append
    )
    await handle.result()
    previews = [p for p in progress if p.preview is not None]
    assert previews, [p.step for p in progress]
    for p in previews:
        assert p.preview is not None and p.preview.startswith(b"\xff\xd8\xff")
        assert 0.3 * p.total <= p.step < p.total
        assert len(base64.b64encode(p.preview)) <= MAX_PREVIEW_B64_CHARS


async def test_worker_renders_a_variation_from_the_image_it_is_sent(cluster: Cluster) -> None:
    parent = await (await cluster.backend.submit(request("2201", seed=3))).result()
    progress: list[Progress] = []
    handle = await cluster.backend.submit(
        request("2202", seed=4, images=(parent.image.png,), strength=0.7, parent_job_id="2201"),
        progress.append,
    )
    result = await handle.result()
    params = png_parameters(result.image.png)
    assert params["parent_job_id"] == "2201" and params["strength"] == 0.7
    assert result.steps == params["steps"] == img2img_steps(8, 0.7) == 6
    assert {p.total for p in progress} == {6}
