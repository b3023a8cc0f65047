"""Hardening (issue 10): what a hostile or broken Redis can hand each loop, one finding a test.

Real Redis, the real ``RedisBackend`` and a real in-process worker (``tests.engine.redis.harness``).
Each test plants what once stopped a loop, a job or a worker, then shows that the member gets a
plain answer (and so a refund) and that every loop is still alive afterwards.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from taskiq import TaskiqResult

from engine.contract import FailureKind, JobFailed
from engine.redis import wire
from engine.redis.backend import NO_ANSWER_MESSAGE, RedisBackend
from engine.redis.keys import TASK_NAME
from engine.redis.settings import RemoteSettings
from engine.redis.wire import Heartbeat, Marker, WorkerState
from engine.runner import ERROR_MESSAGE
from engine.settings import EngineSettings
from tests.engine.harness import eventually
from tests.engine.redis.harness import Cluster, remote_settings, request
from tests.redis_server import RedisServer


@pytest.fixture(autouse=True)
def every_skip_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "_skip_logged", {})


def stored(payload: Any) -> str:
    """A taskiq result as the result backend stores it, around ``payload``."""
    return json.dumps(payload)


def taskiq_result(return_value: Any) -> dict[str, Any]:
    result = TaskiqResult(is_err=False, return_value=return_value, execution_time=0.1)
    return result.model_dump(mode="json")


# A payload taskiq itself refuses to turn back into an exception (it raises SecurityError, which
# is no ValueError), and JSON nested deeper than Python's parser goes (RecursionError).
REFUSED_BY_TASKIQ = {
    "is_err": True,
    "error": {"exc_type": "system", "exc_message": ["rm -rf /"], "exc_module": "os"},
    "return_value": None,
    "execution_time": 0.1,
}
TOO_DEEP = "[" * 100_000 + "]" * 100_000


def loops_alive(backend: RedisBackend) -> bool:
    return bool(backend._tasks) and not any(task.done() for task in backend._tasks)


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_result_taskiq_refuses_or_cannot_parse_fails_the_job_plainly(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 1: such a result escaped the read, the job never answered and kept its slot."""
    caplog.set_level(logging.WARNING)
    bad = {
        "r-refused": stored(REFUSED_BY_TASKIQ),
        "r-deep": TOO_DEEP,
        "r-deep-inside": stored(taskiq_result(TOO_DEEP)),  # the envelope itself nests too deep
    }
    for job_id, value in bad.items():
        await cluster.redis.set(cluster.keys.result(job_id), value)
    for job_id in bad:
        # A bot restart re-submits a job whose result is already stored: it reads that result.
        handle = await cluster.backend.submit(request(job_id, user_id=len(job_id)))
        with pytest.raises(JobFailed) as failed:
            await handle.result()
        assert failed.value.kind == FailureKind.ERROR
        assert failed.value.user_message == ERROR_MESSAGE
        assert len(records(caplog, f"job {job_id}: unreadable result")) == 1
        # The bad result is not kept for ever: it expires like a delivered one.
        ttl = await cluster.redis.ttl(cluster.keys.result(job_id))
        assert 0 < ttl <= cluster.backend.settings.result_keep_s
    assert (await cluster.backend.status()).queue_length == 0  # no slot held
    handle = await cluster.backend.submit(request("after"))
    assert (await handle.result()).image.png.startswith(b"\x89PNG")
    assert loops_alive(cluster.backend)


async def test_a_bad_result_found_by_the_reconcile_loop_does_not_end_it(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 1: the loop that collects finished jobs died on it, without a log line."""
    caplog.set_level(logging.WARNING)
    keys = cluster.keys
    for n, job_id in enumerate(("late-refused", "late-deep")):
        # A job the previous bot process handed out: the new one follows it.
        marker = Marker(user_id=n, submitted_at=time.time(), dispatched_at=time.time(), attempt=1)
        await cluster.redis.set(keys.marker(job_id), marker.dumps())
    followed = [
        await cluster.backend.submit(request(job_id, user_id=n))
        for n, job_id in enumerate(("late-refused", "late-deep"))
    ]
    # Its result arrives later, with no "done" event: only the reconcile loop finds it.
    await cluster.redis.set(keys.result("late-refused"), stored(REFUSED_BY_TASKIQ))
    await cluster.redis.set(keys.result("late-deep"), TOO_DEEP)
    for handle in followed:
        with pytest.raises(JobFailed) as failed:
            await handle.result()
        assert failed.value.user_message == ERROR_MESSAGE
    assert loops_alive(cluster.backend)
    assert len(records(caplog, "job late-refused: unreadable result")) == 1
    assert len(records(caplog, "job late-deep: unreadable result")) == 1
    handle = await cluster.backend.submit(request("after"))
    assert (await handle.result()).image.png.startswith(b"\x89PNG")


async def test_events_that_are_no_object_or_too_deep_are_skipped_and_the_loop_goes_on(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3: a non-object JSON event (or one too deep to parse) ended the events loop."""
    caplog.set_level(logging.WARNING, logger="engine.redis.wire")
    bad = [b"null", b"5", b'"done"', b"true", TOO_DEEP.encode(), b"{" * 50_000]
    for data in bad:
        await cluster.redis.publish(cluster.keys.events, data)

    async def all_skipped() -> bool:
        return len(records(caplog, "skipped an unreadable message in worker events")) >= 3

    await eventually(all_skipped, "the bad events to be skipped")
    progress: list[int] = []
    handle = await cluster.backend.submit(request("u1"), lambda p: progress.append(p.step))
    result = await handle.result()
    assert progress == list(range(1, result.steps + 1))  # the events loop still runs
    assert loops_alive(cluster.backend)
    reasons = {r.getMessage() for r in records(caplog, "in worker events")}
    assert any("too deeply nested" in reason for reason in reasons)
    assert any("not a JSON object but NoneType" in reason for reason in reasons)


async def test_heartbeats_too_deep_to_parse_are_left_out_of_status(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engine.redis.wire")
    await cluster.redis.zadd(cluster.keys.workers, {"deep#1": time.time()})
    await cluster.redis.set(cluster.keys.worker("deep#1"), TOO_DEEP)
    status = await cluster.backend.status()
    assert [w.name for w in status.workers] == ["test-gpu0"]
    assert status.ready is True
    assert records(caplog, "in worker heartbeats: JSON too deeply nested")


async def test_a_stream_entry_taskiq_would_choke_on_is_acknowledged_and_skipped(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 2: an entry whose labels taskiq cannot act on stayed pending and came back to
    every worker in turn; one meant for another task sat there as well."""
    caplog.set_level(logging.WARNING)
    keys = cluster.keys
    message = {
        "task_id": "labels",
        "task_name": TASK_NAME,
        "labels": {"ack_type": "whenever"},  # taskiq raises ValueError after receiving it
        "labels_types": None,
        "args": [],
        "kwargs": {},
    }
    await cluster.redis.xadd(keys.stream, {b"data": json.dumps(message).encode()})
    other = {**message, "task_id": "other", "task_name": "someone.else", "labels": {}}
    await cluster.redis.xadd(keys.stream, {b"data": json.dumps(other).encode()})
    await cluster.redis.xadd(keys.stream, {b"data": b"\xff" * 1_000_000})  # huge, not JSON

    async def all_skipped() -> bool:
        return len(records(caplog, "skipped stream entry")) >= 3

    await eventually(all_skipped, "the bad entries to be skipped")
    handle = await cluster.backend.submit(request("u2"))
    assert (await handle.result()).image.png.startswith(b"\x89PNG")
    pending = await cluster.redis.xpending(keys.stream, keys.group)
    assert pending["pending"] == 0
    skipped = [r.getMessage() for r in records(caplog, "skipped stream entry")]
    assert len(skipped) == 3
    assert all(len(line) < 400 for line in skipped)  # a huge entry is not logged whole
    assert "Cannot parse message" not in caplog.text


async def test_acknowledged_entries_leave_the_stream(cluster: Cluster) -> None:
    """Finding 8: the job stream kept every job (prompts included) up to its length cap."""
    for n in range(3):
        handle = await cluster.backend.submit(request(f"kept{n}", user_id=n))
        await handle.result()
    await cluster.redis.xadd(cluster.keys.stream, {b"junk": b"1"})

    async def emptied() -> bool:
        return await cluster.redis.xlen(cluster.keys.stream) == 0

    await eventually(emptied, "acknowledged entries to be deleted")
    depth = await cluster.worker._presence.queue_depth()  # type: ignore[union-attr]
    assert depth == 0


async def test_the_bot_fails_a_job_that_never_answers_and_frees_its_slot(
    redis_server: RedisServer, tiny_settings: EngineSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 1: the bot had no deadline of its own, so a lost answer held a slot for good."""
    caplog.set_level(logging.WARNING)
    remote: RemoteSettings = remote_settings(redis_server, answer_margin_s=0.5)
    backend = RedisBackend(remote, tiny_settings)
    await backend.start()
    try:
        redis = backend._redis
        assert redis is not None

        async def ghost_beats() -> None:
            """A worker that announces a free slot but never takes a job (hung, or a lying
            Redis)."""
            now = time.time()
            ghost = Heartbeat(
                name="ghost", consumer="ghost#1", host="h", pid=1, state=WorkerState.IDLE,
                capacity=1, gpu="none", memory_gb=0, memory_mode="resident", model="m",
                fast_available=True, jobs_done=0, started_at=now, last_seen=now,
            )  # fmt: skip
            await redis.set(backend.keys.worker("ghost#1"), ghost.dumps())
            await redis.zadd(backend.keys.workers, {"ghost#1": now})

        await ghost_beats()
        handle = await backend.submit(request("lost", deadline_s=0.5))
        with pytest.raises(JobFailed) as failed:
            await handle.result()
        assert failed.value.kind == FailureKind.TIMEOUT
        assert failed.value.user_message == NO_ANSWER_MESSAGE
        assert "job lost: no answer" in caplog.text
        status = await backend.status()
        assert status.queue_length == 0 and status.running == ()
        # A worker that takes the entry later skips it, and would stop it if it were running.
        assert await redis.exists(backend.keys.done("lost"), backend.keys.cancel("lost")) == 2
        assert not await redis.exists(backend.keys.marker("lost"))
        # The slot it held is free: the next job is handed out at once.
        await ghost_beats()
        await backend.submit(request("next", user_id=2))

        async def handed_out() -> bool:
            return bool(await redis.exists(backend.keys.marker("next")))

        await eventually(handed_out, "the next job to be handed to the worker")
        assert loops_alive(backend)
    finally:
        await backend.close()
