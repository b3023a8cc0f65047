"""The wire derives from the contract, so a change to either is a change on the wire: every
message's shape is pinned here per version, and changing one without a version decision fails.

When ``test_every_message_shape_is_pinned_per_version`` fails, decide:

* an older reader may go without the change (an optional field it would ignore; extra fields
  are ignored): re-pin the shape under the same version (``python -m
  tests.engine.redis.test_wire_versions`` rewrites ``wire_shapes.json``) and say so in the
  commit;
* it may not (a field removed, retyped, or one whose absence changes the result): raise the
  message's ``VERSION``, give it an ``upgrade`` from the previous version
  (``engine.redis.wire_v1`` is the model), answer the previous version where a worker answers
  (``ResultEnvelope.document_for``), and pin the new shape.

The other tests hold the promise of one version step: what the previous release wrote (its
messages, literally) still reads, and a worker answers an old bot's job in the old bot's words.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from engine.contract import TASK_EDIT, FailureKind, JobFailed, JobResult, Mode, OutputImage
from engine.redis import wire
from tests.engine.harness import eventually

SHAPES = Path(__file__).with_name("wire_shapes.json")
MESSAGES: tuple[type[wire._Message], ...] = (
    wire.JobMessage,
    wire.Marker,
    wire.StartedEvent,
    wire.ProgressEvent,
    wire.DoneEvent,
    wire.WorkerEvent,
    wire.ResultEnvelope,
    wire.Heartbeat,
)


def _bare(schema: Any) -> Any:
    """A schema without its prose (titles, descriptions): only the shape is the contract."""
    if isinstance(schema, dict):
        return {k: _bare(v) for k, v in schema.items() if k not in ("title", "description")}
    if isinstance(schema, list):
        return [_bare(v) for v in schema]
    return schema


def shapes() -> dict[str, Any]:
    return {f"{m.__name__} v{m.VERSION}": _bare(m.model_json_schema()) for m in MESSAGES}


def test_every_message_shape_is_pinned_per_version() -> None:
    pinned = json.loads(SHAPES.read_text())
    now = shapes()
    for name, shape in now.items():
        assert name in pinned, f"{name}: a new message or version; pin it (see the docstring)"
        assert shape == pinned[name], (
            f"{name} changed shape without a wire-version decision; see this module's docstring"
        )
    assert set(pinned) == set(now), "a pinned message is gone; remove it with its version"


# ---------------------------------------------------------------- what the last release wrote
PNG = b"\x89PNG\r\n\x1a\n-not-decoded-here"
V1_JOB = {  # a Vary job from a bot of the previous release (its source image as init_image)
    "v": 1,
    "request": {
        "job_id": "2001", "user_id": 5, "prompt": "a fox", "negative_prompt": None,
        "style": {"name": "anime", "template": "{prompt}, anime", "negative": ""},
        "aspect": "1:1", "seed": 3, "mode": "fast", "deadline_s": 600.0,
        "init_image": base64.b64encode(PNG).decode(), "strength": 0.35, "parent_job_id": "2000",
    },
    "submitted_at": 1.0, "dispatched_at": 2.0, "attempt": 1, "needs": "generate",
}  # fmt: skip
V1_EDIT = {
    "v": 1,
    "request": {
        "job_id": "2002", "user_id": 5, "prompt": "make it blue", "mode": "standard",
        "edit_images": [base64.b64encode(PNG).decode(), base64.b64encode(b"second").decode()],
    },
    "submitted_at": 1.0, "dispatched_at": 2.0, "attempt": 2, "needs": "edit",
}  # fmt: skip
# Every field of the previous release's JobResult: its reader built the class from exactly
# these keys (an extra or a missing one failed it), the PNG in hex.
V1_RESULT_FIELDS = {
    "job_id", "png", "width", "height", "seed", "steps", "true_cfg_scale", "mode",
    "requested_mode", "style", "prompt", "full_prompt", "negative_prompt", "aspect", "model",
    "queued_s", "run_s", "note", "worker",
}  # fmt: skip
V1_RESULT = {
    "v": 1, "ok": True, "error": None,
    "result": {
        "job_id": "2001", "png": PNG.hex(), "width": 64, "height": 48, "seed": 3, "steps": 8,
        "true_cfg_scale": 1.0, "mode": "fast", "requested_mode": "fast", "style": "anime",
        "prompt": "a fox", "full_prompt": "a fox, anime", "negative_prompt": "",
        "aspect": "4:3", "model": "Qwen-Image", "queued_s": 0.5, "run_s": 2.0, "note": None,
        "worker": "gpu-a",
    },
}  # fmt: skip


def test_an_old_bots_jobs_read_the_same() -> None:
    vary = wire.parse_job((V1_JOB,), {})
    assert vary.version == 1
    request = vary.request
    assert (request.task, request.images, request.strength) == ("generate", (PNG,), 0.35)
    assert (request.mode, request.parent_job_id, request.style.name) == (Mode.FAST, "2000", "anime")
    edit = wire.parse_job((json.dumps(V1_EDIT),), {})
    assert edit.request.task == TASK_EDIT and edit.request.images == (PNG, b"second")
    assert edit.message.attempt == 2


def test_an_old_workers_results_read_the_same() -> None:
    result = wire.parse_result(V1_RESULT)
    assert isinstance(result, JobResult)
    assert result.image == OutputImage(PNG, 64, 48, 3)
    assert (result.worker, result.full_prompt, result.mode) == ("gpu-a", "a fox, anime", "fast")
    failure = wire.parse_result(
        {"v": 1, "ok": False, "result": None, "error": {"kind": "oom", "user_message": "x"}}
    )
    assert isinstance(failure, JobFailed) and failure.kind == FailureKind.OOM


def test_an_old_bot_reads_the_answer_to_its_job() -> None:
    result = wire.parse_result(V1_RESULT)
    assert isinstance(result, JobResult)
    answer = wire.ResultEnvelope.success(result).document_for(1)
    assert answer["v"] == 1 and set(answer["result"]) == V1_RESULT_FIELDS
    assert answer == V1_RESULT  # word for word what the previous release wrote
    refused = wire.ResultEnvelope.failure(JobFailed(FailureKind.INVALID, "no")).document_for(1)
    assert refused == {
        "v": 1, "ok": False, "result": None, "error": {"kind": "invalid", "user_message": "no"}
    }  # fmt: skip


async def test_a_worker_answers_an_old_bots_job_in_its_version(cluster: Any) -> None:
    """Through the real worker: a job as the previous release's bot put it on the stream is
    rendered, and the stored result is one that bot reads."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 90, 160)).save(buffer, format="PNG")
    job = json.loads(json.dumps(V1_JOB))
    job["request"]["init_image"] = base64.b64encode(buffer.getvalue()).decode()
    job["request"]["deadline_s"] = None
    job["submitted_at"] = job["dispatched_at"] = time.time()  # not a stale replay
    await cluster.kick("2001", job)

    async def answered() -> bool:
        return bool(await cluster.redis.exists(cluster.keys.result("2001")))

    await eventually(answered, "the worker's answer")
    broker = cluster.backend._broker
    stored = (await broker.result_backend.get_result("2001")).return_value
    assert stored["v"] == 1 and stored["ok"] is True
    assert set(stored["result"]) == V1_RESULT_FIELDS
    image = Image.open(io.BytesIO(bytes.fromhex(stored["result"]["png"])))
    assert image.format == "PNG" and stored["result"]["steps"] == 3  # 0.35 of 8 fast steps


if __name__ == "__main__":  # re-pin the shapes after a decision (see the docstring)
    SHAPES.write_text(json.dumps(shapes(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SHAPES}", file=sys.stderr)
