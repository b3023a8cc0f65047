"""Editing images: /edit on uploaded images, and the Edit button on any finished image.

An edit is a job of kind ``edit`` whose prompt is the instruction and whose inputs (up to three
images, the first the one being edited) are kept in the image store before the job starts; the
job's spec names them by key, and the engine runs Qwen-Image-Edit on them and names them in the
result's PNG chunks by SHA-256.

Everything is checked before anything is charged or queued, each refusal a private answer:
whether this bot can edit at all (``IMAGINE_EDIT_MODEL`` empty, or no edit-capable GPU worker
online) and the server's rules (``JobService.admit``: channel, instruction length, blocked
words) before any download, and
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
import dataclasses
import logging
import unicodedata

import aiohttp
import discord
import yarl

import db
from bot import metrics
from bot.errors import UserError
from bot.images import NotStored
from bot.imagine import again, kinds
from bot.imagine.ack import AckGuard
from bot.imagine.service import JobService
from bot.imagine.spec import JobSpec
from bot.uploads import (
    MAX_UPLOAD_BYTES,
    UploadChecks,
    UploadRefused,
    ValidatedImage,
    size_text,
    without_metadata,
)
from engine.contract import MAX_EDIT_IMAGES, TASK_EDIT, Mode
from engine.presets import ASPECTS, DEFAULT_ASPECT, DEFAULT_STYLE

logger = logging.getLogger(__name__)

EMPTY_INSTRUCTION_TEXT = (
    "Your instruction is empty. Say what to change, e.g. `make the sky a sunset`."
)
SOURCE_GONE_TEXT = (
    "That image is no longer stored (old images are cleaned up), so it can't be edited. "
    "Nothing was charged."
)
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_CHUNK = 64 * 1024
# Where Discord serves attachments from: an upload is fetched from these, over HTTPS, and
# never by following a redirect (an attachment's URL is the interaction's data, and nothing
# the bot fetches may be steered elsewhere).
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
DISCORD_API_HOSTS = frozenset({"discord.com", "discordapp.com"})


def attachment_url_allowed(url: str) -> bool:
    """Whether ``url`` is one an attachment may be downloaded from: HTTPS on Discord's CDN,
    or (TEST ONLY, when ``bot.endpoints`` aimed discord.py at an emulator, which the log says)
    the emulator's own origin."""
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return False
    if parsed.scheme == "https" and parsed.host in DISCORD_CDN_HOSTS:
        return True
    api = yarl.URL(discord.http.Route.BASE)
    emulated = api.host not in DISCORD_API_HOSTS
    return emulated and parsed.is_absolute() and parsed.origin() == api.origin()


def nearest_aspect(width: int, height: int) -> str:
    """The native aspect closest to an image's shape (what the job's row and header show;
    the edit itself keeps the first image's exact ratio)."""
    ratio = width / height

    def distance(key: str) -> float:
        w, h = (int(part) for part in key.split(":"))
        return abs(w / h - ratio)

    return min(ASPECTS, key=distance) if ASPECTS else DEFAULT_ASPECT


def edit_spec(instruction: str, *, aspect: str, mode: Mode, seed: int | None) -> JobSpec:
    """An edit as asked: the instruction is its prompt; it has no negative and no style, and
    its size comes from its first image (the inputs are added once they are kept)."""
    return JobSpec(
        kind=kinds.EDIT.name, prompt=instruction, style=DEFAULT_STYLE, aspect=aspect,
        mode=mode, seed=seed,
    )  # fmt: skip


# ---------------------------------------------------------------------- checks
def check_instruction(instruction: str) -> None:
    """An edit-worded answer for an empty instruction (``policy`` checks the rest)."""
    # Invisible format characters (zero-width spaces) count as nothing, as in a prompt.
    if not "".join(c for c in instruction if unicodedata.category(c) != "Cf").strip():
        raise UserError(EMPTY_INSTRUCTION_TEXT)


def upload_cap(jobs: JobService) -> int:
    """The byte cap on one upload: the setting, never above Discord's own."""
    return min(MAX_UPLOAD_BYTES, int(jobs.settings.max_upload_mb * 2**20))


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
        whole = await attachment.read()
        if len(whole) > cap:
            raise too_big
        return whole
    url = attachment.url
    if not attachment_url_allowed(url):
        logger.warning("upload %r: refused to fetch it from outside Discord's CDN", name)
        raise UploadRefused(f"{name} could not be downloaded from Discord.")
    data = bytearray()
    try:
        async with session.get(
            url,
            proxy=http.proxy,
            proxy_auth=http.proxy_auth,
            allow_redirects=False,
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
    jobs: JobService, checks: UploadChecks, attachments: list[discord.Attachment]
) -> list[ValidatedImage]:
    """Download and check every upload, in order (the checks in their own bounded pool); the
    first refusal is the answer."""
    cap = upload_cap(jobs)
    images = []
    for attachment in attachments:
        data = await download(jobs.client, attachment, cap)
        name = attachment.filename or "The image"
        images.append(await checks.validate(data, attachment.content_type, name, max_bytes=cap))
    return images


# ---------------------------------------------------------------------- the entry points
async def edit_uploads(
    jobs: JobService,
    checks: UploadChecks,
    guard: AckGuard,
    attachments: list[discord.Attachment],
    *,
    instruction: str,
    seed: int | None,
    mode: Mode,
) -> None:
    """/edit: check, download and validate the uploads, keep them, then charge, queue and
    answer. Everything that costs nothing comes first: whether anything here edits, the
    server's rules, the member's quota and queue (``JobService.admit_early``); then the
    downloads."""
    await jobs.check_task(TASK_EDIT)
    check_instruction(instruction)
    spec = edit_spec(instruction, aspect=DEFAULT_ASPECT, mode=mode, seed=seed)
    await jobs.admit_early(guard, spec)  # rules, quota and queue, before anything is downloaded
    if not 1 <= len(attachments) <= MAX_EDIT_IMAGES:
        raise UserError(f"Send one to {MAX_EDIT_IMAGES} images to edit.")
    try:
        uploads = await read_uploads(jobs, checks, attachments)
    except UploadRefused as refused:
        metrics.JOBS.labels("refused").inc()
        raise UserError(refused.user_message) from None
    first = uploads[0]
    inputs = await again.keep_inputs(jobs, guard, [image.png for image in uploads])
    spec = edit_spec(
        instruction, aspect=nearest_aspect(first.width, first.height), mode=mode, seed=seed
    )
    await again.start_owning_inputs(jobs, guard, dataclasses.replace(spec, inputs=inputs))


async def open_edit(jobs: JobService, source_key: str) -> None:
    """Before the Edit form opens: refuse (privately, nothing charged) an image that cannot be
    edited, so nobody types an instruction for nothing."""
    if await db.get_generation(jobs.db, source_key) is None:
        raise UserError(again.MISSING_TEXT)
    await jobs.check_task(TASK_EDIT)
    if not await jobs.images.has(source_key):
        raise UserError(SOURCE_GONE_TEXT)


async def edit_stored(
    jobs: JobService, guard: AckGuard, source_key: str, *, instruction: str
) -> None:
    """The Edit form's answer: edit a finished image, read back from the image store."""
    source = await again.parent_row(jobs, source_key)
    await jobs.check_task(TASK_EDIT)
    check_instruction(instruction)
    aspect = source.aspect if source.aspect in ASPECTS else DEFAULT_ASPECT
    spec = edit_spec(instruction, aspect=aspect, mode=jobs.settings.default_mode, seed=None)
    spec = dataclasses.replace(spec, parent_key=source.job_key)
    await jobs.admit_early(guard, spec)
    try:
        png = await jobs.images.read(source_key)
    except NotStored:
        raise UserError(SOURCE_GONE_TEXT) from None
    # A copy of the editor's own, without the source's text chunks (its prompt): the
    # source's owner deleting or erasing their image then removes their file too.
    png = await asyncio.to_thread(without_metadata, png)
    inputs = await again.keep_inputs(jobs, guard, [png])
    await again.start_owning_inputs(jobs, guard, dataclasses.replace(spec, inputs=inputs))
