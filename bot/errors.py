"""One place that turns errors into what a user sees, and logs what nobody expected.

Expected refusals (bad input, missing permission, quota) are ``UserError``s: a short ephemeral
answer and no traceback. Anything else is logged once, with the command and the ids needed to
find it, and the user gets a generic apology instead of a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import discord
from discord import app_commands

from bot.interaction import Interaction

logger = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()

GENERIC_FAILURE = "Something went wrong on my side. It has been logged; please try again."


class UserError(Exception):
    """An expected refusal. ``message`` is shown as is (ephemeral), so keep it short and kind."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _permission_names(missing: list[str]) -> str:
    names = [name.replace("_", " ").replace("guild", "server").title() for name in missing]
    return ", ".join(f"**{name}**" for name in names)


def describe(error: BaseException) -> str | None:
    """The ephemeral text for an expected error, or None when it is a bug to log."""
    if isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError):
        original = getattr(error, "original", None) or error.__cause__
        if isinstance(original, UserError):
            return original.message
        if isinstance(error, app_commands.TransformerError):
            value = discord.utils.escape_markdown(str(error.value))[:200]
            return f"That isn't a valid value for this option: {value}"
        return None
    if isinstance(error, UserError):
        return error.message
    if isinstance(error, app_commands.MissingPermissions):
        return f"You need the {_permission_names(error.missing_permissions)} permission to do that."
    if isinstance(error, app_commands.BotMissingPermissions):
        return (
            f"I need the {_permission_names(error.missing_permissions)} permission here; "
            "ask a server admin."
        )
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down a little: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    return None


async def send_ephemeral(
    interaction: Interaction,
    content: str | None = None,
    *,
    embed: discord.Embed | None = None,
    view: discord.ui.View | None = None,
) -> None:
    """Answer privately whether or not the interaction was already acknowledged."""
    missing = discord.utils.MISSING
    shown_embed = embed if embed is not None else missing
    shown_view = view if view is not None else missing
    if interaction.response.is_done():
        await interaction.followup.send(
            content or missing,
            embed=shown_embed,
            view=shown_view,
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )
    else:
        await interaction.response.send_message(
            content,
            embed=shown_embed,
            view=shown_view,
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


def _where(interaction: Interaction) -> str:
    command = interaction.command.qualified_name if interaction.command else None
    custom_id = (interaction.data or {}).get("custom_id") if interaction.data else None
    return (
        f"command={command!r} custom_id={custom_id!r} user={interaction.user.id} "
        f"guild={interaction.guild_id} channel={interaction.channel_id}"
    )


async def handle(interaction: Interaction, error: BaseException) -> None:
    """Reply to the user and log unexpected errors; never raises."""
    text = describe(error)
    if text is None:
        original = getattr(error, "original", None) or error
        logger.error(
            "unhandled error in %s",
            _where(interaction),
            exc_info=(type(original), original, original.__traceback__),
        )
        text = GENERIC_FAILURE
    else:
        logger.debug("refused %s: %s", _where(interaction), text)
    try:
        await send_ephemeral(interaction, text)
    except discord.HTTPException as exc:
        # The interaction may have expired (10062) while we were failing; nothing to tell.
        logger.info("could not send the error reply for %s: %s", _where(interaction), exc)


@contextlib.asynccontextmanager
async def replying(interaction: Interaction) -> AsyncIterator[None]:
    """Turn a ``UserError`` raised inside the block into its ephemeral answer.

    Refusals are answers, not errors: they never reach ``tree.on_error`` or the error log.
    """
    try:
        yield
    except UserError as refusal:
        await send_ephemeral(interaction, refusal.message)


def install(tree: app_commands.CommandTree[discord.Client]) -> None:
    """Make ``handle`` the command tree's single error handler."""

    async def on_error(interaction: Interaction, error: app_commands.AppCommandError) -> None:
        await handle(interaction, error)

    tree.on_error = on_error  # type: ignore[method-assign]
