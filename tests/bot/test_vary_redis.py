"""Images from images with the bot's jobs on a GPU worker behind Redis: the bot stores what the
worker returns, Vary sends the stored image to the worker, and previews arrive through the
progress events. The same SimCord world as the other bot tests; only the backend differs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import db
from engine.img2img import img2img_steps
from engine.presets import VARY_SUBTLE_STRENGTH
from engine.queue import LocalEngine
from tests.bot.harness import ExternalEngine, Harness, attachment_bytes, png_parameters
from tests.engine.redis.harness import remote_settings, running_cluster
from tests.redis_server import RedisServer, running_redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def engine(local_engine: LocalEngine, redis_server: RedisServer) -> AsyncIterator[Any]:
    """The bot's backend is a ``RedisBackend``; one worker renders on the shared tiny model."""
    settings = local_engine.settings
    default_interval = settings.preview_interval_s
    settings.test_step_delay_s = 0.0
    remote = remote_settings(redis_server)
    async with running_cluster(remote, settings, local_engine._generator) as cluster:
        yield ExternalEngine(cluster.backend)  # type: ignore[arg-type]
    settings.test_step_delay_s = 0.0
    settings.preview_interval_s = default_interval


async def test_vary_and_previews_through_a_redis_worker(harness: Harness) -> None:
    alice = harness.member("alice")
    made = await alice.slash(harness.channel, "imagine", prompt="a tide pool", seed=8)
    await harness.wait_jobs()
    original = harness.message(made.response.id)
    (parent,) = await harness.rows()
    assert parent.worker == "test-gpu0" and parent.status == "done"
    kept = await db.get_image(harness.database, parent.job_key)
    assert kept is not None  # stored what the worker returned
    assert await harness.bot.images.read(parent.job_key) == await attachment_bytes(original)

    vary = await alice.click(original, label="Vary (Subtle)")
    await harness.wait_jobs()
    params = png_parameters(await attachment_bytes(harness.message(vary.response.id)))
    assert params["parent_job_id"] == parent.job_key and params["strength"] == VARY_SUBTLE_STRENGTH
    assert params["steps"] == img2img_steps(8, VARY_SUBTLE_STRENGTH)
    row = await harness.row(harness.key(vary))
    assert row.worker == "test-gpu0" and row.strength == VARY_SUBTLE_STRENGTH
    assert (await harness.quota(alice)).used == 2


async def test_previews_arrive_through_the_progress_events(
    harness: Harness, local_engine: LocalEngine
) -> None:
    local_engine.settings.test_step_delay_s = 0.12
    local_engine.settings.preview_interval_s = 0.0
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="a night ferry", mode="standard")
    await harness.wait_jobs()
    token = result._interaction.token
    edits = [
        r.json
        for r in harness.env.http_requests
        if r.method == "PATCH" and r.path.endswith(f"/{token}/messages/@original")
    ]
    final = next(i for i, body in enumerate(edits) if body.get("embeds"))
    previews = [
        body
        for body in edits[:final]
        if any(a.get("filename") == "preview.jpg" for a in body.get("attachments", []))
    ]
    assert previews, edits
    assert [a["filename"] for a in edits[final]["attachments"]] == [
        a.filename for a in harness.message(result.response.id).attachments
    ]
