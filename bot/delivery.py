"""Where a job's status message lives, and how to reach it before and after its token dies.

A status message is first reached through the interaction's webhook (works without any channel
permission). Discord kills that token 15 minutes after the interaction; from then on, or as
soon as Discord says the token is dead, the bot uses its own channel message API. The final
image is never lost: when the webhook can no longer carry it, it goes out as a new message
replying to the status message and naming the requester.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
from collections.abc import Awaitable, Callable, Sequence

import discord
from discord.utils import MISSING
from PIL import Image

import db
from bot import render
from bot.interaction import Interaction

logger = logging.getLogger(__name__)

# Discord's lifetime of an interaction token, less a margin for requests in flight.
TOKEN_LIFETIME = dt.timedelta(minutes=15)
TOKEN_MARGIN = dt.timedelta(seconds=30)
# What every member may upload where Discord tells us nothing better (no boosts, DMs).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024

# Webhook errors that mean "this token (or its message) is gone": 50027 Invalid Webhook Token,
# 10015 Unknown Webhook, 10062 Unknown Interaction.
DEAD_TOKEN_CODES = frozenset({50027, 10015, 10062})
UNKNOWN_MESSAGE = 10008


def token_is_dead(error: discord.HTTPException) -> bool:
    return error.code in DEAD_TOKEN_CODES or error.status == 401


def interaction_time(job_key: str) -> dt.datetime | None:
    """When the interaction behind a job key (its snowflake, maybe with ``:n``) was created."""
    head = job_key.split(":", 1)[0]
    try:
        return discord.utils.snowflake_time(int(head))
    except ValueError:
        return None


FileFactory = Callable[[int], Awaitable[tuple[discord.File, str | None]]]


class MessageGone(Exception):
    """The status message can no longer be reached (deleted, or no way left to edit it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Edit:
    """One edit of a message: what it changes (``MISSING``: left as it is); it never mentions
    anyone."""

    content: str | None = MISSING
    embed: discord.Embed | None = MISSING
    attachments: Sequence[discord.File] = MISSING
    view: discord.ui.View | None = MISSING

    async def apply(self, message: discord.PartialMessage | discord.WebhookMessage) -> None:
        await message.edit(
            content=self.content,
            embed=self.embed,
            attachments=self.attachments,
            view=self.view,
            allowed_mentions=discord.AllowedMentions.none(),
        )


class StatusMessage:
    """One job's message: edit it while the token lives, else through the channel API.

    While the interaction is at hand (the job was started by this process) the message is
    edited through it: ``@original`` for the response, the followup's id for a second
    variation. A job resumed after a restart has no interaction object and uses the channel
    API only.
    """

    def __init__(
        self,
        bot: discord.Client,
        *,
        requester_id: int,
        guild_id: int | None,
        channel_id: int | None,
        message_id: int | None,
        interaction: Interaction | None = None,
        followup: discord.WebhookMessage | None = None,
        token_expires_at: dt.datetime | None = None,
        upload_limit: int | None = None,
    ) -> None:
        self.bot = bot
        self.requester_id = requester_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.message_id = message_id
        self._interaction = interaction
        self._followup = followup
        self.token_expires_at = token_expires_at
        self._upload_limit = upload_limit
        self.gone = False

    @classmethod
    def from_row(cls, bot: discord.Client, row: db.Generation) -> StatusMessage:
        """Rebuild the target of a stored job (after a restart): channel API only."""
        return cls(
            bot,
            requester_id=row.user_id,
            guild_id=row.guild_id,
            channel_id=row.channel_id,
            message_id=row.message_id,
        )

    # ------------------------------------------------------------------ state
    def token_alive(self) -> bool:
        if self._interaction is None or self.token_expires_at is None:
            return False
        return discord.utils.utcnow() < self.token_expires_at - TOKEN_MARGIN

    def forget_token(self) -> None:
        self._interaction = None
        self._followup = None

    @property
    def upload_limit(self) -> int:
        """Largest file the current path may carry."""
        if self._upload_limit is not None and self.token_alive():
            return self._upload_limit
        return self.channel_upload_limit()

    def channel_upload_limit(self) -> int:
        guild = self.bot.get_guild(self.guild_id) if self.guild_id is not None else None
        if guild is not None:
            return guild.filesize_limit
        return self._upload_limit or DEFAULT_UPLOAD_LIMIT

    async def _webhook_edit(self, edit: Edit) -> discord.Message:
        if self._followup is not None:
            return await self._followup.edit(
                content=edit.content,
                embed=edit.embed,
                attachments=edit.attachments,
                view=edit.view,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        assert self._interaction is not None
        return await self._interaction.edit_original_response(
            content=edit.content,
            embed=edit.embed,
            attachments=edit.attachments,
            view=edit.view,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    def _partial(self) -> discord.PartialMessage:
        if self.channel_id is None or self.message_id is None:
            raise MessageGone("no channel or message id stored")
        channel = self.bot.get_partial_messageable(self.channel_id, guild_id=self.guild_id)
        return channel.get_partial_message(self.message_id)

    # ------------------------------------------------------------------ editing
    async def edit(
        self,
        *,
        content: str | None = MISSING,
        embed: discord.Embed | None = MISSING,
        attachments: Sequence[discord.File] = MISSING,
        view: discord.ui.View | None = MISSING,
    ) -> None:
        """Edit the status message (what is given of content, embed, attachments and buttons)
        by whichever path works; nobody is ever mentioned by it."""
        if self.gone:
            raise MessageGone("the status message was deleted")
        edit = Edit(content, embed, attachments, view)
        if self.token_alive():
            try:
                await self._webhook_edit(edit)
                return
            except discord.HTTPException as exc:
                if exc.code == UNKNOWN_MESSAGE:
                    self.gone = True
                    raise MessageGone("the status message was deleted") from exc
                if not token_is_dead(exc):
                    raise
                logger.info(
                    "interaction token for message %s is dead (%s)", self.message_id, exc.code
                )
                self.forget_token()
        try:
            await edit.apply(self._partial())
        except discord.NotFound as exc:
            self.gone = True
            raise MessageGone("the status message was deleted") from exc

    async def deliver(
        self,
        *,
        make_file: FileFactory,
        embed_for: Callable[[str, str | None], discord.Embed],
        view: discord.ui.View,
        done_text: str,
    ) -> int | None:
        """Put the finished image in place of the status message, or reply with it.

        ``make_file(limit)`` builds the attachment for an upload limit (a fresh ``File`` each
        time, since a file can be read once) and returns it with an optional note about a
        format conversion; ``embed_for(filename, note)`` builds the embed for that file.
        Returns the id of the message that carries the image.
        """
        if self.token_alive() and not self.gone:
            file, note = await make_file(self.upload_limit)
            try:
                message = await self._webhook_edit(
                    Edit(None, embed_for(file.filename, note), [file], view)
                )
                return message.id
            except discord.HTTPException as exc:
                if exc.code == UNKNOWN_MESSAGE:
                    self.gone = True
                elif not token_is_dead(exc):
                    raise
                else:
                    logger.info(
                        "interaction token dead at delivery (%s); replying instead", exc.code
                    )
                    self.forget_token()
        return await self._reply_with_image(make_file, embed_for, view, done_text)

    async def _reply_with_image(
        self,
        make_file: FileFactory,
        embed_for: Callable[[str, str | None], discord.Embed],
        view: discord.ui.View,
        done_text: str,
    ) -> int | None:
        """A new message with the image that names the requester (and may notify them)."""
        mention_only_requester = discord.AllowedMentions(
            everyone=False,
            roles=False,
            replied_user=False,
            users=[discord.Object(self.requester_id)],
        )
        content = render.image_ready_text(self.requester_id)
        if self.gone and self.token_alive() and self._interaction is not None:
            # The status message was deleted but the token lives: a followup needs no
            # channel permission at all.
            file, note = await make_file(self.upload_limit)
            followup = await self._interaction.followup.send(
                content,
                embed=embed_for(file.filename, note),
                file=file,
                view=view,
                allowed_mentions=mention_only_requester,
                wait=True,
            )
            return followup.id
        if self.channel_id is None:
            raise MessageGone("no channel to deliver to")
        file, note = await make_file(self.channel_upload_limit())
        channel = self.bot.get_partial_messageable(self.channel_id, guild_id=self.guild_id)
        reference = None
        if self.message_id is not None and not self.gone:
            reference = discord.MessageReference(
                message_id=self.message_id,
                channel_id=self.channel_id,
                guild_id=self.guild_id,
                fail_if_not_exists=False,
            )
        message = await channel.send(
            content=content,
            embed=embed_for(file.filename, note),
            file=file,
            view=view,
            reference=reference,  # type: ignore[arg-type]
            allowed_mentions=mention_only_requester,
        )
        if self.message_id is not None and not self.gone:
            try:
                await self._partial().edit(  # no preview left on it either
                    content=done_text,
                    attachments=[],
                    view=None,
                    allowed_mentions=discord.AllowedMentions.none(),
                )
            except (discord.HTTPException, MessageGone) as exc:
                logger.info("could not update the old status message %s: %s", self.message_id, exc)
        return message.id


# --------------------------------------------------------------------------- upload limits


def fit_to_limit(png: bytes, limit: int, stem: str) -> tuple[bytes, str, str | None]:
    """The image as a file that fits ``limit`` bytes: the PNG if it fits, else WebP or JPEG.

    Returns (data, filename, note); the note tells the user what happened, because the PNG
    (with its parameter text chunks) stays reproducible from the parameters in the embed.
    """
    if len(png) <= limit:
        return png, f"{stem}.png", None
    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    attempts = [("WEBP", 90), ("JPEG", 92), ("WEBP", 80), ("JPEG", 85), ("JPEG", 75)]
    scaled = image
    for _ in range(4):
        for fmt, quality in attempts:
            buffer = io.BytesIO()
            if fmt == "WEBP":
                scaled.save(buffer, format=fmt, quality=quality, method=4)
            else:
                scaled.save(buffer, format=fmt, quality=quality, optimize=True)
            data = buffer.getvalue()
            if len(data) <= limit:
                ext = "webp" if fmt == "WEBP" else "jpg"
                note = render.conversion_note(
                    fmt,
                    quality,
                    scaled=None if scaled is image else scaled.size,
                    png_bytes=len(png),
                    limit=limit,
                )
                return data, f"{stem}.{ext}", note
        scaled = scaled.resize((max(16, scaled.width // 2), max(16, scaled.height // 2)))
    raise ValueError(f"image does not fit an upload limit of {limit} bytes")
