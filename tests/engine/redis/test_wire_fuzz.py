"""Fuzzing the Redis wire parsers (issue 20 item 15c): whatever arrives on the job stream, the
events channel, a heartbeat key or a result key is read or refused with ``WireError`` (a job
that reads but carries bad input: ``JobFailed``), never any other exception, so no loop, worker
or bot ends because of a message.

Inputs are real messages of both wire versions, then broken: truncated, bytes flipped, fields
dropped, retyped, set to odd values, nested deep, versions changed. Examples run 100 at a time
in the suite and 1,000 under the ``fuzz`` profile ``make test`` runs after it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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
from engine.redis import wire

pytestmark = pytest.mark.fuzz

REQUEST = JobRequest(
    "1", 5, "a fox", style=StyleSpec("anime", "{prompt}, anime"), seed=3, mode=Mode.FAST,
    images=(b"\x89PNG-ish",), strength=0.35, parent_job_id="0",
)  # fmt: skip
RESULT = JobResult(
    "1", (OutputImage(b"\x89PNG", 64, 64, 3),), 8, 1.0, Mode.FAST, Mode.FAST, "none", "p",
    "p", "", "1:1", "m", worker="gpu-a",
)  # fmt: skip
HEARTBEAT = wire.Heartbeat(
    name="gpu-a", consumer="gpu-a#1", host="box", pid=1, state=wire.WorkerState.IDLE,
    capacity=1, gpu="H200", memory_gb=139.8, memory_mode="resident", model="m",
    fast_available=True, jobs_done=3, started_at=1.0, last_seen=2.0,
)  # fmt: skip
V1_JOB = {
    "v": 1, "submitted_at": 1.0, "dispatched_at": 2.0, "attempt": 1, "needs": "edit",
    "request": {"job_id": "9", "user_id": 3, "prompt": "x", "edit_images": ["AAEC"]},
}  # fmt: skip
V1_RESULT = {
    "v": 1, "ok": True, "error": None,
    "result": {
        "job_id": "1", "png": "89504e47", "width": 64, "height": 64, "seed": 3, "steps": 8,
        "true_cfg_scale": 1.0, "mode": "fast", "requested_mode": "fast", "style": "none",
        "prompt": "p", "full_prompt": "p", "negative_prompt": "", "aspect": "1:1",
        "model": "m", "queued_s": 0.0, "run_s": 1.0, "note": None, "worker": None,
    },
}  # fmt: skip
SEEDS: list[dict[str, Any]] = [
    wire.JobMessage(request=REQUEST, submitted_at=1.0, dispatched_at=2.0, attempt=1).document(),
    wire.ResultEnvelope.success(RESULT).document(),
    wire.ResultEnvelope.failure(JobFailed(FailureKind.OOM, "big")).document(),
    json.loads(HEARTBEAT.dumps()),
    json.loads(wire.ProgressEvent.of("gpu-a", Progress("1", 3, 8, 1.0, 0.3, b"jpeg")).dumps()),
    json.loads(wire.StartedEvent(job_id="1", worker="gpu-a").dumps()),
    json.loads(wire.DoneEvent(job_id="1", worker="gpu-a").dumps()),
    V1_JOB,
    V1_RESULT,
]
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["", "AAEC", "%%%", "generate", "edit", "fast", "\x00", "9" * 400]),
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return {} if value is DROP else value
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    if value is DROP and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = None if value is DROP else value
    return copy


DROP = object()


@st.composite
def messages(draw: st.DrawFn) -> bytes | str | dict[str, Any]:
    """A real message broken a few ways: fields changed or dropped, bytes flipped, cut short."""
    document: Any = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(paths(document)))
        document = replaced(document, where, draw(st.one_of(ODD, st.just(DROP))))
    form = draw(st.sampled_from(["dict", "text", "bytes"]))
    if form == "dict":
        return document if isinstance(document, dict) else {"v": document}
    text = json.dumps(document)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]
    data = text.encode()
    if form == "bytes" and data and draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data if form == "bytes" else data.decode(errors="replace")


def read_every_way(data: bytes | str | dict[str, Any]) -> None:
    """Every parser this message could meet; only the wire's own answers may come out."""
    for parse in (
        lambda: wire.parse_job((data,), {}),
        lambda: wire.parse_result(data),
        lambda: (
            wire.parse_heartbeat(data)
            if isinstance(data, bytes | str)
            else wire.Heartbeat.read(data)
        ),
        lambda: wire.parse_event(data) if isinstance(data, bytes | str) else None,
    ):
        try:
            parsed = parse()
        except wire.WireError:
            continue
        except JobFailed as exc:  # read, but bad input: a plain refusal
            assert exc.kind == FailureKind.INVALID
            continue
        if isinstance(parsed, wire.ParsedJob):
            try:
                parsed.request.validate()
            except JobFailed as exc:
                assert exc.kind == FailureKind.INVALID


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
@example(message="[" * 100_000)  # deeper than the JSON parser goes
@example(message={"v": 2, "request": {"images": ["A" * 7]}, "attempt": 1})
@example(message={"v": 1, "request": {"edit_images": "AAEC"}, "attempt": 1})
@example(message={"v": 1, "ok": True, "result": {"png": None}})
@example(message={"v": 2, "ok": True, "result": {"images": [{"png": 5}]}})
@example(message=base64.b64encode(b"\xff" * 30).decode())
def test_the_wire_parsers_refuse_what_they_cannot_read_and_nothing_else(
    message: bytes | str | dict[str, Any],
) -> None:
    read_every_way(message)


def test_the_seeds_themselves_read() -> None:
    """The fuzz starts from real messages (or it would only fuzz the first check)."""
    assert wire.parse_job((SEEDS[0],), {}).request == REQUEST
    assert wire.parse_result(SEEDS[1]) == RESULT
    assert wire.parse_heartbeat(json.dumps(SEEDS[3])) == HEARTBEAT
    assert wire.parse_job((V1_JOB,), {}).request.task == "edit"
    assert isinstance(wire.parse_result(V1_RESULT), JobResult)
