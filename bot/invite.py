"""``python -m bot invite``: the URL that adds this bot to a server, with exactly the scopes
and permissions it needs (README's Quick start shows the same URL).

The application id comes from ``IMAGINE_APPLICATION_ID`` when set (no network at all), else
from Discord: one REST login with the bot token (``GET /users/@me``, then
``GET /oauth2/applications/@me``), no gateway connection.
"""

from __future__ import annotations

import logging

import discord

logger = logging.getLogger(__name__)

INVITE_SCOPES: tuple[str, ...] = ("bot", "applications.commands")
# What the bot does in a channel and nothing more: see it, answer in it (and its threads),
# embed the parameters, attach the image, and read the messages after a job's status message
# (a late image's reply, found again after a restart). 274878024704.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)


def invite_url(application_id: int) -> str:
    """The OAuth2 authorize URL that invites application ``application_id`` as this bot."""
    return discord.utils.oauth_url(
        application_id, permissions=INVITE_PERMISSIONS, scopes=INVITE_SCOPES
    )


async def fetch_application_id(token: str) -> int:
    """Ask Discord which application this bot token belongs to (REST only).

    Raises ``discord.LoginFailure`` when Discord rejects the token and ``discord.HTTPException``
    (or ``aiohttp`` errors) when it cannot be reached.
    """
    async with discord.Client(intents=discord.Intents.none()) as client:
        await client.login(token)
        application = await client.application_info()
        return int(application.id)
