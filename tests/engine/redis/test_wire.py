"""The Redis wire messages: one definition both sides use, strict about version and shape."""

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
    StyleSpec,
)
from engine.redis.wire import (
    DoneEvent,
    Heartbeat,
    JobMessage,
    ProgressEvent,
    ResultEnvelope,
    StartedEvent,
    WireError,
    WorkerEvent,
    WorkerState,
    parse_event,
    parse_heartbeat,
    parse_job,
    parse_result,
)


def heartbeat(**overrides: object) -> Heartbeat:
    values: dict[str, object] = {
        "name": "gpu-a",
        "consumer": "gpu-a#1234",
        "host": "box",
        "pid": 42,
        "state": WorkerState.IDLE,
        "capacity": 1,
        "gpu": "NVIDIA H200",
        "memory_gb": 139.8,
        "memory_mode": "resident",
        "model": "Qwen/Qwen-Image",
        "fast_available": True,
        "jobs_done": 3,
        "started_at": 1.0,
        "last_seen": 2.0,
    }
    values.update(overrides)
    return Heartbeat.model_validate(values)


def image_result() -> JobResult:
    return JobResult(
        job_id="1",
        images=(OutputImage(png=b"\x89PNG...", width=64, height=64, seed=7),),
        steps=8,
        true_cfg_scale=1.0,
        mode=Mode.FAST,
        requested_mode=Mode.FAST,
        style="none",
        prompt="a fox",
        full_prompt="a fox",
        negative_prompt=" ",
        aspect="1:1",
        model="tiny",
        worker="gpu-a",
    )


def test_every_message_carries_the_version_and_reads_back_the_same() -> None:
    request = JobRequest(
        "1", 5, "a fox", style=StyleSpec("anime", "{prompt}, anime"), seed=3, mode=Mode.QUALITY
    )
    job = JobMessage(request=request, submitted_at=1.0, dispatched_at=2.0, attempt=1)
    assert json.loads(job.dumps())["v"] == JobMessage.VERSION == 2
    parsed = parse_job((json.loads(job.dumps()),), {})
    assert parsed.request == request and parsed.version == 2
    assert parsed.message.dispatched_at == 2.0

    events = [
        StartedEvent(job_id="1", worker="gpu-a"),
        ProgressEvent(job_id="1", worker="gpu-a", step=3, total=8, elapsed_s=0.3, sec_per_step=0.1),
        DoneEvent(job_id="1", worker="gpu-a", written=False),
        WorkerEvent(worker="gpu-a", state=WorkerState.GONE),
    ]
    for event in events:
        assert parse_event(event.dumps().encode()) == event
    progress = parse_event(events[1].dumps())
    assert isinstance(progress, ProgressEvent)
    assert progress.progress().percent == 37

    beat = heartbeat()
    assert parse_heartbeat(beat.dumps().encode()) == beat
    assert beat.info().gpu == "NVIDIA H200"

    result = image_result()
    assert parse_result(ResultEnvelope.success(result).document()) == result
    failed = parse_result(
        ResultEnvelope.failure(JobFailed(FailureKind.TIMEOUT, "Too slow.")).document()
    )
    assert isinstance(failed, JobFailed)
    assert (failed.kind, failed.user_message) == (FailureKind.TIMEOUT, "Too slow.")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"v": 2, "type": "done", "job_id": "1", "worker": "w"}', "wire version 2"),
        (b'{"type": "done", "job_id": "1", "worker": "w"}', "wire version None"),
        (b"not json at all", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"done"', "not a JSON object"),
        (b'{"v": 1, "type": "exploded", "job_id": "1"}', "type"),
        (b'{"v": 1, "type": "progress", "job_id": "1", "worker": "w"}', "step"),
        (b'{"v": 1, "type": "progress", "job_id": "1", "worker": "w", "step": "x", '
         b'"total": 8, "elapsed_s": 1, "sec_per_step": 1}', "step"),
    ],
)  # fmt: skip
def test_an_event_of_another_version_or_shape_is_refused_with_the_reason(
    data: bytes, reason: str
) -> None:
    with pytest.raises(WireError, match=reason):
        parse_event(data)


def test_fields_added_by_a_newer_minor_change_are_ignored() -> None:
    data = json.loads(StartedEvent(job_id="1", worker="w").dumps())
    data["gpu_temperature"] = 71
    assert parse_event(json.dumps(data)) == StartedEvent(job_id="1", worker="w")


def test_a_heartbeat_of_another_shape_is_refused() -> None:
    good = json.loads(heartbeat().dumps())
    for broken in (
        {**good, "v": 7},
        {**good, "state": "exploding"},
        {**good, "capacity": -1},
        {k: v for k, v in good.items() if k != "name"},
    ):
        with pytest.raises(WireError):
            parse_heartbeat(json.dumps(broken))


def test_a_job_message_of_another_version_or_shape_is_refused() -> None:
    request = JobRequest("1", 5, "a fox")
    good = JobMessage(request=request, submitted_at=1.0, dispatched_at=2.0, attempt=1).document()
    with pytest.raises(WireError, match="wire version 99"):
        parse_job(({**good, "v": 99},), {})
    with pytest.raises(WireError, match="one job message"):
        parse_job((good["request"], {"dispatched_at": 2.0}), {})  # the old two-argument form
    with pytest.raises(WireError, match="request"):
        parse_job(({**good, "request": {"job_id": "1"}},), {})
    with pytest.raises(WireError, match=r"request\.mode"):
        parse_job(({**good, "request": {**good["request"], "mode": "turbo"}},), {})
    with pytest.raises(WireError, match=r"request\.user_id"):  # exact types: no "5" for 5
        parse_job(({**good, "request": {**good["request"], "user_id": "5"}},), {})
    with pytest.raises(WireError, match=r"request\.images"):  # bytes are base64
        parse_job(({**good, "request": {**good["request"], "images": ["not base64!"]}},), {})
    with pytest.raises(WireError, match="attempt"):
        parse_job(({**good, "attempt": 0},), {})


def test_a_result_of_another_version_or_shape_is_refused() -> None:
    good = ResultEnvelope.success(image_result()).document()
    for broken in (
        {**good, "v": 3},
        {"ok": True, "result": good["result"]},  # the unversioned form
        {**good, "result": None},
        {**good, "result": {**good["result"], "images": []}},  # nothing made
        {**good, "result": {**good["result"], "images": [{"png": "not base64!"}]}},
        {"v": 1, "ok": True, "result": {"png": "not hex"}},
        {"v": 2, "ok": False, "error": {"kind": "meltdown", "user_message": "x"}},
        None,
        "a string",
    ):
        with pytest.raises(WireError):
            parse_result(broken)
