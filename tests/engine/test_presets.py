from __future__ import annotations

import pytest

from engine.contract import JobFailed, JobRequest, JobResult, Mode, Progress, StyleSpec
from engine.presets import ASPECTS, BUILTIN_STYLES, MODES, image_size


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


def test_contract_round_trips_through_json_types() -> None:
    request = JobRequest("1", 2, "p", StyleSpec("s", "{prompt}!", "n"), "x", "16:9", 5, Mode.FAST)
    assert JobRequest.from_dict(request.to_dict()) == request
    result = JobResult(
        "1", b"\x89PNG", 64, 64, 5, 8, 1.0, Mode.FAST, Mode.FAST, "s", "p", "p!", "", "1:1", "m"
    )
    assert JobResult.from_dict(result.to_dict()) == result
    progress = Progress("1", 3, 8, 1.5, 0.5)
    assert Progress.from_dict(progress.to_dict()) == progress
    assert progress.percent == 37 and progress.eta_s == 2.5
    failure = JobFailed.from_dict(JobFailed("oom", "too big").to_dict())
    assert failure.kind == "oom" and failure.user_message == "too big"
