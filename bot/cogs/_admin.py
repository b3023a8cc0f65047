"""What every admin cog shares: Manage Server, checked again at run time.

``default_permissions`` only hides commands from members by default; a server can grant them to
anyone in its integration settings, so the permission is checked on every use as well.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.interaction import Interaction

ADMIN_PERMISSIONS = discord.Permissions(manage_guild=True)


def require_manage_guild(interaction: Interaction) -> bool:
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])
    return True
