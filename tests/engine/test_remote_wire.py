"""The unmodified bot on the Redis path: what a member sees when images come from GPU workers.

``bot.create_bot(settings, engine=RedisBackend(...))`` runs against the wire-level Discord
emulator of ``tests/wire``, with a real Redis-compatible server and a real ``engine.worker``
worker (in this process, on the tiny model). The cogs talk to the same ``ImageBackend``
protocol as with the in-process GPU thread; these tests show they cannot tell the difference,
and that a Redis outage gets a clear answer and no charge.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import discord
import discord.gateway
import discord.http
import pytest

from engine.pipeline import ImageGenerator
from engine.presets import image_size
from engine.redis.backend import RedisBackend
from engine.redis.settings import RemoteSettings
from engine.redis.worker import Worker
from engine.settings import EngineSettings
from tests.redis_server import RedisServer, running_redis
from tests.wire.emulator import DiscordEmulator
from tests.wire.harness import Rig, delivered, image_deliveries, png_dimensions, settled


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:  # one per test: a test stops it
        yield server


@pytest.fixture
async def rig(tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[Rig]:
    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    emulator = DiscordEmulator()
    await emulator.start()
    try:
        yield Rig(emulator, tmp_path, tiny_model_dir)
    finally:
        await emulator.close()
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


@pytest.fixture
async def workers(
    redis_server: RedisServer,
    tiny_settings: EngineSettings,
    generator: ImageGenerator,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[RemoteSettings, Worker]]:
    monkeypatch.setattr(generator.settings, "test_step_delay_s", 0.05)  # "GPU time"
    remote = RemoteSettings(
        redis_url=redis_server.url,
        redis_prefix=f"w{uuid.uuid4().hex[:8]}",
        heartbeat_s=0.2,
        redeliver_after_s=1.0,
    )
    worker = Worker(remote, tiny_settings, generator, name="gpu-host-0")
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        yield remote, worker
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await running


async def backend_for(remote: RemoteSettings, model_dir: Path) -> RedisBackend:
    engine = EngineSettings(_env_file=None, model=str(model_dir))  # type: ignore[call-arg]
    backend = RedisBackend(remote, engine)

    async def worker_ready() -> bool:
        return (await backend.status()).ready

    await backend.start()
    async with asyncio.timeout(20):
        while not await worker_ready():  # noqa: ASYNC110 - heartbeats live in Redis
            await asyncio.sleep(0.05)
    return backend


async def test_imagine_through_a_gpu_worker_looks_the_same_to_members(
    rig: Rig, workers: tuple[RemoteSettings, Worker], tiny_model_dir: Path
) -> None:
    remote, worker = workers
    emu = rig.emulator
    alice = emu.add_user("alice")
    backend = await backend_for(remote, tiny_model_dir)
    async with rig.bot(engine=backend):
        interaction = await emu.slash(
            alice, "imagine", prompt="a lighthouse at dusk", aspect="3:4", mode="standard"
        )
        await emu.wait_acked(interaction)
        message = await delivered(emu, interaction)
        status = await emu.wait_acked(await emu.slash(alice, "status"))
        ledger = await settled(rig.database_url, interaction)

    # Live progress in the same message, then the image replaces it.
    assert [v.content for v in message.history if "Step **" in v.content]
    assert image_deliveries(emu, interaction) == [message]
    (attachment,) = message.attachments
    assert png_dimensions(attachment.data) == image_size("3:4", 64)
    (embed,) = message.embeds
    assert "gpu-host-0" in embed["footer"]["text"]  # rendered by the worker
    # /status lists the worker.
    (reply,) = emu.messages_for(status)
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert "gpu-host-0" in fields["Workers (1)"]
    row = ledger.row(interaction)
    assert (row.status, row.message_id) == ("done", message.id)
    assert ledger.charged_to(alice.id) == 1
    assert worker.jobs_done == 1


async def test_redis_down_answers_clearly_and_charges_nothing(
    rig: Rig,
    workers: tuple[RemoteSettings, Worker],
    redis_server: RedisServer,
    tiny_model_dir: Path,
) -> None:
    remote, _worker = workers
    emu = rig.emulator
    bob = emu.add_user("bob")
    backend = await backend_for(remote, tiny_model_dir)
    async with rig.bot(engine=backend):
        redis_server.stop()
        refused = await emu.wait_acked(await emu.slash(bob, "imagine", prompt="a castle"))
        ledger = await settled(rig.database_url, refused)
        answer = " ".join(m.content for m in emu.messages_for(refused))
        assert "Image workers are unavailable right now — nothing was charged." in answer
        assert image_deliveries(emu, refused) == []
        assert ledger.charged_to(bob.id) == 0

        redis_server.start()  # back: the next request goes through
        later = await emu.wait_acked(await emu.slash(bob, "imagine", prompt="a castle"))
        await delivered(emu, later)
        ledger = await settled(rig.database_url, later)
    assert ledger.row(later).status == "done"
    assert ledger.charged_to(bob.id) == 1
