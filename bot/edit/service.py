"""Editing images: /edit on uploaded images, and the Edit button on any finished image.

An edit is a job of kind ``edit`` whose prompt is the instruction and whose inputs (up to three
images, the first the one being edited) travel with the request to the engine, which runs
Qwen-Image-Edit and names the inputs in the result's PNG chunks by SHA-256.

Everything is checked before anything is charged or queued, each refusal a private answer:
whether this bot can edit at all (``IMAGINE_EDIT_MODEL`` empty, or no edit-capable GPU worker
online), the server's rules (``policy.admit``: channel, instruction length, blocked words), and
every upload: its declared size first, then a download that stops after the byte cap
(``IMAGINE_MAX_UPLOAD_MB``), then ``bot.uploads.validate_upload`` (type, magic bytes, pixel cap
read from the header, decompression bombs, minimum size), which turns it into a plain RGB PNG.

The inputs are kept in the image store as image rows of the job (``<job_key>:in<n>``; the
bytes are stored once however many rows name them): a job resumed after a restart reads them
back, and a member's erase removes them with their other images. A job that must be resumed
after its inputs were swept is refunded and says so.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

import db
from bot import metrics
from bot.errors import UserError
from bot.images import NotStored
from bot.imagine import policy
from bot.imagine.ack import AckGuard
from bot.uploads import (
    MAX_UPLOAD_BYTES,
    UploadRefused,
    ValidatedImage,
    size_text,
    validate_upload,
    without_metadata,
)
from engine.contract import TASK_EDIT, MAX_EDIT_IMAGES, FailureKind, JobFailed, Mode
from engine.presets import ASPECTS, DEFAULT_ASPECT, DEFAULT_STYLE

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.imagine.service import JobService

logger = logging.getLogger(__name__)

EDIT_KIND = db.GenerationKind.EDIT
EDIT_OFF_TEXT = "Image editing is turned off on this server. Nothing was charged."
NO_EDIT_WORKER_TEXT = "No worker can edit right now. Nothing was charged; please try again later."
ENGINE_SILENT_TEXT = "The image engine is not answering right now; try again in a minute."
EMPTY_INSTRUCTION_TEXT = (
    "Your instruction is empty. Say what to change, e.g. `make the sky a sunset`."
)
SOURCE_GONE_TEXT = (
    "That image is no longer stored (old images are cleaned up), so it can't be edited. "
    "Nothing was charged."
)
INPUTS_GONE_TEXT = (
    "The images of that edit are no longer stored, so it can't be redone. Nothing was charged."
)
INPUTS_GONE_REASON = "the images to edit are no longer stored."
STATUS_TIMEOUT_S = 5.0
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_CHUNK = 64 * 1024

# Inputs of fresh jobs on their way to the backend, by job key: ``submit`` takes them from here
# (a job resumed after a restart reads them from the image store instead).
_pending: dict[str, tuple[bytes, ...]] = {}


def input_key(job_key: str, number: int) -> str:
    """The image row of an edit's ``number``-th input (1-based)."""
    return f"{job_key}:in{number}"


def nearest_aspect(width: int, height: int) -> str:
    """The native aspect closest to an image's shape (what the job's row and header show;
    the edit itself keeps the first image's exact ratio)."""
    ratio = width / height

    def distance(key: str) -> float:
        w, h = (int(part) for part in key.split(":"))
        return abs(w / h - ratio)

    return min(ASPECTS, key=distance) if ASPECTS else DEFAULT_ASPECT


# ---------------------------------------------------------------------- checks
async def check_editing(bot: ImagineBot) -> None:
    """Refuse at once (a ``UserError``) when nothing here can edit now."""
    try:
        status = await asyncio.wait_for(bot.backend.status(), STATUS_TIMEOUT_S)
    except Exception as exc:
        logger.warning("edit refused: the backend's status failed (%s)", exc)
        raise UserError(ENGINE_SILENT_TEXT) from None
    if TASK_EDIT in status.capabilities:
        return
    raise UserError(NO_EDIT_WORKER_TEXT if status.backend == "redis" else EDIT_OFF_TEXT)


def check_instruction(instruction: str) -> None:
    """An edit-worded answer for an empty instruction (``policy`` checks the rest)."""
    # Invisible format characters (zero-width spaces) count as nothing, as in a prompt.
    if not "".join(c for c in instruction if unicodedata.category(c) != "Cf").strip():
        raise UserError(EMPTY_INSTRUCTION_TEXT)


def upload_cap(bot: ImagineBot) -> int:
    """The byte cap on one upload: the setting, never above Discord's own."""
    return min(MAX_UPLOAD_BYTES, int(bot.settings.max_upload_mb * 2**20))


async def download(client: discord.Client, attachment: discord.Attachment, cap: int) -> bytes:
    """The attachment's bytes, reading at most ``cap`` + 1 of them: an upload that claims to be
    small but is not is cut off there, never held whole in memory. ``UploadRefused`` when it is
    over the cap or cannot be fetched."""
    name = (attachment.filename or "The image")[:80]
    too_big = UploadRefused(f"{name} is larger than {size_text(cap)}, the limit for /edit.")
    if attachment.size > cap:
        raise too_big
    http = client.http
    session = getattr(http, "_HTTPClient__session", None)
    if not isinstance(session, aiohttp.ClientSession) or session.closed:
        # A client without an HTTP session of its own (an in-process test transport): its
        # own reader, held to the same cap.
        data = await attachment.read()
        if len(data) > cap:
            raise too_big
        return data
    url = attachment.url
    if not url.startswith(("https://", "http://")):
        raise UploadRefused(f"{name} could not be downloaded from Discord.")
    data = bytearray()
    try:
        async with session.get(
            url,
            proxy=http.proxy,
            proxy_auth=http.proxy_auth,
            timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S),
        ) as response:
            if response.status != 200:
                logger.info("upload %r: the CDN answered %s", name, response.status)
                raise UploadRefused(f"{name} could not be downloaded from Discord; try again.")
            if response.content_length is not None and response.content_length > cap:
                raise too_big
            while len(data) <= cap:
                chunk = await response.content.read(min(DOWNLOAD_CHUNK, cap + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.info("upload %r: download failed (%s)", name, exc.__class__.__name__)
        raise UploadRefused(f"{name} could not be downloaded from Discord; try again.") from None
    if len(data) > cap:
        raise too_big
    return bytes(data)


async def read_uploads(
    bot: ImagineBot, attachments: list[discord.Attachment]
) -> list[ValidatedImage]:
    """Download and check every upload, in order; the first refusal is the answer."""
    cap = upload_cap(bot)
    images = []
    for attachment in attachments:
        data = await download(bot, attachment, cap)
        images.append(
            await asyncio.to_thread(
                validate_upload,
                data,
                attachment.content_type,
                attachment.filename or "The image",
                max_bytes=cap,
            )
        )
    return images


# ---------------------------------------------------------------------- inputs
async def keep_inputs(
    service: JobService,
    job_key: str,
    user_id: int,
    guild_id: int | None,
    images: tuple[bytes, ...],
) -> None:
    """Store an edit's inputs as image rows of the job (best effort, like any kept image:
    the job itself carries them; only a resume after a restart needs these)."""
    for number, png in enumerate(images, start=1):
        await service.bot.images.keep(
            job_key=input_key(job_key, number),
            user_id=user_id,
            guild_id=guild_id,
            png=png,
            sweep=False,  # kept before the quota decides: a refusal must evict nothing
        )


async def forget_inputs(service: JobService, job_key: str, count: int) -> None:
    for number in range(1, count + 1):
        await service.bot.images.forget(input_key(job_key, number))


async def stored_inputs(bot: ImagineBot, job_key: str) -> tuple[bytes, ...]:
    """An edit's inputs as the image store keeps them (empty when none is left)."""
    images = []
    for number in range(1, MAX_EDIT_IMAGES + 1):
        try:
            images.append(await bot.images.read(input_key(job_key, number)))
        except NotStored:
            break
    return tuple(images)


async def inputs_for(bot: ImagineBot, row: db.Generation) -> tuple[bytes, ...]:
    """The input images of an edit row being submitted: those of a fresh job, or, for a job
    resumed after a restart, the stored ones; ``JobFailed`` when they are gone."""
    pending = _pending.pop(row.job_key, None)
    if pending:
        return pending
    images = await stored_inputs(bot, row.job_key)
    if not images:
        raise JobFailed(FailureKind.ERROR, INPUTS_GONE_REASON)
    return images


# ---------------------------------------------------------------------- the entry points
async def _admit(
    service: JobService,
    interaction: discord.Interaction[Any],
    instruction: str,
    seed: int | None = None,
) -> policy.Admitted:
    """The server's rules for an edit, as for /imagine: the instruction is the prompt; an edit
    has no negative prompt and no style, and its size comes from its first image."""
    return await policy.admit(
        interaction,
        service.guilds,
        prompt=instruction,
        negative=None,
        style=DEFAULT_STYLE,
        aspect=DEFAULT_ASPECT,
        seed=seed,
    )


async def _start_edit(
    service: JobService,
    interaction: discord.Interaction[Any],
    guard: AckGuard,
    admitted: policy.Admitted,
    images: tuple[bytes, ...],
    *,
    aspect: str,
    mode: Mode,
    seed: int | None,
    parent_key: str | None,
) -> None:
    """Keep the inputs, then reserve, submit and announce like every job (``_start``)."""
    key = str(interaction.id)
    await keep_inputs(service, key, interaction.user.id, interaction.guild_id, images)
    _pending[key] = images
    try:
        await service._start(
            interaction,
            guard,
            admitted,
            aspect=aspect,
            mode=mode,
            seeds=[seed],
            kind=EDIT_KIND,
            parent_key=parent_key,
        )
    except UserError:
        await forget_inputs(service, key, len(images))  # refused: nothing of it stays
        raise
    finally:
        _pending.pop(key, None)


async def edit_uploads(
    service: JobService,
    interaction: discord.Interaction[Any],
    attachments: list[discord.Attachment],
    *,
    instruction: str,
    seed: int | None,
    mode: Mode,
) -> None:
    """/edit: check, download and validate the uploads, then charge, queue and answer."""
    async with AckGuard(interaction) as guard:
        await check_editing(service.bot)
        check_instruction(instruction)
        admitted = await _admit(service, interaction, instruction, seed=seed)
        if not 1 <= len(attachments) <= MAX_EDIT_IMAGES:
            raise UserError(f"Send one to {MAX_EDIT_IMAGES} images to edit.")
        try:
            uploads = await read_uploads(service.bot, attachments)
        except UploadRefused as refused:
            metrics.JOBS.labels("refused").inc()
            raise UserError(refused.user_message) from None
        first = uploads[0]
        await _start_edit(
            service,
            interaction,
            guard,
            admitted,
            tuple(image.png for image in uploads),
            aspect=nearest_aspect(first.width, first.height),
            mode=mode,
            seed=seed,
            parent_key=None,
        )


async def open_edit(bot: ImagineBot, source_key: str) -> None:
    """Before the Edit form opens: refuse (privately, nothing charged) an image that cannot be
    edited, so nobody types an instruction for nothing."""
    assert bot.db is not None
    if await db.get_generation(bot.db, source_key) is None:
        raise UserError("I can't find that image any more.")
    await check_editing(bot)
    if not await bot.images.has(source_key):
        raise UserError(SOURCE_GONE_TEXT)


async def edit_stored(
    service: JobService,
    interaction: discord.Interaction[Any],
    source_key: str,
    *,
    instruction: str,
) -> None:
    """The Edit form's answer: edit a finished image, read back from the image store."""
    async with AckGuard(interaction) as guard:
        source = await db.get_generation(service.db, source_key)
        if source is None:
            raise UserError("I can't find that image any more.")
        await check_editing(service.bot)
        check_instruction(instruction)
        admitted = await _admit(service, interaction, instruction)
        try:
            png = await service.bot.images.read(source_key)
        except NotStored:
            raise UserError(SOURCE_GONE_TEXT) from None
        # A copy of the editor's own, without the source's text chunks (its prompt): the
        # source's owner deleting or erasing their image then removes their file too.
        png = await asyncio.to_thread(without_metadata, png)
        await _start_edit(
            service,
            interaction,
            guard,
            admitted,
            (png,),
            aspect=source.aspect if source.aspect in ASPECTS else DEFAULT_ASPECT,
            mode=service.settings.default_mode,
            seed=None,
            parent_key=source.job_key,
        )


async def reroll(
    service: JobService, interaction: discord.Interaction[Any], parent: db.Generation
) -> None:
    """Reroll under an edited image: the same edit of the same inputs with a new seed."""
    async with AckGuard(interaction) as guard:
        await check_editing(service.bot)
        images = await stored_inputs(service.bot, parent.job_key)
        if not images:
            raise UserError(INPUTS_GONE_TEXT)
        admitted = await _admit(service, interaction, parent.prompt)
        await _start_edit(
            service,
            interaction,
            guard,
            admitted,
            images,
            aspect=parent.aspect,
            mode=Mode(parent.mode),
            seed=None,
            parent_key=parent.job_key,
        )
