"""Acceptance test of issue 10: a hostile Redis does not stop the service.

While members' jobs run, a writer puts more than fifty malformed items wherever the bot and the
worker read: job stream entries, stored results, events and heartbeats (random bytes, JSON of
the wrong shape, payloads taskiq refuses, values of megabytes, nesting too deep to parse). Every
legitimate job is delivered exactly once, each malformed item is logged exactly once (not
silently dropped, not once per retry), and no worker or loop dies.

Real Redis (``tests.redis_server``), the real ``RedisBackend`` and a real ``Worker`` with the tiny
model (``tests.engine.redis.harness``). Every skip is one log record: the first of each reason a
warning, repeats debug records (``engine.redis.wire.log_skipped``), so the test counts both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import pytest
from taskiq import TaskiqResult

from engine.contract import FailureKind, JobFailed, JobResult, Progress
from engine.redis import wire
from engine.redis.keys import TASK_NAME
from engine.redis.wire import JobMessage
from engine.runner import ERROR_MESSAGE
from tests.engine.harness import eventually
from tests.engine.redis.harness import Cluster, request

pytestmark = pytest.mark.slow

rng = random.Random(10)


def noise(size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def megabytes(n: float) -> bytes:
    return rng.randbytes(int(n * 1024 * 1024))


def taskiq_message(task_id: str, task_name: str = TASK_NAME, **fields: Any) -> bytes:
    message = {
        "task_id": task_id,
        "task_name": task_name,
        "labels": {},
        "labels_types": None,
        "args": [],
        "kwargs": {},
        **fields,
    }
    return json.dumps(message).encode()


def stored_result(return_value: Any, **fields: Any) -> str:
    result = TaskiqResult(is_err=False, return_value=return_value, execution_time=0.1)
    return json.dumps({**result.model_dump(mode="json"), **fields})


DEEP = "[" * 60_000 + "]" * 60_000
LEGIT = [(f"legit-{user}-{n}", user) for n in range(2) for user in (1, 2, 3)]


class Hostile:
    """Writes the malformed items and remembers how each one must show up in the log."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.entry_ids: list[str] = []  # skipped by the stream reader, by entry id
        self.bad_jobs = 0  # taskiq messages of our task whose job this version cannot read
        self.decoys: dict[str, bytes | str] = {}  # stored results the bot will read
        self.events = 0
        self.heartbeats = 0

    async def entry(self, fields: dict[bytes, bytes]) -> None:
        entry_id = await self.cluster.redis.xadd(self.cluster.keys.stream, fields)
        self.entry_ids.append(entry_id.decode())

    async def job(self, task_id: str, args: list[Any]) -> None:
        data = taskiq_message(task_id, args=args)
        await self.cluster.redis.xadd(self.cluster.keys.stream, {b"data": data})
        self.bad_jobs += 1

    async def event(self, data: bytes | str) -> None:
        await self.cluster.redis.publish(self.cluster.keys.events, data)
        self.events += 1

    async def heartbeat(self, consumer: str, value: bytes | str) -> None:
        keys = self.cluster.keys
        await self.cluster.redis.set(keys.worker(consumer), value)
        await self.cluster.redis.zadd(keys.workers, {consumer: time.time() + 60})
        self.heartbeats += 1

    async def write_stream_and_events(self) -> None:
        """Interleaved, with pauses, so they arrive while the legitimate jobs run."""
        now = time.time()
        good = JobMessage(request=request("x"), submitted_at=now, dispatched_at=now, attempt=1)
        good_json = good.document()
        stream_items = [
            lambda: self.entry({b"surprise": b"1"}),
            lambda: self.entry({noise(8): noise(32)}),
            lambda: self.entry({b"Data": b"{}"}),
            lambda: self.entry({b"data": noise(64)}),
            lambda: self.entry({b"data": megabytes(1)}),
            lambda: self.entry({b"data": b"[]"}),
            lambda: self.entry({b"data": b'"just a string"'}),
            lambda: self.entry({b"data": b'{"task_id": 5}'}),
            lambda: self.entry({b"data": DEEP.encode()}),
            lambda: self.entry({b"data": taskiq_message("elsewhere", "someone.else")}),
            lambda: self.entry({b"data": taskiq_message("labels", labels={"ack_type": "never"})}),
            lambda: self.job("bad-v99", [{**good_json, "v": 99}]),
            lambda: self.job("bad-shape", [{"v": 1, "request": "fox"}]),
            lambda: self.job("bad-args", [good_json, good_json]),
            lambda: self.job("bad-request", [{**good_json, "request": {"job_id": 1}}]),
            lambda: self.job("bad-huge", [{**good_json, "request": "x" * 1_000_000}]),
        ]
        event_items = [
            lambda: self.event(noise(40)),
            lambda: self.event(megabytes(1)),
            lambda: self.event(b"null"),
            lambda: self.event(b"[1, 2, 3]"),
            lambda: self.event(b"42"),
            lambda: self.event(b'"done"'),
            lambda: self.event(DEEP),
            lambda: self.event(json.dumps({"v": 2, "type": "done", "job_id": "legit-1-0"})),
            lambda: self.event(json.dumps({"v": 1, "type": "explode", "job_id": "legit-1-0"})),
            lambda: self.event(json.dumps({"v": 1, "type": "progress", "job_id": "legit-1-0"})),
            lambda: self.event(json.dumps({"v": 1, "type": "done"})),
            lambda: self.event(json.dumps({"v": 1, "type": "worker", "worker": "w"})),
            lambda: self.event(json.dumps({"v": 1, "type": "worker", "state": "on fire"})),
            lambda: self.event(
                json.dumps(
                    {
                        "v": 1,
                        "type": "progress",
                        "job_id": "legit-2-0",
                        "worker": "w",
                        "step": -1,
                        "total": 8,
                        "elapsed_s": 0,
                        "sec_per_step": 0,
                    }
                )
            ),
            lambda: self.event(
                json.dumps({"v": 1, "type": "started", "job_id": ["legit-1-0"], "worker": "w"})
            ),
            lambda: self.event(json.dumps({"v": 1, "type": "x" * 500_000})),
            lambda: self.event(b"{" * 30_000),
            lambda: self.event("\ud800".encode("utf-8", "surrogatepass")),
            lambda: self.event(json.dumps({"v": None})),
            lambda: self.event(json.dumps({"type": "done", "job_id": "legit-3-0", "worker": "w"})),
        ]
        heartbeat_items = [
            lambda: self.heartbeat("evil#1", noise(30)),
            lambda: self.heartbeat("evil#2", json.dumps({"v": 1, "name": "evil", "capacity": 99})),
            lambda: self.heartbeat("evil#3", DEEP),
            lambda: self.heartbeat("evil#4", b"[]"),
        ]
        items = stream_items + event_items + heartbeat_items
        rng.shuffle(items)
        for write in items:
            await write()
            await asyncio.sleep(0.01)

    async def write_results(self) -> list[str]:
        """Stored results of jobs the bot follows (as after a bot restart), each unreadable."""
        refused = {"exc_type": "system", "exc_message": ["rm -rf /"], "exc_module": "os"}
        self.decoys = {
            "decoy-noise": noise(50),
            "decoy-huge": megabytes(2),
            "decoy-null": "null",
            "decoy-list": "[]",
            "decoy-deep": DEEP,
            "decoy-refused": json.dumps(
                {"is_err": True, "error": refused, "return_value": None, "execution_time": 1}
            ),
            "decoy-error": json.dumps(
                {
                    "is_err": True,
                    "return_value": None,
                    "execution_time": 1,
                    "error": {
                        "exc_type": "ValueError",
                        "exc_message": ["boom"],
                        "exc_module": "builtins",
                    },
                }
            ),
            "decoy-v2": stored_result({"v": 2, "ok": True, "image": "elsewhere"}),
            "decoy-empty": stored_result({"v": 1, "ok": True}),
            "decoy-shape": stored_result({"v": 1, "ok": True, "result": {"png": "zz"}}),
            "decoy-kind": stored_result({"v": 1, "ok": False, "error": {"kind": "meltdown"}}),
            "decoy-deep-value": stored_result(DEEP),
            "decoy-huge-value": stored_result("x" * 2_000_000),
        }
        for job_id, value in self.decoys.items():
            await self.cluster.redis.set(self.cluster.keys.result(job_id), value)
        return list(self.decoys)

    @property
    def total(self) -> int:
        items = len(self.entry_ids) + self.bad_jobs + len(self.decoys)
        return items + self.events + self.heartbeats


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


async def test_a_hostile_redis_neither_loses_nor_doubles_a_job_nor_stops_a_loop(
    cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
    slow_steps: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "_skip_logged", {})
    caplog.set_level(logging.DEBUG, logger="engine")
    slow_steps(0.02)
    backend, worker = cluster.backend, cluster.worker
    hostile = Hostile(cluster)

    # Members' jobs go in first; the malformed items arrive while they run.
    progress: dict[str, list[Progress]] = {job_id: [] for job_id, _ in LEGIT}
    handles = [
        await backend.submit(request(job_id, user_id=user), progress[job_id].append)
        for job_id, user in LEGIT
    ]
    writer = asyncio.create_task(hostile.write_stream_and_events())
    decoy_ids = await hostile.write_results()
    decoys = [
        await backend.submit(request(job_id, user_id=100 + n)) for n, job_id in enumerate(decoy_ids)
    ]
    await writer
    assert hostile.total >= 50

    # Every legitimate job: one image, with every step of progress, rendered once.
    results: list[JobResult] = await asyncio.wait_for(
        asyncio.gather(*(h.result() for h in handles)), 60
    )
    assert [r.job_id for r in results] == [job_id for job_id, _ in LEGIT]
    for result in results:
        assert result.image.png.startswith(b"\x89PNG")
        assert [p.step for p in progress[result.job_id]] == list(range(1, result.steps + 1))
        attempts = await cluster.redis.get(cluster.keys.attempts(result.job_id))
        assert attempts == b"1"  # delivered to a worker once
    # Every decoy: a plain failure (its member is refunded), none left waiting.
    for handle in decoys:
        with pytest.raises(JobFailed) as failed:
            await asyncio.wait_for(handle.result(), 30)
        assert failed.value.kind == FailureKind.ERROR
        assert failed.value.user_message == ERROR_MESSAGE

    # The worker answered the readable-but-wrong jobs and skipped the rest.
    async def stream_drained() -> bool:
        pending = await cluster.redis.xpending(cluster.keys.stream, cluster.keys.group)
        return pending["pending"] == 0 and await cluster.redis.xlen(cluster.keys.stream) == 0

    await eventually(stream_drained, "every entry to be acknowledged and deleted", within=20)
    metrics = worker.metrics.render().decode()
    assert f'imagine_worker_jobs_total{{outcome="done"}} {len(LEGIT)}.0' in metrics
    assert f'imagine_worker_jobs_total{{outcome="invalid"}} {hostile.bad_jobs}.0' in metrics
    assert worker.jobs_done == len(LEGIT)

    async def every_event_seen() -> bool:
        lines = [m for m in messages(caplog) if "in worker events" in m]
        return len(lines) >= hostile.events

    await eventually(every_event_seen, "every bad event to be logged")
    await backend.status()  # one more read of the heartbeats: still logged only once

    # Each malformed item logged exactly once.
    log = messages(caplog)
    for entry_id in hostile.entry_ids:
        assert sum(f"skipped stream entry {entry_id}:" in m for m in log) == 1, entry_id
    assert sum("unreadable message in the job stream" in m for m in log) == hostile.bad_jobs
    for job_id in hostile.decoys:
        assert sum(m.startswith(f"job {job_id}: ") for m in log) == 1, job_id
    assert sum("unreadable message in worker events" in m for m in log) == hostile.events
    assert sum("unreadable message in worker heartbeats" in m for m in log) == hostile.heartbeats
    assert all(len(m) < 2000 for m in log)  # megabyte values are never logged whole

    # No loop and no worker died: everything still runs, and the next job is delivered.
    assert not any(task.done() for task in backend._tasks)
    assert worker.state.ready
    status = await backend.status()
    assert status.ready and [w.name for w in status.workers] == ["test-gpu0"]
    after = await backend.submit(request("after-the-storm", user_id=9))
    assert (await asyncio.wait_for(after.result(), 30)).image.png.startswith(b"\x89PNG")
    assert worker.jobs_done == len(LEGIT) + 1
