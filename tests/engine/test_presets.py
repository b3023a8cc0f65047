from __future__ import annotations

import json

import pytest

from engine.contract import (
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
    Mode,
    OutputImage,
    Progress,
    StyleSpec,
)
from engine.presets import ASPECTS, BUILTIN_STYLES, MODES, image_size
from engine.redis.wire import (
    JobMessage,
    ProgressEvent,
    ResultEnvelope,
    parse_event,
    parse_job,
    parse_result,
)


def test_native_sizes_match_the_model_card_and_are_multiples_of_16() -> None:
    assert image_size("1:1") == (1328, 1328)
    assert image_size("16:9") == (1664, 928)
    assert image_size("9:16") == (928, 1664)
    for key in ASPECTS:
        width, height = image_size(key)
        assert width % 16 == 0 and height % 16 == 0


@pytest.mark.parametrize("key", list(ASPECTS))
@pytest.mark.parametrize("max_side", [64, 256, 1024])
def test_capped_sizes_keep_the_exact_ratio(key: str, max_side: int) -> None:
    width, height = image_size(key, max_side)
    a, b = ASPECTS[key].ratio
    assert width * b == height * a
    assert width % 16 == 0 and height % 16 == 0


def test_modes_and_styles() -> None:
    assert (MODES[Mode.QUALITY].steps, MODES[Mode.QUALITY].true_cfg_scale) == (50, 4.0)
    assert (MODES[Mode.STANDARD].steps, MODES[Mode.STANDARD].true_cfg_scale) == (30, 4.0)
    assert MODES[Mode.FAST].true_cfg_scale == 1.0
    assert len(set(BUILTIN_STYLES) - {"none"}) >= 8
    assert all("{prompt}" in s.template for s in BUILTIN_STYLES.values())


def test_contract_round_trips_through_the_wire() -> None:
    request = JobRequest(
        "1", 2, "p", style=StyleSpec("s", "{prompt}!", "n"), negative_prompt="x",
        aspect="16:9", seed=5, mode=Mode.FAST,
    )  # fmt: skip
    message = JobMessage(request=request, submitted_at=1.0, dispatched_at=1.0, attempt=1)
    assert parse_job((json.loads(message.dumps()),), {}).request == request
    image = OutputImage(b"\x89PNG", 64, 64, 5)
    result = JobResult("1", (image,), 8, 1.0, Mode.FAST, Mode.FAST, "s", "p", "p!", "", "1:1", "m")
    assert parse_result(json.loads(ResultEnvelope.success(result).dumps())) == result
    progress = Progress("1", 3, 8, 1.5, 0.5)
    event = parse_event(ProgressEvent.of("w", progress).dumps())
    assert isinstance(event, ProgressEvent) and event.progress() == progress
    assert progress.percent == 37 and progress.eta_s == 2.5
    failure = parse_result(ResultEnvelope.failure(JobFailed(FailureKind.OOM, "too big")).dumps())
    assert isinstance(failure, JobFailed)
    assert failure.kind == "oom" and failure.user_message == "too big"
