"""Running a real discord.py bot against the emulator inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
from PIL import Image
from sqlalchemy import select

import db as dbmod
from bot import create_bot, endpoints
from bot.endpoints import DiscordEndpoints
from bot.settings import BotSettings
from engine.queue import LocalEngine
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running(
    client: discord.Client, token: str, *, ready_within: float = 30.0
) -> AsyncIterator[discord.Client]:
    """Start ``client`` as ``client.start(token)`` would in production, yield once it is ready
    (logged in, gateway READY, guilds received), and close it cleanly afterwards.

    A bot that dies while starting fails the test with its own exception rather than a timeout.
    """
    task = asyncio.create_task(client.start(token), name="bot.start")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_within
        while not client.is_ready():
            if task.done():
                task.result()
                raise AssertionError("the bot stopped before it became ready")
            if loop.time() > deadline:
                raise AssertionError(f"the bot was not ready within {ready_within}s")
            await asyncio.sleep(0.02)
        yield client
    finally:
        await client.close()
        try:
            await asyncio.wait_for(task, 15)
        except (asyncio.CancelledError, TimeoutError):
            task.cancel()
        except Exception:
            logger.exception("the bot's start task ended with an error")


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Decode PNG bytes the way a Discord client would and return (width, height)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG", image.format
        image.load()
        return image.size


class Rig:
    """Everything a scenario needs to run the project bot against the emulator.

    The bot is the production object from ``bot.create_bot``; the only differences from
    ``python -m bot`` are the test-only endpoints (``bot.endpoints``), a temp SQLite file, the
    tiny model on the CPU, no health server, and a shorter wait for guild data before
    ``on_ready``.
    """

    def __init__(self, emulator: Any, workdir: Path, model_dir: Path) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.model_dir = model_dir
        self.database_url = f"sqlite+aiosqlite:///{workdir / 'imagine.db'}"
        self.engines: list[Any] = []

    def settings(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "discord_token": self.emulator.token,
            "database_url": self.database_url,
            "image_dir": self.workdir / "images",
            "command_sync": "global",
            "health_port": 0,
            "progress_interval_s": 0.5,
            # 8 steps instead of 30: the scenarios are about the wire, not image quality.
            "default_mode": "fast",
        }
        values.update(overrides)
        # _env_file=None: a developer's .env must not leak into the tests.
        return BotSettings(_env_file=None, **values)  # type: ignore[call-arg]

    def engine(self, *, step_delay_s: float = 0.0, **overrides: Any) -> Any:
        """A fresh in-process engine on the tiny model (``step_delay_s`` stands in for GPU time).

        Live previews are off unless asked for (``previews=True``): the scenarios that count
        uploads, or fail "the final upload", mean the image, not a preview on a progress edit.
        """
        values: dict[str, Any] = {
            "model": str(self.model_dir),
            "max_side": 64,
            "warmup": False,
            "compile": False,
            "test_step_delay_s": step_delay_s,
            "previews": False,
        }
        values.update(overrides)
        engine = LocalEngine(EngineSettings(_env_file=None, **values))  # type: ignore[call-arg]
        self.engines.append(engine)
        return engine

    def point_at_emulator(self) -> None:
        """What ``python -m bot`` does with the TEST ONLY endpoint variables."""
        endpoints.apply(
            DiscordEndpoints(
                _env_file=None,  # type: ignore[call-arg]
                discord_api_base=self.emulator.api_base,
                discord_gateway_url=self.emulator.gateway_url,
            )
        )

    @contextlib.asynccontextmanager
    async def bot(
        self,
        *,
        settings: Any = None,
        backend: Any = None,
        engine: Any = None,
        close_engine: bool = True,
    ) -> AsyncIterator[Any]:
        """Run ``bot.create_bot(settings, backend=…)`` until the block ends, then stop it the
        way a SIGTERM does (``bot.close()``) and close the backend, as a process exit would.

        ``engine=`` is the same as ``backend=`` (the name the scenarios have used so far)."""
        engine = backend if backend is not None else engine
        engine = engine if engine is not None else self.engine()
        self.point_at_emulator()
        client = create_bot(settings or self.settings(), backend=engine)
        # Only shortens discord.py's wait for more GUILD_CREATEs before on_ready (2 s by default).
        client._connection.guild_ready_timeout = 0.05
        try:
            async with running(client, self.emulator.token):
                yield client
        finally:
            if close_engine:
                await engine.close()

    async def close(self) -> None:
        for engine in self.engines:
            await engine.close()


@dataclasses.dataclass
class Ledger:
    """The database as the scenarios check it: every job row and every quota counter."""

    rows: dict[str, Any]
    used: dict[tuple[int, int], int]

    def row(self, interaction: Any) -> Any:
        return self.rows[str(interaction.id)]

    def charged_to(self, user_id: int) -> int:
        """Units a user holds today: what done, queued and running jobs should add up to."""
        return sum(n for (_, uid), n in self.used.items() if uid == user_id)


async def read_ledger(database_url: str) -> Ledger:
    """Every job row and quota counter in the bot's database (the bot created the schema)."""
    database = await dbmod.Database.open(database_url, migrate=False)
    try:
        async with database.readers() as session:
            rows = (await session.scalars(select(dbmod.Generation))).all()
            usage = (await session.scalars(select(dbmod.QuotaUsage))).all()
    finally:
        await database.close()
    return Ledger(
        rows={r.job_key: r for r in rows},
        used={(u.guild_id, u.user_id): u.used for u in usage},
    )


async def settled(database_url: str, *interactions: Any, within: float = 30.0) -> Ledger:
    """Wait until the jobs of these interactions are finished in the database (done, failed or
    cancelled), so a test does not stop the bot between delivering an image and recording it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    keys = [str(i.id) for i in interactions]
    while True:
        ledger = await read_ledger(database_url)
        pending = [k for k in keys if k not in ledger.rows or not ledger.rows[k].finished]
        if not pending:
            return ledger
        if loop.time() > deadline:
            states = {k: getattr(ledger.rows.get(k), "status", None) for k in pending}
            raise AssertionError(f"jobs not finished within {within}s: {states}")
        await asyncio.sleep(0.1)


def is_preview(attachment: Any) -> bool:
    """A live preview the bot attached to a progress edit (``preview.jpg`` / ``.webp``)."""
    return str(attachment.filename).startswith("preview.")


def image_deliveries(emulator: Any, interaction: Any) -> list[Any]:
    """Every message carrying an image for this interaction, as its user would find them: the
    response (or a followup) edited to show the image, or a channel message replying to it.
    A live preview on a progress edit is not the image."""
    own = {m.id for m in emulator.messages_for(interaction)}
    found = []
    for message in emulator.messages.values():
        if message.deleted or not any(not is_preview(a) for a in message.attachments):
            continue
        reference = (message.message_reference or {}).get("message_id")
        if message.id in own or (reference is not None and int(reference) in own):
            found.append(message)
    return sorted(found, key=lambda m: m.id)


async def delivered(emulator: Any, interaction: Any, *, within: float = 30.0) -> Any:
    """Wait for the interaction's image to be visible and return the message carrying it."""
    found = await emulator.wait_until(
        lambda: image_deliveries(emulator, interaction),
        within=within,
        what=f"the image of interaction {interaction.id}",
    )
    return found[0]


REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def bot_process(
    rig: Rig,
    workdir: Path,
    *,
    step_delay_s: float,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m bot`` as ``make run`` starts it, with the test-only endpoints and the tiny
    model in its environment; yields once it has synced its commands and joined the gateway,
    and SIGKILLs it at the end if it is still running. Its log is ``workdir/bot-process.log``.
    """
    emu = rig.emulator
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")},
        "IMAGINE_DISCORD_TOKEN": emu.token,
        "IMAGINE_DATABASE_URL": rig.database_url,
        "IMAGINE_IMAGE_DIR": str(rig.workdir / "images"),
        "IMAGINE_DISCORD_API_BASE": emu.api_base,
        "IMAGINE_DISCORD_GATEWAY_URL": emu.gateway_url,
        "IMAGINE_HEALTH_PORT": "0",
        "IMAGINE_PROGRESS_INTERVAL_S": "0.5",
        "IMAGINE_DEFAULT_MODE": "fast",
        "IMAGINE_MODEL": str(rig.model_dir),
        "IMAGINE_MAX_SIDE": "64",
        "IMAGINE_WARMUP": "false",
        "IMAGINE_COMPILE": "false",
        "IMAGINE_TEST_STEP_DELAY_S": str(step_delay_s),
        "IMAGINE_PREVIEWS": "false",  # as in Rig.engine; extra_env can turn them on
        # The checkout itself, whether or not it is installed into the interpreter.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        **(extra_env or {}),
    }
    log_path = workdir / "bot-process.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=workdir, env=env, stdout=log, stderr=log
        )
        try:
            await emu.wait_until(
                lambda: (
                    (emu.find_command("imagine") and emu.live_sessions)
                    or process.returncode is not None
                ),
                within=120.0,
                what="python -m bot to sync its commands and connect to the gateway",
            )
            assert process.returncode is None, log_path.read_text()
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
