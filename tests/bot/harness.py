"""SimCord harness for the bot: the real bot, its command tree, views and cogs, in-process.

One tiny LocalEngine (real diffusers pipeline, 64 px images) serves the whole session; each test
gets a fresh SQLite database and a fresh bot built by ``bot.create_bot``. The fixtures that wire
these together are in ``tests/bot/conftest.py``; everything a test imports is here.

The engine renders on its own thread, which SimCord cannot see. ``ExternalEngine`` wraps the
real engine only to *declare* that wait to SimCord (``env.external_wait``), so an actor's verb
returns once the bot has answered, not when the image is done, exactly like a real user who
keeps clicking while an image renders. It can also hold results back (``hold``/``release``) so
a test can, for example, let Discord's 15-minute token expire before the image arrives.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import discord
import simcord
from PIL import Image

import db
from bot import create_bot
from bot.app import ImagineBot
from bot.settings import BotSettings
from engine.contract import EngineStatus, JobHandle, JobRequest, JobResult, ProgressCallback
from engine.queue import LocalEngine
from engine.settings import EngineSettings

ADMIN_PERMS = discord.Permissions(manage_guild=True, manage_messages=True)
MOD_PERMS = discord.Permissions(manage_messages=True)
# The engine's per-member safety ceiling in these tests: the documented default.
QUEUED_CEILING = 25


def tiny_engine(model_dir: Path) -> LocalEngine:
    """The tiny in-process engine every bot test shares (64 px images, no warm-up)."""
    return LocalEngine(
        EngineSettings(
            _env_file=None,  # type: ignore[call-arg]
            model=str(model_dir),
            max_side=64,
            warmup=False,
            compile=False,
            queued_ceiling_per_user=QUEUED_CEILING,
        )
    )


class _Handle:
    def __init__(self, owner: ExternalEngine, inner: JobHandle) -> None:
        self._owner = owner
        self._inner = inner
        self.job_id = inner.job_id

    async def result(self) -> JobResult:
        return await self._owner.env.external_wait(self._wait(), reason="tiny GPU engine thread")

    async def _wait(self) -> JobResult:
        result = await self._inner.result()
        await self._owner.gate.wait()
        return result


class ExternalEngine:
    """The real engine, with its GPU-thread wait declared to SimCord (see the module doc)."""

    def __init__(self, inner: LocalEngine) -> None:
        self.inner = inner
        self.env: simcord.Env = None  # type: ignore[assignment]
        self.gate = asyncio.Event()
        self.gate.set()
        self.submitted: list[JobRequest] = []
        self.started = False
        self.down = False  # status() raises, as an unreachable backend would

    def hold(self) -> None:
        """Keep finished results from reaching the bot until ``release``."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def start(self) -> None:
        await self.inner.start()
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def submit(
        self, request: JobRequest, on_progress: ProgressCallback | None = None
    ) -> _Handle:
        self.submitted.append(request)
        return _Handle(self, await self.inner.submit(request, on_progress))

    async def position(self, job_id: str) -> int | None:
        return await self.inner.position(job_id)

    async def cancel(self, job_id: str) -> bool:
        return await self.inner.cancel(job_id)

    async def status(self) -> EngineStatus:
        if self.down:
            raise ConnectionError("backend unreachable")
        return await self.inner.status()


class Harness:
    """A running bot in a SimCord world with one guild, one channel, an admin and members."""

    def __init__(self, env: simcord.Env, bot: ImagineBot, engine: ExternalEngine) -> None:
        self.env = env
        self.bot = bot
        self.engine = engine
        self.guild = env.create_guild("Imagine Test")
        self.admin_role = self.guild.create_role("Admins", permissions=ADMIN_PERMS)
        self.mod_role = self.guild.create_role("Mods", permissions=MOD_PERMS)
        self.channel = self.guild.create_text_channel("art")
        self.admin = self.guild.add_member(env.create_user("ada"), roles=[self.admin_role])
        self._members: dict[str, Any] = {}

    def member(self, name: str, *, roles: list[Any] | None = None) -> Any:
        if name not in self._members:
            self._members[name] = self.guild.add_member(
                self.env.create_user(name), roles=roles or []
            )
        return self._members[name]

    @property
    def database(self) -> db.Database:
        assert self.bot.db is not None
        return self.bot.db

    async def wait_until(
        self, predicate: Callable[[], Any], *, limit_s: float = 60.0, what: str = "condition"
    ) -> None:
        """Let the bot and the engine work until ``predicate()`` holds (an async one is awaited)."""
        deadline = time.monotonic() + limit_s
        while True:
            await self.env.settle(timeout=30)
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def wait_jobs(self, *, limit_s: float = 120.0) -> None:
        """Until the bot follows no job any more (every image delivered or failed)."""
        assert self.bot.jobs is not None
        await self.wait_until(
            lambda: not self.bot.jobs.active_keys(), limit_s=limit_s, what="jobs to finish"
        )

    async def restart(self, engine: Any = None) -> ImagineBot:
        """Stop this bot like a process exit would, then start a new one on the same database.

        SimCord keeps the world (guild, messages, buttons); the new bot only has the database.
        """
        old = self.bot
        await old.close_services()
        new = create_bot(old.settings, backend=engine or self.engine, db=self.database)
        await self.env.restart_bot(new)
        self.bot = new
        return new

    def slash_nowait(self, actor: Any, name: str, **options: Any) -> Any:
        """Deliver a slash command to the bot *without* waiting for the bot to react.

        SimCord's actor verbs settle after each interaction, which serialises users. Real users
        press Enter at the same time; this builds the same INTERACTION_CREATE the actor would
        (through SimCord's own payload builders) and only emits it, so many can be in flight.
        """
        from simcord import actors as sc_actors
        from simcord import interactions as sc_interactions
        from simcord.enums import AppCommandType, InteractionType
        from simcord.results import InteractionResult

        channel = self.channel
        root = sc_actors._resolve_visible_command(
            actor, channel.id, name, AppCommandType.CHAT_INPUT
        )
        leaf, nesting = sc_interactions.walk_to_subcommand(root, [])
        leaf_options, resolved = sc_interactions.build_options(
            actor, name, leaf, options, channel_id=channel.id
        )
        data: dict[str, Any] = {
            "id": root["id"],
            "name": root["name"],
            "type": root.get("type", AppCommandType.CHAT_INPUT),
            "options": sc_interactions.nest_options(root, nesting, leaf_options),
        }
        if resolved:
            data["resolved"] = resolved
        record, payload = sc_interactions.base_payload(
            self.env.backend,
            type=InteractionType.APPLICATION_COMMAND,
            channel_id=channel.id,
            guild_id=self.guild.id,
            user_id=actor.id,
            data=data,
        )
        self.env.backend.emit("INTERACTION_CREATE", payload)
        return InteractionResult(self.env, record)

    def answers(self, result: Any) -> list[str]:
        """Every text the bot gave the interaction's own message, in order (the first is the
        status message it answered with), read from the REST calls it made."""
        token = result._interaction.token
        texts = []
        for request in self.env.http_requests:
            body = request.json if isinstance(request.json, dict) else {}
            if request.method == "POST" and request.path.endswith(f"/{token}/callback"):
                content = (body.get("data") or {}).get("content")
            elif request.method == "PATCH" and request.path.endswith(
                f"/{token}/messages/@original"
            ):
                content = body.get("content")
            else:
                continue
            if content:
                texts.append(content)
        return texts

    @staticmethod
    def key(result: Any) -> str:
        """The job key (interaction id) behind a SimCord InteractionResult.

        SimCord exposes no public interaction id on its results, so this reads its record.
        """
        return str(result._interaction.id)

    async def row(self, key: str | int) -> db.Generation:
        row = await db.get_generation(self.database, str(key))
        assert row is not None, f"no generation {key}"
        return row

    async def quota(
        self, user: Any, *, guild: bool = True, limit: int | None = 25
    ) -> db.QuotaStatus:
        """The member's quota as the bot counts it (on SimCord's clock, like the bot)."""
        return await db.quota_status(
            self.database,
            guild_id=self.guild.id if guild else None,
            user_id=user.id,
            daily_quota=limit,
            now=self.env.now(),
        )

    async def rows(self) -> list[db.Generation]:
        from sqlalchemy import select

        async with self.database.sessions() as session:
            return list(
                (await session.scalars(select(db.Generation).order_by(db.Generation.id))).all()
            )

    def message(self, message_id: int, channel: Any = None) -> discord.Message:
        """The current state of a message, as the bot's own client parses it."""
        channel = channel or self.channel
        for message in channel.history():
            if message.id == message_id:
                return message
        raise AssertionError(f"message {message_id} not found in #{channel.name}")


def bot_settings(tmp_path: Path, **overrides: Any) -> BotSettings:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}",
        "image_dir": tmp_path / "images",
        "health_port": 0,
        "command_sync": "global",
        # 8 steps instead of 30 keeps the suite quick on a CPU; tests that care pick a mode.
        "default_mode": "fast",
    }
    values.update(overrides)
    return BotSettings(_env_file=None, **values)  # type: ignore[call-arg]


async def drain(bot: ImagineBot, engine: ExternalEngine, env: simcord.Env) -> None:
    """Cancel leftover jobs so the shared engine starts the next test empty."""
    if bot.jobs is None:
        return
    for key in bot.jobs.active_keys():
        await engine.inner.cancel(key)
    deadline = time.monotonic() + 30
    while bot.jobs.active_keys() and time.monotonic() < deadline:
        await env.settle(timeout=30)
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- assertions


def png_parameters(data: bytes) -> dict[str, Any]:
    """Decode a PNG and return the generation parameters in its JSON text chunk."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        return json.loads(image.text["parameters_json"])


async def attachment_bytes(message: discord.Message) -> bytes:
    assert len(message.attachments) == 1, f"expected one attachment, got {message.attachments}"
    return await message.attachments[0].read()


async def post_old_buttons(
    harness: Harness, *custom_ids: str, for_job: str | None = None
) -> discord.Message:
    """A message with buttons exactly as an earlier version of the bot posted them (raw JSON:
    nothing of today's views is involved). ``for_job``: the message is that job's own (its
    row says so, as it would of the message an earlier version posted for it); a job's
    buttons work on its own message only."""
    buttons = [
        {"type": 2, "style": 2, "label": custom_id.split(":")[1], "custom_id": custom_id}
        for custom_id in custom_ids
    ]
    payload = {"content": "posted by an earlier version", "components": []}
    payload["components"] = [{"type": 1, "components": buttons}]
    route = discord.http.Route(
        "POST", "/channels/{channel_id}/messages", channel_id=harness.channel.id
    )
    data = await harness.bot.http.request(route, json=payload)
    await harness.env.settle(timeout=30)
    if for_job is not None:
        await db.set_message(harness.database, for_job, message_id=int(data["id"]))
    return harness.message(int(data["id"]))
