"""CFG-parallel on the CPU: two gloo processes make the same image as one process."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from engine import parallel
from engine.contract import FailureKind, JobFailed, JobRequest, Mode
from engine.devices import EngineUnavailable
from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings
from tests.engine.harness import Recorder


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {"job_id": "p1", "user_id": 1, "prompt": "a red fox", "seed": 11}
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def two_ranks(tiny_settings: EngineSettings) -> Iterator[parallel.ParallelGenerator]:
    settings = tiny_settings.model_copy(update={"device": "cpu", "gpus": "0,1"})
    generator = parallel.load(settings)
    try:
        yield generator
    finally:
        generator.close()


def test_two_processes_make_the_one_process_image(
    generator: ImageGenerator, two_ranks: parallel.ParallelGenerator
) -> None:
    computed = []
    stock = two_ranks.split._stock

    def counted(*args: object, **kwargs: object) -> object:
        computed.append(1)
        return stock(*args, **kwargs)

    two_ranks.split._stock = counted
    try:
        two = two_ranks.generate(request(mode=Mode.STANDARD))
    finally:
        two_ranks.split._stock = stock
    assert len(computed) == two.steps  # rank 0 ran the prompt's forwards, rank 1 the others
    for mode in (Mode.STANDARD, Mode.FAST):
        one = generator.generate(request(mode=mode))
        two = two_ranks.generate(request(mode=mode))
        assert two.steps == one.steps and two.image.seed == one.image.seed
        np.testing.assert_array_equal(pixels(two.image.png), pixels(one.image.png))
    assert two_ranks.parallel_images == 2  # fast mode has no CFG: rank 0 alone
    info = two_ranks.info()
    assert info.gpus == ("cpu", "cpu") and info.parallel == "cfg"


def test_a_cancelled_image_stops_every_rank_and_the_next_one_is_right(
    generator: ImageGenerator, two_ranks: parallel.ParallelGenerator
) -> None:
    with pytest.raises(JobFailed) as failed:
        two_ranks.generate(request(mode=Mode.STANDARD), Recorder(stop_after=3))
    assert failed.value.kind == FailureKind.CANCELLED
    # Had the follower missed the stop, it would still be mid-image and this would hang or
    # come out different.
    again = two_ranks.generate(request(mode=Mode.STANDARD, seed=12))
    expected = generator.generate(request(mode=Mode.STANDARD, seed=12))
    np.testing.assert_array_equal(pixels(again.image.png), pixels(expected.image.png))


def test_bad_input_fails_on_rank_0_before_any_rank_starts(
    two_ranks: parallel.ParallelGenerator,
) -> None:
    with pytest.raises(JobFailed) as failed:
        two_ranks.generate(request(aspect="7:5"))
    assert failed.value.kind == FailureKind.INVALID
    assert two_ranks.generate(request(mode=Mode.STANDARD)).image.png  # still in step


@pytest.mark.parametrize("text", ["0,x", "1,1", "-1,0"])
def test_gpu_lists_are_checked(text: str) -> None:
    with pytest.raises(EngineUnavailable):
        parallel.parse_gpus(text)
    assert parallel.parse_gpus(" 0, 1 ") == [0, 1] and parallel.parse_gpus("") == []


def test_sequence_shares_are_worked_out_from_the_shapes() -> None:
    """Ulysses asks for every rank's share at each attention; each rank answers it locally."""
    import torch

    from engine.parallel.sequence import LocalSizes, split_sizes

    assert split_sizes(6889, 2) == [3445, 3444] and split_sizes(40, 2) == [20, 20]
    seen = []
    sizes = LocalSizes(lambda **kw: seen.append(kw), rank=1, world=2)
    sizes(hidden_states=torch.empty(1, 6889, 4), encoder_hidden_states=torch.empty(1, 41, 4))
    assert seen and sizes.table == {
        3444 + 20: [3445 + 21, 3444 + 20],  # the joint attention: text share + image share
        3444: [3445, 3444],  # the image, gathered at the end
    }
    # Rank 0's text share (8 of 15) equals its image share: no matter, text is never asked.
    sizes(hidden_states=torch.empty(1, 16, 4), encoder_hidden_states=torch.empty(1, 15, 4))
    assert sizes.table == {15: [16, 15], 8: [8, 8]}
    # A rank without text: the two questions look alike there, so no rank answers.
    sizes(hidden_states=torch.empty(1, 8, 4), encoder_hidden_states=torch.empty(1, 1, 4))
    assert sizes.table == {}


def test_with_ulysses_the_warm_up_runs_fast_mode_at_three_prompt_lengths_in_a_row(
    two_ranks: parallel.ParallelGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.parallel import group

    warmed: list[tuple[Mode, str, int]] = []
    monkeypatch.setattr(group, "fast_sequence", lambda local: object())  # as on two GPUs
    monkeypatch.setattr(
        two_ranks, "warm_once", lambda req, steps: warmed.append((req.mode, req.prompt, steps))
    )

    two_ranks.warmup()

    assert [(mode, steps) for mode, _, steps in warmed] == [
        (Mode.STANDARD, 2),
        (Mode.FAST, two_ranks.local.settings.lightning_steps),
        (Mode.FAST, 1),
        (Mode.FAST, 1),
    ]
    lengths = [two_ranks._tokens(prompt) for _, prompt, _ in warmed[1:]]
    assert lengths[1:] == [lengths[0] + 1, lengths[0] + 2]


def test_warm_up_lengths_the_tokenizer_cannot_make_are_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from engine.parallel.group import prompt_lengths

    def two_per_word(text: str) -> int:
        return 2 * len(text.split())

    assert prompt_lengths(two_per_word, "warm up") == ["warm up a"]
    assert "no prompt of every wanted length" in caplog.text
