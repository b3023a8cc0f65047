"""``python -m bot invite``: the invite URL for this application, exactly what README's Quick
start shows, with the application id from ``IMAGINE_APPLICATION_ID`` (no network) or from
Discord (the REST path is tested against the emulator in ``tests/wire/test_wire_invite.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import discord

from bot.invite import INVITE_PERMISSIONS, INVITE_SCOPES, invite_url
from tests.bot.test_app import REPO, clean_env

APP_ID = 1234567890123456789


def expected_url(app_id: int) -> str:
    return discord.utils.oauth_url(
        app_id,
        permissions=discord.Permissions(
            view_channel=True,
            send_messages=True,
            send_messages_in_threads=True,
            embed_links=True,
            attach_files=True,
            read_message_history=True,
        ),
        scopes=("bot", "applications.commands"),
    )


def test_the_invite_url_is_exactly_the_documented_one() -> None:
    assert INVITE_PERMISSIONS.value == 274878024704
    assert INVITE_SCOPES == ("bot", "applications.commands")
    url = invite_url(APP_ID)
    assert url == expected_url(APP_ID)
    assert url == (
        f"https://discord.com/oauth2/authorize?client_id={APP_ID}"
        "&scope=bot+applications.commands&permissions=274878024704"
    )
    readme = (REPO / "README.md").read_text()
    assert url.replace(str(APP_ID), "APP_ID") in readme


def run_invite(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "invite"],
        cwd=tmp_path,  # no .env here
        env=clean_env(PYTHONPATH=str(REPO), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invite_with_the_application_id_set_needs_no_token_and_no_network(
    tmp_path: Path,
) -> None:
    # An API base nobody listens on: any request would fail the command.
    proc = run_invite(
        tmp_path,
        IMAGINE_APPLICATION_ID=str(APP_ID),
        IMAGINE_DISCORD_API_BASE="http://127.0.0.1:9/api/v10",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected_url(APP_ID)


def test_invite_without_token_or_application_id_says_what_to_set(tmp_path: Path) -> None:
    proc = run_invite(tmp_path)
    assert proc.returncode == 2
    assert "IMAGINE_DISCORD_TOKEN" in proc.stderr and "IMAGINE_APPLICATION_ID" in proc.stderr
    assert proc.stdout == ""


def test_invite_without_network_suggests_the_application_id(tmp_path: Path) -> None:
    """issue 20 item 14: offline, the command failed without saying that the application id
    can be given instead."""
    proc = run_invite(
        tmp_path,
        IMAGINE_DISCORD_TOKEN="MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.fake-token-value-for-tests-only",
        IMAGINE_DISCORD_API_BASE="http://127.0.0.1:9/api/v10",  # nobody listens: no network
    )
    assert proc.returncode == 1
    assert "could not ask Discord for the application id" in proc.stderr
    assert "IMAGINE_APPLICATION_ID" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
