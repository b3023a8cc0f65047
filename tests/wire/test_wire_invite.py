"""``python -m bot invite`` asks Discord for the application id with the bot token
(``GET /oauth2/applications/@me``) and prints the invite URL; a rejected token is a clear
error that never prints the token."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.bot.test_app import FAKE_TOKEN, REPO, clean_env
from tests.bot.test_invite import expected_url
from tests.wire.emulator import DiscordEmulator


async def run_invite(tmp_path: Path, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "invite",
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(REPO), **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_invite_reads_the_application_id_from_discord(tmp_path: Path) -> None:
    async with DiscordEmulator(token=FAKE_TOKEN) as emu:
        code, out, err = await run_invite(
            tmp_path, IMAGINE_DISCORD_TOKEN=FAKE_TOKEN, IMAGINE_DISCORD_API_BASE=emu.api_base
        )
        paths = [request.path for request in emu.requests]
    assert code == 0, err
    assert out.strip() == expected_url(emu.application_id)
    assert any(path.endswith("/oauth2/applications/@me") for path in paths), paths
    assert not emu.sessions  # REST only: no gateway connection
    assert FAKE_TOKEN not in out + err


async def test_invite_with_a_rejected_token_fails_plainly(tmp_path: Path) -> None:
    async with DiscordEmulator(token="another-token-entirely-0123456789") as emu:
        code, out, err = await run_invite(
            tmp_path, IMAGINE_DISCORD_TOKEN=FAKE_TOKEN, IMAGINE_DISCORD_API_BASE=emu.api_base
        )
    assert code == 1
    assert out == ""
    assert "rejected the token in IMAGINE_DISCORD_TOKEN" in err
    assert FAKE_TOKEN not in err and FAKE_TOKEN.split(".")[-1] not in err
