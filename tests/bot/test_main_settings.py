"""``python -m bot`` with a bad backend setting: a plain error by variable, never a secret."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tests.bot.test_app import FAKE_TOKEN, REPO, clean_env


def test_a_bad_redis_setting_names_the_variable_and_no_secret(tmp_path: Path) -> None:
    # The bot's own settings are fine; the Redis path's are not (heartbeat must be > 0). They
    # are read when the backend is built, after the bot's: pydantic would quote every input of
    # the failing model, the Redis URL's password included.
    done = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=clean_env(
            PYTHONPATH=str(REPO),
            IMAGINE_DISCORD_TOKEN=FAKE_TOKEN,
            IMAGINE_REDIS_URL="redis://:hunter2-redis-password@127.0.0.1:1/0",
            IMAGINE_HEARTBEAT_S="-1",
            IMAGINE_HEALTH_PORT="0",
            # Should a regression reach the login, it must stay on this machine.
            IMAGINE_DISCORD_API_BASE="http://127.0.0.1:9/api/v10",
            IMAGINE_DISCORD_GATEWAY_URL="ws://127.0.0.1:9/gateway",
            IMAGINE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "IMAGINE_HEARTBEAT_S" in output
    assert "hunter2" not in output
    assert FAKE_TOKEN not in output and FAKE_TOKEN.split(".")[-1] not in output
    assert "Traceback" not in output


def test_the_bots_log_filter_knows_the_redis_password_on_its_own() -> None:
    """issue 20 item 5: the bot redacted its whole Redis URL, but not the password where a
    message carries it alone or in a differently written URL."""
    from bot.__main__ import _redaction
    from bot.settings import BotSettings

    password = "hunter2-redis-password"
    settings = BotSettings(
        discord_token=FAKE_TOKEN, redis_url=f"redis://h:6379/0?password={password}"
    )
    redaction = _redaction(settings)
    lines = [
        f"AUTH failed for {password}",
        f"could not reach rediss://default:{password}@elsewhere:6380/1",
        f"login with {FAKE_TOKEN}",
    ]
    for line in lines:
        record = logging.LogRecord("test", logging.WARNING, __file__, 1, line, None, None)
        assert redaction.filter(record) is True
        logged = record.getMessage()
        assert password not in logged and FAKE_TOKEN not in logged and logged != line


def test_the_bot_has_no_voice_and_says_nothing_about_it(tmp_path: Path) -> None:
    """issue 20 item 14: every start warned that PyNaCl and davey are missing, "voice will NOT
    be supported": noise to an admin, since the bot never joins a voice channel."""
    done = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=clean_env(
            PYTHONPATH=str(REPO),
            IMAGINE_DISCORD_TOKEN=FAKE_TOKEN,
            IMAGINE_HEALTH_PORT="0",
            IMAGINE_DISCORD_API_BASE="http://127.0.0.1:9/api/v10",  # login fails at once
            IMAGINE_DISCORD_GATEWAY_URL="ws://127.0.0.1:9/gateway",
            IMAGINE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "the bot stopped" in output  # it got as far as the login
    assert "voice" not in output
