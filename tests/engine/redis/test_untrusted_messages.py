"""Redis content is untrusted input: a message of another version or shape is logged and skipped.

Real Redis, the real ``RedisBackend`` and a real worker. Each test puts bad messages where the
other side reads (the events channel, the heartbeats, the job stream, a stored result), then
shows that the loop reading them is still alive: the next job is delivered, with its progress.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import pytest
from taskiq import TaskiqResult

from engine.contract import FailureKind, JobFailed, Progress
from engine.redis import wire
from engine.redis.wire import JobMessage, parse_result
from engine.redis.worker import UNREADABLE_JOB_MESSAGE
from engine.runner import ERROR_MESSAGE
from tests.engine.harness import eventually
from tests.engine.redis.harness import Cluster, request


@pytest.fixture(autouse=True)
def every_skip_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip log is rate-limited per reason; each test starts with a clean slate."""
    monkeypatch.setattr(wire, "_skip_logged", {})


def skipped(caplog: pytest.LogCaptureFixture, where: str) -> list[str]:
    prefix = f"skipped an unreadable message in {where}: "
    return [
        r.getMessage()[len(prefix) :] for r in caplog.records if r.getMessage().startswith(prefix)
    ]


async def assert_next_job_delivered_with_progress(cluster: Cluster, job_id: str) -> None:
    progress: list[Progress] = []
    handle = await cluster.backend.submit(request(job_id), progress.append)
    result = await handle.result()
    assert result.image.png.startswith(b"\x89PNG")
    assert [p.step for p in progress] == list(range(1, result.steps + 1))


async def test_worker_events_and_heartbeats_of_another_version_or_shape_are_skipped(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engine.redis.wire")
    keys = cluster.keys
    newer = {"v": 99, "type": "progress", "job_id": "x", "worker": "w", "step": 1, "total": 8}
    for data in (
        json.dumps(newer),
        b"\x00 not json",
        b"[]",  # JSON, but not an object
        json.dumps({"v": 1, "type": "progress", "job_id": "x"}),  # fields missing
        json.dumps({"v": 1, "type": "self-destruct", "job_id": "x"}),
    ):
        await cluster.redis.publish(keys.events, data)
    # Two "workers" whose heartbeats this version cannot read: an old one and a broken one.
    now = time.time()
    await cluster.redis.zadd(keys.workers, {"old#1": now, "broken#2": now})
    old = {"name": "old", "state": "idle", "capacity": 5}  # no version, and half the fields
    await cluster.redis.set(keys.worker("old#1"), json.dumps(old))
    await cluster.redis.set(keys.worker("broken#2"), b"{{{")

    async def all_skipped() -> bool:
        return len(skipped(caplog, "worker events")) >= 5

    await eventually(all_skipped, "the bad events to be skipped")
    newer_version, not_json, not_object, missing, unknown_type = skipped(caplog, "worker events")
    assert newer_version == "wire version 99 (this side speaks 1)"
    assert not_json == "not JSON"
    assert not_object == "not a JSON object but list"
    assert "Field required" in missing
    assert "'self-destruct'" in unknown_type

    # The events loop and the dispatcher go on: the next job arrives with every step.
    await assert_next_job_delivered_with_progress(cluster, "u1")
    status = await cluster.backend.status()
    assert status.ready is True
    assert [w.name for w in status.workers] == ["test-gpu0"]  # the unreadable ones left out
    reasons = skipped(caplog, "worker heartbeats")
    assert "wire version None (this side speaks 1)" in reasons
    assert "not JSON" in reasons


async def test_job_messages_of_another_version_or_shape_are_skipped_by_the_worker(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    keys = cluster.keys
    # A stream entry that is no taskiq message at all, and one whose data is not one.
    await cluster.redis.xadd(keys.stream, {b"surprise": b"1"})
    await cluster.redis.xadd(keys.stream, {b"data": b"\x00\x01 garbage"})
    # A job from a bot that speaks a newer wire version: its requester gets a plain failure.
    newer = JobMessage(
        request=request("v99"), submitted_at=time.time(), dispatched_at=time.time(), attempt=1
    )
    await cluster.kick("v99", {**newer.document(), "v": 99})
    # A readable job with bad input inside: refused with the reason, nothing rendered.
    bad = newer.document()
    source = base64.b64encode(b"an image, supposedly").decode()
    bad["request"] = {**bad["request"], "job_id": "bad-img", "images": [source], "strength": 1.5}
    await cluster.kick("bad-img", bad)

    broker = cluster.backend._broker
    assert broker is not None

    async def answered() -> bool:
        return await cluster.redis.exists(keys.result("v99"), keys.result("bad-img")) == 2

    await eventually(answered, "the unreadable jobs to be answered")
    outcome = parse_result((await broker.result_backend.get_result("v99")).return_value)
    assert isinstance(outcome, JobFailed)
    assert outcome.kind == FailureKind.ERROR
    assert outcome.user_message == UNREADABLE_JOB_MESSAGE
    refused = parse_result((await broker.result_backend.get_result("bad-img")).return_value)
    assert isinstance(refused, JobFailed)
    assert refused.kind == FailureKind.INVALID
    assert refused.user_message == "The variation strength must be above 0 and at most 1."

    # The worker is still taking jobs: the next one is delivered, with its progress.
    await assert_next_job_delivered_with_progress(cluster, "u2")
    assert cluster.worker.jobs_done == 1  # the bad messages rendered nothing
    assert b'imagine_worker_jobs_total{outcome="invalid"} 2.0' in cluster.worker.metrics.render()
    assert "wire version 99 (this side speaks 2)" in skipped(caplog, "the job stream")
    log = caplog.text
    assert "no data field (not a taskiq message)" in log
    assert "not a taskiq message this worker can run" in log  # the garbage data, skipped
    pending = await cluster.redis.xpending(keys.stream, keys.group)
    assert pending["pending"] == 0  # all acknowledged: none comes back


async def test_a_stored_result_of_another_version_fails_the_job_plainly_instead_of_hanging(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="engine.redis")

    def stored(return_value: Any) -> str:
        result = TaskiqResult(is_err=False, return_value=return_value, execution_time=0.1)
        return json.dumps(result.model_dump(mode="json"))

    newer = {"v": 3, "ok": True, "image": "somewhere else"}
    await cluster.redis.set(cluster.keys.result("r-newer"), stored(newer))
    await cluster.redis.set(cluster.keys.result("r-garbage"), b"\x00 not a result")
    for job_id in ("r-newer", "r-garbage"):
        # A bot restart re-submits a job whose result is already stored: it reads that result.
        handle = await cluster.backend.submit(request(job_id))
        with pytest.raises(JobFailed) as failed:
            await handle.result()
        assert failed.value.kind == FailureKind.ERROR
        assert failed.value.user_message == ERROR_MESSAGE
    assert "job r-newer: unreadable result (wire version 3 (this side speaks 2))" in caplog.text
    assert "job r-garbage: unreadable result" in caplog.text
    assert cluster.worker.jobs_done == 0
    await assert_next_job_delivered_with_progress(cluster, "u3")
