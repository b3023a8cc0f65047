"""The throttled status edits: sparse, always the latest text, never after the final edit."""

from __future__ import annotations

import asyncio
import itertools
import time

from bot.progress import ProgressReporter

INTERVAL = 0.2


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.edits: list[tuple[float, str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.in_flight = 0

    async def __call__(self, text: str) -> None:
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if text == self.fail_on:
                raise RuntimeError("Discord said no")
            self.edits.append((time.perf_counter(), text))
        finally:
            self.in_flight -= 1


async def wait_for(predicate, limit_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + limit_s
    while not predicate():
        assert time.perf_counter() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_burst_becomes_one_edit_now_and_the_latest_one_later() -> None:
    recorder = Recorder()
    reporter = ProgressReporter(recorder, interval=INTERVAL)
    for step in range(1, 51):
        reporter.update(f"step {step}")
    await wait_for(lambda: len(recorder.edits) == 1)
    for step in range(51, 101):  # inside the interval: held back, coalesced
        reporter.update(f"step {step}")
    await wait_for(lambda: len(recorder.edits) == 2)
    await asyncio.sleep(INTERVAL * 1.5)
    assert [text for _, text in recorder.edits] == ["step 50", "step 100"]
    assert recorder.edits[1][0] - recorder.edits[0][0] >= INTERVAL * 0.95
    await reporter.close()


async def test_edits_are_spaced_by_the_interval() -> None:
    recorder = Recorder()
    reporter = ProgressReporter(recorder, interval=INTERVAL)
    reporter.mark_shown("queued")  # the message was just created: wait a full interval
    created = time.perf_counter()
    for step in range(12):
        reporter.update(f"step {step}")
        await asyncio.sleep(INTERVAL / 4)
    await wait_for(lambda: recorder.edits and recorder.edits[-1][1] == "step 11")
    times = [created] + [t for t, _ in recorder.edits]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= INTERVAL * 0.95 for gap in gaps), gaps
    assert len(recorder.edits) <= 4  # 12 updates over ~3 intervals
    await reporter.close()


async def test_same_text_is_not_sent_twice() -> None:
    recorder = Recorder()
    reporter = ProgressReporter(recorder, interval=INTERVAL)
    reporter.mark_shown("position 2")
    reporter.update("position 2")
    await asyncio.sleep(INTERVAL * 1.5)
    assert recorder.edits == []
    await reporter.close()


async def test_close_waits_for_an_edit_in_flight_and_stops_everything() -> None:
    recorder = Recorder(delay=0.1)
    reporter = ProgressReporter(recorder, interval=INTERVAL)
    reporter.update("step 1")
    await wait_for(lambda: recorder.in_flight == 1)
    reporter.update("step 2")  # pending behind the first edit
    await reporter.close()
    # The edit already on the wire landed before close returned; the pending one never will.
    assert [text for _, text in recorder.edits] == ["step 1"]
    reporter.update("step 3")
    await asyncio.sleep(INTERVAL * 2)
    assert [text for _, text in recorder.edits] == ["step 1"]


async def test_close_cancels_a_pending_edit() -> None:
    recorder = Recorder()
    reporter = ProgressReporter(recorder, interval=INTERVAL)
    reporter.update("step 1")
    await wait_for(lambda: len(recorder.edits) == 1)
    reporter.update("step 2")  # waits for the interval
    await reporter.close()
    await asyncio.sleep(INTERVAL * 1.5)
    assert [text for _, text in recorder.edits] == ["step 1"]


async def test_a_failed_edit_does_not_stop_later_ones() -> None:
    recorder = Recorder(fail_on="step 1")
    reporter = ProgressReporter(recorder, interval=0.05)
    reporter.update("step 1")
    await asyncio.sleep(0.02)
    reporter.update("step 2")
    await wait_for(lambda: recorder.edits)
    assert [text for _, text in recorder.edits] == ["step 2"]
    await reporter.close()
