"""``python -m bot``: read the settings, set up logging, build the bot and run it."""

from __future__ import annotations

import logging
import sys

import discord
from pydantic import ValidationError

from bot.logsetup import setup_logging
from bot.settings import TOKEN_ENV, BotSettings

logger = logging.getLogger("bot")


def main() -> int:
    try:
        settings = BotSettings()
    except ValidationError as exc:
        # pydantic never echoes SecretStr values, so this cannot print the token.
        print(f"error: invalid settings (check .env and the environment):\n{exc}", file=sys.stderr)
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

    from bot.app import create_bot  # after logging, so import-time messages are formatted

    bot = create_bot(settings)
    try:
        bot.run(token, log_handler=None)
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
