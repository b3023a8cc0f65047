"""The Discord front-end of the Qwen-Image bot (no torch import anywhere in this package).

``bot.create_bot(settings, backend=None, db=None)`` returns the configured, unconnected bot;
``python -m bot`` runs it.
"""

from bot.app import ImagineBot, create_bot
from bot.settings import BotSettings

__all__ = ["BotSettings", "ImagineBot", "create_bot"]
