"""The one spelling of "an interaction" in the bot.

discord.py types an interaction by the client that received it. The bot's parts never need
more than ``discord.Client`` from it: what they need of *this* bot (its job service, its
database, its image store) they get through ``bot.client.imagine_client``, typed by a protocol,
so no part of the bot imports the bot class itself.
"""

from __future__ import annotations

from typing import TypeAlias

import discord

Interaction: TypeAlias = discord.Interaction[discord.Client]
# A button in a view (every restart-proof button of the bot is one).
ViewButton: TypeAlias = discord.ui.Button[discord.ui.View]
