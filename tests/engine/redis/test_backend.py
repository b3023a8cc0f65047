"""RedisBackend against a real Redis-compatible server and a real worker (tiny model, in-process).

The worker here is ``engine.redis.worker.Worker``, the same class ``python -m engine.worker`` runs,
sharing this process's loaded tiny pipeline; the scenarios that need several worker processes,
``kill -9`` and Redis restarts live in ``tests/engine/test_worker_cluster.py``.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import pytest
from PIL import Image

from engine.contract import FailureKind, ImageBackend, JobFailed, JobRequest, Mode, Progress
from engine.presets import public_model_name
from engine.redis.backend import UNAVAILABLE_MESSAGE, RedisBackend
from engine.redis.keys import RedisKeys
from engine.redis.settings import RemoteSettings, redact_url
from engine.redis.wire import parse_result
from engine.settings import EngineSettings
from tests.engine.harness import eventually
from tests.engine.redis.harness import Cluster, png_parameters, request
from tests.redis_server import free_port


async def test_backend_implements_the_image_backend_protocol(remote: RemoteSettings) -> None:
    assert isinstance(RedisBackend(remote, EngineSettings()), ImageBackend)


async def test_job_comes_back_as_png_with_parameters_and_per_step_progress(
    cluster: Cluster,
) -> None:
    progress: list[Progress] = []
    handle = await cluster.backend.submit(request("1001", aspect="4:3"), progress.append)
    result = await asyncio.wait_for(handle.result(), 30)

    image = Image.open(io.BytesIO(result.image.png))
    assert image.format == "PNG"
    assert image.size == (result.image.width, result.image.height) == (64, 48)
    params = png_parameters(result.image.png)
    assert params["seed"] == 7
    assert params["prompt"] == "a red fox in the snow"
    assert result.worker == "test-gpu0"
    assert result.mode == Mode.FAST and result.requested_mode == Mode.FAST
    # One progress report per denoising step, in order, ending at the total.
    steps = [p.step for p in progress]
    assert steps == list(range(1, result.steps + 1))
    assert {p.total for p in progress} == {result.steps}
    assert all(p.job_id == "1001" for p in progress)


async def test_users_take_turns_across_the_remote_queue(cluster: Cluster, slow_steps: Any) -> None:
    slow_steps(0.03)
    backend = cluster.backend
    finished: list[str] = []

    async def run(job: JobRequest) -> None:
        handle = await backend.submit(job)
        await handle.result()
        finished.append(job.job_id)

    first = asyncio.create_task(run(request("a1", user_id=1)))

    async def a1_running() -> bool:
        return await backend.position("a1") == 0

    await eventually(a1_running, "a1 to start")
    rest = [request("a2", 1), request("a3", 1), request("a4", 1), request("b1", 2)]
    handles = [await backend.submit(job) for job in rest]
    # Alice's queued images do not hold back Bob's first one.
    assert [await backend.position(h.job_id) for h in handles] == [2, 4, 5, 3]
    tasks = [first, *(asyncio.create_task(run(job)) for job in rest)]
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert finished == ["a1", "a2", "b1", "a3", "a4"]


async def test_resubmitting_a_job_after_a_bot_restart_returns_the_stored_result(
    cluster: Cluster, remote: RemoteSettings, tiny_settings: EngineSettings
) -> None:
    backend = cluster.backend
    # A double click: the same job twice at the same instant, one run.
    first, again = await asyncio.gather(
        backend.submit(request("2001")), backend.submit(request("2001"))
    )
    result = await first.result()
    assert (await again.result()).image.png == result.image.png
    assert cluster.worker.jobs_done == 1
    # Sent to the workers once, not once per click (acknowledged entries are deleted, so count
    # what was ever added).
    stream = await cluster.redis.xinfo_stream(cluster.keys.stream)
    assert stream["entries-added"] == 1

    # The bot restarts before it recorded the image: the new process re-submits the same
    # interaction id and receives the stored image; the GPU does not render it again.
    await backend.close()
    restarted = RedisBackend(remote, tiny_settings)
    await restarted.start()
    try:
        handle = await restarted.submit(request("2001"))
        replay = await asyncio.wait_for(handle.result(), 10)
    finally:
        await restarted.close()
    assert replay.image.png == result.image.png
    assert cluster.worker.jobs_done == 1


async def test_a_redelivered_message_is_skipped_not_rendered_twice(cluster: Cluster) -> None:
    handle = await cluster.backend.submit(request("3001"))
    result = await handle.result()
    done_before = cluster.worker.jobs_done
    # What at-least-once delivery can do: the same job arrives at a worker a second time.
    await cluster.kick_job(request("3001"))

    async def skipped() -> bool:
        return b'outcome="duplicate"} 1.0' in cluster.worker.metrics.render()

    await eventually(skipped, "the duplicate to be skipped")
    assert cluster.worker.jobs_done == done_before
    broker = cluster.backend._broker
    assert broker is not None
    stored = await broker.result_backend.get_result("3001")
    assert parse_result(stored.return_value) == result
    pending = await cluster.redis.xpending(cluster.keys.stream, cluster.keys.group)
    assert pending["pending"] == 0  # acknowledged, so it is not delivered a third time


async def test_a_redis_that_lost_its_data_still_gets_every_accepted_job_done_once(
    cluster: Cluster, slow_steps: Any
) -> None:
    slow_steps(0.05)
    first = await cluster.backend.submit(request("12001", user_id=1))
    second = await cluster.backend.submit(request("12002", user_id=2))

    async def rendering() -> bool:
        return cluster.worker.current_job == "12001"

    await eventually(rendering, "the first job to start")
    # A Redis restarted without persistence: stream, group, claims and markers are gone.
    await cluster.redis.flushall()
    results = await asyncio.wait_for(asyncio.gather(first.result(), second.result()), 30)
    assert [r.job_id for r in results] == ["12001", "12002"]
    assert cluster.worker.jobs_done == 2  # nothing rendered twice


async def test_an_entry_older_than_any_result_is_dropped_not_rendered(cluster: Cluster) -> None:
    # What a consumer group rebuilt by hand would replay: a job handed out two days ago.
    await cluster.kick_job(request("3501"), dispatched_at=time.time() - 2 * 86400)

    async def dropped() -> bool:
        return b'outcome="stale"} 1.0' in cluster.worker.metrics.render()

    await eventually(dropped, "the stale entry to be dropped")
    assert cluster.worker.jobs_done == 0
    assert not await cluster.redis.exists(cluster.keys.result("3501"))
    pending = await cluster.redis.xpending(cluster.keys.stream, cluster.keys.group)
    assert pending["pending"] == 0


async def test_cancelling_a_running_job_stops_the_gpu_within_a_step(
    cluster: Cluster, slow_steps: Any
) -> None:
    slow_steps(0.2)
    progress: list[Progress] = []
    handle = await cluster.backend.submit(request("4001", mode=Mode.STANDARD), progress.append)

    async def started() -> bool:
        return bool(progress)

    await eventually(started, "the first step")
    assert await cluster.backend.cancel("4001") is True
    with pytest.raises(JobFailed) as failed:
        await asyncio.wait_for(handle.result(), 10)
    assert failed.value.kind == FailureKind.CANCELLED
    assert len(progress) < progress[0].total  # the remaining steps never ran
    # The worker is free again: the next job runs.
    slow_steps(0.0)
    assert (await (await cluster.backend.submit(request("4002"))).result()).image.png


async def test_cancelling_a_waiting_job_means_it_never_runs(
    cluster: Cluster, slow_steps: Any
) -> None:
    slow_steps(0.05)
    running = await cluster.backend.submit(request("5001", user_id=1))
    waiting = await cluster.backend.submit(request("5002", user_id=2))
    assert await cluster.backend.position("5002") == 2
    assert await cluster.backend.cancel("5002") is True
    with pytest.raises(JobFailed) as failed:
        await waiting.result()
    assert failed.value.kind == FailureKind.CANCELLED
    assert failed.value.user_message == "The generation was cancelled."
    await running.result()
    assert await cluster.backend.position("5002") is None
    assert not await cluster.redis.exists(cluster.keys.marker("5002"))
    assert cluster.worker.jobs_done == 1


async def test_the_deadline_is_enforced_inside_the_worker(
    cluster: Cluster, slow_steps: Any
) -> None:
    slow_steps(0.1)
    handle = await cluster.backend.submit(request("6001", mode=Mode.STANDARD, deadline_s=1.0))
    with pytest.raises(JobFailed) as failed:
        await asyncio.wait_for(handle.result(), 10)
    assert failed.value.kind == FailureKind.TIMEOUT
    assert failed.value.user_message == "Generation took longer than 1 s."
    assert cluster.worker.current_job is None
    metrics = cluster.worker.metrics.render()
    assert b'imagine_worker_jobs_total{outcome="timeout"} 1.0' in metrics


async def test_status_lists_the_worker_and_what_it_runs(cluster: Cluster, slow_steps: Any) -> None:
    slow_steps(0.1)
    handle = await cluster.backend.submit(request("7001", mode=Mode.STANDARD))

    async def busy() -> bool:
        status = await cluster.backend.status()
        return status.running == ("7001",) and status.workers[0].current_job == "7001"

    await eventually(busy, "the worker to report its job")
    status = await cluster.backend.status()
    assert status.backend == "redis"
    assert status.ready is True
    (info,) = status.workers
    assert info.name == "test-gpu0"
    assert info.gpu == "cpu"
    assert info.memory_mode == "resident"
    # The model by name (what the worker's generator reports), never the worker's local path.
    assert info.model == public_model_name(cluster.worker.engine.model)
    assert status.fast_available is True
    assert await cluster.backend.cancel("7001")
    with pytest.raises(JobFailed):
        await handle.result()


async def test_the_engine_ceiling_sits_above_a_server_limit_of_ten_and_binds_at_25(
    cluster: Cluster, slow_steps: Any
) -> None:
    # Default settings, as in-process: a member of a server with /limits max_queued:10 is never
    # refused by the engine first; its safety ceiling binds only at 25, with the same message.
    slow_steps(0.05)
    assert cluster.backend.engine_settings.queued_ceiling_per_user == 25
    handles = [await cluster.backend.submit(request(f"8{i:03}", user_id=9)) for i in range(10)]
    assert await cluster.backend.position("8009") == 10
    handles += [await cluster.backend.submit(request(f"8{i:03}", user_id=9)) for i in range(10, 25)]
    with pytest.raises(JobFailed) as refused:
        await cluster.backend.submit(request("8999", user_id=9))
    assert refused.value.kind == FailureKind.QUEUE_FULL
    assert refused.value.user_message == (
        "You already have 25 images waiting; wait for one to finish."
    )
    assert (await cluster.backend.status()).queued_ceiling_per_user == 25
    for handle in handles:
        await cluster.backend.cancel(handle.job_id)


async def test_a_job_that_keeps_killing_workers_is_failed_not_retried_forever(
    cluster: Cluster,
) -> None:
    # Three deliveries already happened (each ended with a dead worker).
    await cluster.redis.set(cluster.keys.attempts("9001"), 3)
    handle = await cluster.backend.submit(request("9001"))
    with pytest.raises(JobFailed) as failed:
        await asyncio.wait_for(handle.result(), 10)
    assert failed.value.kind == FailureKind.ERROR
    assert "stopped its GPU worker 3 times" in failed.value.user_message


async def test_worker_metrics_count_outcomes_steps_images_and_latency(cluster: Cluster) -> None:
    for job_id in ("m1", "m2"):
        await (await cluster.backend.submit(request(job_id))).result()
    text = cluster.worker.metrics.render().decode()
    assert 'imagine_worker_jobs_total{outcome="done"} 2.0' in text
    assert "imagine_worker_image_seconds_count 2.0" in text
    assert "imagine_worker_ack_latency_seconds_count 2.0" in text
    steps = next(line for line in text.splitlines() if line.startswith("imagine_worker_step_sec"))
    assert steps
    assert "imagine_worker_step_seconds_count 16.0" in text  # 2 images x 8 fast steps
    assert "imagine_worker_queue_depth" in text


async def test_redis_down_refuses_new_images_with_a_clear_message(
    tiny_settings: EngineSettings,
) -> None:
    nothing_listens = RemoteSettings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", heartbeat_s=0.2, redeliver_after_s=1
    )
    backend = RedisBackend(nothing_listens, tiny_settings)
    await backend.start()  # not fatal: the bot comes up and answers
    try:
        with pytest.raises(JobFailed) as refused:
            await backend.submit(request("10001"))
        assert refused.value.kind == FailureKind.UNAVAILABLE
        assert refused.value.user_message == UNAVAILABLE_MESSAGE
        status = await backend.status()
        assert status.ready is False
        assert status.note == "Redis is unreachable: new images are refused until it is back."
        assert await backend.position("10001") is None
    finally:
        await backend.close()


async def test_no_worker_online_refuses_new_images(
    remote: RemoteSettings, tiny_settings: EngineSettings
) -> None:
    backend = RedisBackend(remote, tiny_settings)
    await backend.start()
    try:
        with pytest.raises(JobFailed) as refused:
            await backend.submit(request("11001"))
        assert refused.value.kind == FailureKind.UNAVAILABLE
        assert refused.value.user_message == UNAVAILABLE_MESSAGE
        assert (await backend.status()).note == "No image worker is online."
    finally:
        await backend.close()


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_REDIS_URL", "redis://:s3cret@redis.internal:6380/2")
    monkeypatch.setenv("IMAGINE_REDELIVER_AFTER_S", "45")
    monkeypatch.setenv("IMAGINE_HEARTBEAT_S", "3")
    settings = RemoteSettings()
    assert settings.redis_url == "redis://:s3cret@redis.internal:6380/2"
    assert settings.redeliver_after_s == 45
    assert settings.claim_ttl_s < settings.redeliver_after_s
    backend = RedisBackend(RemoteSettings(), EngineSettings())  # read from the environment
    assert backend.settings.heartbeat_s == 3


def test_redelivery_must_outlast_several_heartbeats() -> None:
    with pytest.raises(ValueError, match="at least 4x"):
        RemoteSettings(redis_url="redis://localhost", heartbeat_s=5, redeliver_after_s=10)


def test_the_redis_password_never_reaches_the_logs() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:s3cret@host/1") == "rediss://user:***@host/1"
    assert redact_url("redis://host:6379") == "redis://host:6379"


def test_keys_are_namespaced_by_prefix() -> None:
    keys = RedisKeys("bot2")
    assert keys.stream == "bot2:jobs"
    assert keys.result("42") == "bot2:result:42"
    assert keys.claim("42") == "bot2:claim:42"
