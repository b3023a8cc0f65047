"""Generation rows: lifecycle, restart recovery, history pages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from db import (
    Database,
    Generation,
    GenerationNotFound,
    GenerationStatus,
    JobResultFields,
    NewGeneration,
    complete_generation,
    count_active,
    fail_generation,
    forget_expired_tokens,
    get_generation,
    mark_running,
    record_result,
    reserve_generation,
    set_message,
    unfinished_generations,
    user_history,
)

NOON = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC)
GUILD = 111_111_111_111_111_111
USER = 333_333_333_333_333_333

MakeJob = Callable[..., NewGeneration]


async def reserve(
    db: Database, job: NewGeneration, now: dt.datetime = NOON, quota: int | None = None
) -> str:
    gen, created = await reserve_generation(db, job, daily_quota=quota, max_queued=None, now=now)
    assert created
    return gen.job_key


async def complete(db: Database, job_key: str, **overrides: object) -> Generation:
    fields: dict[str, object] = {
        "seed": 42,
        "width": 1664,
        "height": 928,
        "steps": 30,
        "true_cfg_scale": 4.0,
        "mode_used": "standard",
        "model": "Qwen/Qwen-Image",
        "queued_s": 1.5,
        "run_s": 9.25,
    }
    fields.update(overrides)
    return await complete_generation(db, job_key, **fields)  # type: ignore[arg-type]


async def test_reserved_row_keeps_every_parameter(database: Database, new_job: MakeJob) -> None:
    job = new_job(
        job_key="1300000000000000001",
        prompt="a {weird} prompt with braces",
        negative_prompt="blurry",
        style="anime",
        aspect="16:9",
        mode="quality",
        seed=2**32 - 1,
        kind="variation",
        parent_key="1200000000000000000",
    )
    gen, _ = await reserve_generation(database, job, daily_quota=5, max_queued=2, now=NOON)

    row = await get_generation(database, job.job_key)
    assert row is not None
    assert (row.prompt, row.negative_prompt, row.style, row.aspect, row.mode, row.seed) == (
        "a {weird} prompt with braces",
        "blurry",
        "anime",
        "16:9",
        "quality",
        2**32 - 1,
    )
    assert (row.kind, row.parent_key, row.guild_id, row.user_id) == (
        "variation",
        "1200000000000000000",
        job.guild_id,
        USER,
    )
    assert row.status == GenerationStatus.QUEUED and row.charged
    assert row.created_at == NOON and row.created_at.tzinfo == dt.UTC
    assert row.quota_day == dt.date(2025, 3, 14)
    assert row.started_at is None and row.finished_at is None
    assert gen.id == row.id


@pytest.mark.parametrize("kind", ["", "k" * 17])
async def test_a_kind_the_row_cannot_hold_is_refused(
    database: Database, new_job: MakeJob, kind: str
) -> None:
    """Which kinds exist is the bot's (``bot.imagine.kinds``); the row holds any name of at
    most 16 characters and refuses the rest before anything is written."""
    with pytest.raises(ValueError, match="kind"):
        await reserve_generation(database, new_job(kind=kind), daily_quota=None, max_queued=None)


async def test_full_lifecycle(database: Database, new_job: MakeJob) -> None:
    key = await reserve(database, new_job(), quota=3)
    assert await set_message(database, key, message_id=777, interaction_token="secret-token")

    started = NOON + dt.timedelta(seconds=2)
    assert await mark_running(database, key, now=started)
    assert not await mark_running(database, key, now=started + dt.timedelta(seconds=5))
    assert await count_active(database, guild_id=GUILD, user_id=USER) == 1

    finished = NOON + dt.timedelta(seconds=12)
    done = await complete(database, key, message_id=778, worker="gpu-1", note=None, now=finished)
    assert done.status == GenerationStatus.DONE
    assert (done.seed_used, done.width, done.height, done.steps) == (42, 1664, 928, 30)
    assert (done.true_cfg_scale, done.mode_used, done.model) == (4.0, "standard", "Qwen/Qwen-Image")
    assert (done.queued_s, done.run_s, done.worker) == (1.5, 9.25, "gpu-1")
    assert done.message_id == 778 and done.interaction_token == "secret-token"
    assert done.started_at == started and done.finished_at == finished

    stored = await get_generation(database, key)
    assert stored is not None and stored.status == GenerationStatus.DONE
    assert stored.finished_at == finished and stored.charged
    assert await count_active(database, guild_id=GUILD, user_id=USER) == 0


async def test_completing_twice_changes_nothing(database: Database, new_job: MakeJob) -> None:
    key = await reserve(database, new_job())
    first = await complete(database, key, seed=1, now=NOON + dt.timedelta(seconds=5))
    second = await complete(database, key, seed=2, now=NOON + dt.timedelta(seconds=50))
    assert second.seed_used == first.seed_used == 1
    assert second.finished_at == first.finished_at


async def test_late_result_for_a_cancelled_job_is_not_recorded(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job())
    await fail_generation(database, key, status="cancelled", error="cancelled by the user")
    row = await complete(database, key)
    assert row.status == GenerationStatus.CANCELLED and row.seed_used is None


async def test_complete_without_running_fills_started_at(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job())
    row = await complete(database, key, run_s=3.0, now=NOON + dt.timedelta(seconds=10))
    assert row.started_at == NOON + dt.timedelta(seconds=7)


RESULT = JobResultFields(
    seed=7,
    width=1328,
    height=1328,
    steps=8,
    true_cfg_scale=1.0,
    mode_used="fast",
    model="Qwen/Qwen-Image",
    queued_s=0.5,
    run_s=2.75,
    worker="gpu-2",
    note="fast mode",
)


async def test_result_is_written_before_the_upload_and_kept_after(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job(), quota=3)
    await set_message(database, key, message_id=500)
    recorded_at = NOON + dt.timedelta(seconds=4)
    row = await record_result(database, key, RESULT, now=recorded_at)
    assert row.status == GenerationStatus.DELIVERING and not row.finished
    assert (row.seed_used, row.width, row.height, row.steps, row.mode_used) == (
        7,
        1328,
        1328,
        8,
        "fast",
    )
    assert (row.model, row.worker, row.note, row.run_s) == (
        "Qwen/Qwen-Image",
        "gpu-2",
        "fast mode",
        2.75,
    )
    assert row.result_at == recorded_at
    # Still unfinished: it counts against the queue cap and a restart must look at it.
    assert await count_active(database, guild_id=GUILD, user_id=USER) == 1
    assert [r.job_key for r in await unfinished_generations(database)] == [key]

    done = await complete_generation(
        database, key, message_id=501, now=recorded_at + dt.timedelta(seconds=1)
    )
    assert done.status == GenerationStatus.DONE and done.message_id == 501 and done.charged
    assert (done.seed_used, done.width, done.model, done.worker) == (
        7,
        1328,
        "Qwen/Qwen-Image",
        "gpu-2",
    )
    assert done.result_at == recorded_at
    assert await unfinished_generations(database) == []


async def test_an_upload_that_failed_after_the_result_was_written_is_refunded(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job(), quota=3)
    await record_result(database, key, RESULT)
    row = await fail_generation(database, key, status="failed", error="upload refused")
    assert row.status == GenerationStatus.FAILED and not row.charged
    # A result arriving for an ended job is not written over it.
    again = await record_result(database, key, RESULT)
    assert again.status == GenerationStatus.FAILED


async def test_complete_needs_every_result_field_or_none(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job())
    with pytest.raises(ValueError, match="every result field"):
        await complete_generation(database, key, seed=1)


async def test_unknown_job_keys(database: Database) -> None:
    assert await get_generation(database, "nope") is None
    assert not await mark_running(database, "nope")
    assert not await set_message(database, "nope", message_id=1)
    with pytest.raises(GenerationNotFound):
        await complete(database, "nope")
    with pytest.raises(GenerationNotFound):
        await record_result(database, "nope", RESULT)
    with pytest.raises(GenerationNotFound):
        await fail_generation(database, "nope", status="failed", error="x")


async def test_fail_status_must_be_failed_or_cancelled(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job())
    with pytest.raises(ValueError):
        await fail_generation(database, key, status="done", error="x")
    long = await fail_generation(database, key, status="failed", error="e" * 5000)
    assert long.error is not None and len(long.error) == 2000


async def test_set_message_keeps_token_and_channel_unless_given(
    database: Database, new_job: MakeJob
) -> None:
    key = await reserve(database, new_job(channel_id=5))
    await set_message(database, key, message_id=None, interaction_token="tok")
    await set_message(database, key, message_id=9)
    row = await get_generation(database, key)
    assert row is not None
    assert (row.message_id, row.channel_id, row.interaction_token) == (9, 5, "tok")
    await set_message(database, key, message_id=10, channel_id=6)
    row = await get_generation(database, key)
    assert row is not None and (row.message_id, row.channel_id) == (10, 6)


async def test_unfinished_generations_oldest_first(database: Database, new_job: MakeJob) -> None:
    t = [NOON + dt.timedelta(seconds=i) for i in range(5)]
    newest = await reserve(database, new_job(), now=t[4])
    oldest = await reserve(database, new_job(guild_id=None), now=t[0])
    running = await reserve(database, new_job(user_id=9), now=t[1])
    done = await reserve(database, new_job(), now=t[2])
    failed = await reserve(database, new_job(), now=t[3])
    await mark_running(database, running)
    await complete(database, done)
    await fail_generation(database, failed, status="failed", error="oom")

    rows = await unfinished_generations(database)
    assert [r.job_key for r in rows] == [oldest, running, newest]
    assert [r.status for r in rows] == ["queued", "running", "queued"]


async def test_history_pages_newest_first(database: Database, new_job: MakeJob) -> None:
    keys = [
        await reserve(database, new_job(prompt=f"prompt {i}"), now=NOON + dt.timedelta(minutes=i))
        for i in range(12)
    ]
    # Noise: other users, other guilds and DMs never show up.
    await reserve(database, new_job(user_id=1))
    await reserve(database, new_job(guild_id=999))
    await reserve(database, new_job(guild_id=None))

    pages = [
        await user_history(database, user_id=USER, guild_id=GUILD, page=p, per_page=5)
        for p in (1, 2, 3, 4)
    ]
    assert [total for _, total in pages] == [12, 12, 12, 12]
    assert [[r.prompt for r in rows] for rows, _ in pages] == [
        [f"prompt {i}" for i in (11, 10, 9, 8, 7)],
        [f"prompt {i}" for i in (6, 5, 4, 3, 2)],
        ["prompt 1", "prompt 0"],
        [],
    ]
    flat = [r.job_key for rows, _ in pages for r in rows]
    assert flat == keys[::-1]

    clamped, _ = await user_history(database, user_id=USER, guild_id=GUILD, page=0, per_page=5)
    assert [r.prompt for r in clamped] == [r.prompt for r in pages[0][0]]

    dms, dm_total = await user_history(database, user_id=USER, guild_id=None, page=1)
    assert dm_total == 1 and dms[0].guild_id is None


async def test_history_status_filter(database: Database, new_job: MakeJob) -> None:
    ok = await reserve(database, new_job(), now=NOON)
    bad = await reserve(database, new_job(), now=NOON + dt.timedelta(seconds=1))
    await complete(database, ok)
    await fail_generation(database, bad, status="failed", error="oom")
    rows, total = await user_history(
        database, user_id=USER, guild_id=GUILD, page=1, statuses=[GenerationStatus.DONE]
    )
    assert total == 1 and [r.job_key for r in rows] == [ok]


async def test_expired_interaction_tokens_are_forgotten(
    database: Database, new_job: MakeJob
) -> None:
    old = await reserve(database, new_job(), now=NOON)
    fresh = await reserve(database, new_job(), now=NOON + dt.timedelta(minutes=10))
    await set_message(database, old, message_id=1, interaction_token="old-token")
    await set_message(database, fresh, message_id=2, interaction_token="fresh-token")

    cleared = await forget_expired_tokens(database, now=NOON + dt.timedelta(minutes=16))

    assert cleared == 1
    old_row = await get_generation(database, old)
    fresh_row = await get_generation(database, fresh)
    assert old_row is not None and old_row.interaction_token is None
    assert old_row.message_id == 1
    assert fresh_row is not None and fresh_row.interaction_token == "fresh-token"


async def test_repr_never_shows_prompt_or_token(database: Database, new_job: MakeJob) -> None:
    key = await reserve(database, new_job(prompt="my secret idea"))
    await set_message(database, key, message_id=1, interaction_token="tok-123")
    row = await get_generation(database, key)
    assert "secret" not in repr(row) and "tok-123" not in repr(row)
