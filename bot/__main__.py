"""``python -m bot``: read the settings, set up logging, build the bot and run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

import discord
from pydantic import ValidationError

from bot.logsetup import setup_logging
from bot.settings import TOKEN_ENV, BotSettings
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
            loop.add_signal_handler(sig, lambda s=sig: _stop(bot, s))
    async with bot:
        await bot.start(token)


_closing: set[asyncio.Task[None]] = set()


def _stop(bot: ImagineBot, sig: signal.Signals) -> None:
    logger.info("%s received; shutting down", sig.name)
    task = asyncio.get_running_loop().create_task(bot.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def main() -> int:
    try:
        settings = BotSettings()
    except ValidationError as exc:
        # By variable and message only: pydantic's own text quotes inputs (a piece of the token).
        print(describe_settings_error(exc), file=sys.stderr)
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
    secrets = [token]
    if settings.redis_url is not None:
        secrets.append(settings.redis_url.get_secret_value())
    setup_logging(settings.log_level, secrets)

    from bot import endpoints
    from bot.app import create_bot  # after logging, so import-time messages are formatted

    endpoints.apply()  # TEST ONLY variables; nothing happens in production
    bot = create_bot(settings)
    try:
        asyncio.run(_serve(bot, token))
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
