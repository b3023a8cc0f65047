"""``python -m bot``: read the settings, set up logging, build the bot and run it.

``python -m bot invite`` prints the URL that adds the bot to a server instead (``bot.invite``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from typing import TYPE_CHECKING

import aiohttp
import discord
from pydantic import ValidationError

from bot.logsetup import setup_logging
from bot.settings import TOKEN_ENV, BotSettings
from engine.backends import log_redaction
from engine.settings import describe_settings_error

if TYPE_CHECKING:
    from bot.app import ImagineBot

logger = logging.getLogger("bot")


async def _serve(bot: ImagineBot, token: str) -> None:
    """Run until the bot closes; SIGTERM (``docker stop``) and Ctrl-C close it cleanly, so jobs
    being delivered finish and the rest stay resumable."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, functools.partial(_stop, bot, sig))
    async with bot:
        await bot.start(token)


_closing: set[asyncio.Task[None]] = set()


def _stop(bot: ImagineBot, sig: signal.Signals) -> None:
    logger.info("%s received; shutting down", sig.name)
    task = asyncio.get_running_loop().create_task(bot.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


USAGE = """usage: python -m bot [invite]

  (no command)  run the bot
  invite        print the URL that adds this bot to a server
"""


def _settings() -> BotSettings | None:
    try:
        return BotSettings()
    except ValidationError as exc:
        # By variable and message only: pydantic's own text quotes inputs (a piece of the token).
        print(describe_settings_error(exc), file=sys.stderr)
        return None


def _redaction(settings: BotSettings) -> logging.Filter:
    token = settings.discord_token.get_secret_value() if settings.discord_token else None
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    return log_redaction(redis_url, *([token] if token else []))


def _no_voice() -> None:
    """The bot never joins a voice channel: discord.py's warnings that PyNaCl and davey are
    missing ("voice will NOT be supported") are noise to an admin reading the start."""
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


def main(argv: list[str] | None = None) -> int:
    _no_voice()
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    if args == ["invite"]:
        return invite()
    if args:
        print(f"error: unknown command {' '.join(args)!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    return run()


def invite() -> int:
    """Print the invite URL; the application id comes from the settings or from Discord."""
    settings = _settings()
    if settings is None:
        return 2
    from bot.invite import fetch_application_id, invite_url

    if settings.application_id is not None:
        print(invite_url(settings.application_id))
        return 0
    if settings.discord_token is None:
        print(
            f"error: set {TOKEN_ENV} (the application id is then asked of Discord) or "
            "IMAGINE_APPLICATION_ID (General Information → Application ID in the developer "
            "portal) in .env or the environment.",
            file=sys.stderr,
        )
        return 2
    setup_logging(settings.log_level, _redaction(settings))
    from bot import endpoints

    endpoints.apply()  # TEST ONLY variables; nothing happens in production
    try:
        application_id = asyncio.run(
            fetch_application_id(settings.discord_token.get_secret_value())
        )
    except discord.LoginFailure:
        logger.error(
            "Discord rejected the token in %s; copy it again from the developer portal", TOKEN_ENV
        )
        return 1
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        logger.error(
            "could not ask Discord for the application id: %s. Set IMAGINE_APPLICATION_ID "
            "(General Information → Application ID in the developer portal) to print the URL "
            "without asking Discord.",
            exc,
        )
        return 1
    print(invite_url(application_id))
    return 0


def run() -> int:
    settings = _settings()
    if settings is None:
        return 2
    if settings.discord_token is None:
        print(
            f"error: {TOKEN_ENV} is not set. Copy .env.example to .env and put the bot token "
            "from https://discord.com/developers/applications there (or export "
            f"{TOKEN_ENV} in the environment).",
            file=sys.stderr,
        )
        return 2
    token = settings.discord_token.get_secret_value()
    setup_logging(settings.log_level, _redaction(settings))

    from bot import endpoints

    # After logging, so import-time messages are formatted.
    from bot.app import create_bot
    from engine.backends import read_backend_settings

    endpoints.apply()  # TEST ONLY variables; nothing happens in production
    try:
        # The backend's own settings (engine, Redis) are read here: their errors must be
        # described like the bot's, never with pydantic's quoted inputs (a Redis password).
        read_backend_settings(settings.redis_url.get_secret_value() if settings.redis_url else None)
        bot = create_bot(settings)
        asyncio.run(_serve(bot, token))
    except ValidationError as exc:
        print(describe_settings_error(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except discord.LoginFailure:
        logger.error(
            "Discord rejected the token in %s; copy it again from the developer portal", TOKEN_ENV
        )
        return 1
    except discord.PrivilegedIntentsRequired:
        logger.error("Discord refused the gateway intents this bot asked for")
        return 1
    except Exception as exc:
        logger.error("the bot stopped: %s", exc, exc_info=logger.isEnabledFor(logging.DEBUG))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
