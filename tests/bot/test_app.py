"""Settings, the app factory, logging without secrets, ``python -m bot``, and /healthz."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from aiohttp import web
from pydantic import ValidationError

from bot import create_bot, endpoints
from bot.app import ImagineBot
from bot.client import NotStarted
from bot.endpoints import DiscordEndpoints
from bot.health import HealthServer
from bot.settings import BotSettings
from engine.backends import log_redaction
from engine.settings import ImagineBaseSettings
from tests.bot.harness import Harness

REPO = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.fake-token-value-for-tests-only-0123456789"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    env.update(extra)
    return env


def test_settings_defaults_and_secrets() -> None:
    assert issubclass(BotSettings, ImagineBaseSettings)  # one way of reading settings
    settings = BotSettings(_env_file=None, discord_token=FAKE_TOKEN)  # type: ignore[call-arg]
    assert settings.default_daily_quota == 25 and settings.default_max_queued == 3
    assert settings.quota_reset_hour == 0 and settings.progress_interval_s == 1.5
    assert settings.health_port == 8080 and settings.health_host == "127.0.0.1"
    assert FAKE_TOKEN not in repr(settings) and FAKE_TOKEN not in str(settings.model_dump())
    blank = BotSettings(_env_file=None, discord_token="  ")  # type: ignore[call-arg]
    assert blank.discord_token is None
    with pytest.raises(ValidationError, match="IMAGINE_DEV_GUILD_ID"):
        BotSettings(_env_file=None, command_sync="guild")  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as info:
        BotSettings(_env_file=None, discord_token=FAKE_TOKEN, quota_reset_hour=30)  # type: ignore[call-arg]
    assert FAKE_TOKEN not in str(info.value)


def test_create_bot_is_unconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    base = discord.http.Route.BASE
    bot = create_bot(BotSettings(_env_file=None))  # type: ignore[call-arg]
    assert isinstance(bot, ImagineBot) and not bot.is_ready() and bot.user is None
    for service in ("backend", "db", "jobs"):  # built in setup_hook, not at import
        with pytest.raises(NotStarted):
            getattr(bot, service)
    assert base == discord.http.Route.BASE  # building a bot never moves discord.py elsewhere
    assert bot.allowed_mentions is not None and bot.allowed_mentions.everyone is False
    assert not bot.intents.message_content and not bot.intents.members


def test_create_bot_takes_the_backend() -> None:
    backend: Any = object()
    settings = BotSettings(_env_file=None)  # type: ignore[call-arg]
    assert create_bot(settings, backend=backend).backend is backend


def test_test_only_endpoints_come_from_the_environment_not_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket,
        "DEFAULT_GATEWAY",
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
    )
    assert "discord_api_base" not in BotSettings.model_fields
    assert "discord_gateway_url" not in BotSettings.model_fields
    production = discord.http.Route.BASE
    endpoints.apply(DiscordEndpoints(_env_file=None))  # type: ignore[call-arg]
    assert production == discord.http.Route.BASE  # unset: nothing changes

    monkeypatch.setenv("IMAGINE_DISCORD_API_BASE", "http://127.0.0.1:9/api/v10/")
    monkeypatch.setenv("IMAGINE_DISCORD_GATEWAY_URL", "ws://127.0.0.1:9/gateway")
    endpoints.apply()
    assert discord.http.Route.BASE == "http://127.0.0.1:9/api/v10"
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    assert gateway == yarl.URL("ws://127.0.0.1:9/gateway")


def test_redaction_filter_hides_the_token_everywhere() -> None:
    logger = logging.getLogger("test.redaction")
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    collect = Collect()
    collect.addFilter(log_redaction(None, FAKE_TOKEN))
    logger.addHandler(collect)
    try:
        logger.warning("token is %s", FAKE_TOKEN)
        logger.warning("inline " + FAKE_TOKEN + " here")  # noqa: G003
        logger.warning("a bad format %d " + FAKE_TOKEN, "x")  # noqa: G003
        try:
            raise RuntimeError(f"login with {FAKE_TOKEN} failed")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(collect)
    joined = "\n".join(records)
    assert FAKE_TOKEN not in joined
    assert joined.count("[REDACTED]") >= 4 and "login with [REDACTED] failed" in joined


def test_bot_package_never_imports_torch() -> None:
    code = (
        "import sys, bot, bot.app, bot.imagine, bot.views, bot.health, bot.__main__\n"
        "import bot.cogs.imagine, bot.history, bot.cogs.styles, bot.cogs.admin\n"
        "import bot.cogs.quota, bot.cogs.status\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'diffusers' not in sys.modules, 'diffusers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=clean_env(), timeout=120)


def test_run_without_a_token_exits_at_once_and_says_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,  # no .env here
        env=clean_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "IMAGINE_DISCORD_TOKEN" in proc.stderr and ".env" in proc.stderr


async def test_a_rejected_token_exits_non_zero_without_printing_it(tmp_path: Path) -> None:
    """Discord answers 401 to the login: a clear message, exit 1, and the token nowhere."""

    async def unauthorized(request: web.Request) -> web.Response:
        return web.Response(
            status=401,
            body=json.dumps({"message": "401: Unauthorized", "code": 0}).encode(),
            headers={"Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unauthorized)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=tmp_path,
            env=clean_env(
                PYTHONPATH=str(REPO),
                IMAGINE_DISCORD_TOKEN=FAKE_TOKEN,
                IMAGINE_DISCORD_API_BASE=f"http://127.0.0.1:{port}/api/v10",
                IMAGINE_HEALTH_PORT="0",
                IMAGINE_LOG_LEVEL="DEBUG",
                IMAGINE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await runner.cleanup()
    output = (stdout + stderr).decode()
    assert proc.returncode == 1, output
    assert "rejected the token in IMAGINE_DISCORD_TOKEN" in output
    assert FAKE_TOKEN not in output and FAKE_TOKEN.split(".")[-1] not in output


async def test_healthz_and_metrics(harness: Harness) -> None:
    alice = harness.member("alice")
    await alice.slash(harness.channel, "imagine", prompt="a gauge")
    await harness.wait_jobs()

    server = HealthServer(harness.bot, "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/json"
                body = await response.json()
            assert body["status"] == "ok" and body["gateway"] is True and body["backend"] is True

            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert 'imagine_jobs_total{outcome="done"}' in text
            assert (
                "imagine_seconds_per_image_count" in text
                and "imagine_ack_latency_seconds_bucket" in text
            )
            assert "imagine_queue_depth 0.0" in text and "imagine_seconds_per_step_sum" in text

            harness.engine.down = True  # the backend stops answering
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 503
                body = await response.json()
            assert body["status"] == "unavailable" and body["backend"] is False
            assert body["gateway"] is True and body["backend_error"] == "ConnectionError"
    finally:
        harness.engine.down = False
        await server.stop()
    assert server.port is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_run_connects_serves_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``python -m bot`` with a token: logs in, connects the gateway, answers /healthz (503:
    its Redis backend is down), and exits 0 on SIGTERM; the token appears nowhere."""
    from tests.wire.emulator import DiscordEmulator

    port = _free_port()
    async with DiscordEmulator(token=FAKE_TOKEN) as emu:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=tmp_path,
            env=clean_env(
                PYTHONPATH=str(REPO),
                IMAGINE_DISCORD_TOKEN=FAKE_TOKEN,
                IMAGINE_DISCORD_API_BASE=emu.api_base,
                IMAGINE_DISCORD_GATEWAY_URL=emu.gateway_url,
                IMAGINE_REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0",  # nobody listens
                IMAGINE_HEALTH_HOST="127.0.0.1",
                IMAGINE_HEALTH_PORT=str(port),
                IMAGINE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
                IMAGINE_LOG_LEVEL="DEBUG",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await emu.wait_until(lambda: emu.sessions, within=60, what="the gateway connection")
            body = None
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                            body = await response.json()
                            if body["gateway"]:
                                assert response.status == 503
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
            assert body is not None and body["gateway"] is True and body["backend"] is False
            assert emu.global_commands, "slash commands were not registered"
            proc.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text
    assert "SIGTERM received" in text
    assert FAKE_TOKEN not in text and FAKE_TOKEN.split(".")[-1] not in text
