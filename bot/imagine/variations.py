"""Images from images: Vary (Subtle / Strong) and Remix, image-to-image from a stored image.

A variation is a new job whose row names its parent (``parent_key``) and its ``strength``; the
engine re-noises the parent's stored PNG by that strength and runs about strength × steps
denoising steps with the same prompt, style, aspect and mode (true CFG as in text mode,
Lightning in fast mode) and a new seed. Remix is a strong variation whose prompt and negative
prompt the member edited in a form first.

The parent's PNG is read from the image store *before* anything is charged: an image that
retention (or its Delete button) removed is answered privately and costs nothing. A variation
resumed after a restart reads it again (``parent_png``); if it is gone by then, the job is
refunded and its message says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

import db
from bot import render
from bot.errors import UserError
from bot.images import NotStored
from bot.imagine.ack import AckGuard
from engine.contract import FailureKind, JobFailed
from engine.presets import VARY_STRONG_STRENGTH, VARY_SUBTLE_STRENGTH

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.imagine.service import JobService


async def parent_png(bot: ImagineBot, parent_key: str | None) -> bytes:
    """The stored PNG a variation starts from, or ``JobFailed`` when it is no longer stored."""
    if parent_key is not None:
        try:
            return await bot.images.read(parent_key)
        except NotStored:
            pass
    raise JobFailed(FailureKind.ERROR, render.source_gone_reason())


async def parent_of(service: JobService, parent_key: str) -> tuple[db.Generation, bytes]:
    """The parent's row and stored PNG, or a ``UserError`` (nothing is charged)."""
    parent = await db.get_generation(service.db, parent_key)
    if parent is None:
        raise UserError("I can't find that image any more.")
    try:
        png = await service.bot.images.read(parent_key)
    except NotStored:
        raise UserError(render.image_gone_text()) from None
    return parent, png


async def vary(
    service: JobService, interaction: discord.Interaction[Any], parent_key: str, *, strong: bool
) -> None:
    """Vary (Subtle / Strong): the same request, a new seed, from the stored image."""
    strength = VARY_STRONG_STRENGTH if strong else VARY_SUBTLE_STRENGTH
    await _from_stored(
        service, interaction, parent_key, kind=db.GenerationKind.VARIATION, strength=strength
    )


async def remix(
    service: JobService,
    interaction: discord.Interaction[Any],
    parent_key: str,
    *,
    prompt: str,
    negative: str | None,
) -> None:
    """The Remix form's answer: a strong variation with the edited prompt and negative.

    The edited text passes exactly the checks of /imagine (``policy.admit``): an empty or
    over-long prompt, or a blocked word, is refused privately and charges nothing.
    """
    await _from_stored(
        service,
        interaction,
        parent_key,
        kind=db.GenerationKind.REMIX,
        strength=VARY_STRONG_STRENGTH,
        text=(prompt, negative),
    )


async def _from_stored(
    service: JobService,
    interaction: discord.Interaction[Any],
    parent_key: str,
    *,
    kind: str,
    strength: float,
    text: tuple[str, str | None] | None = None,
) -> None:
    """A new job rendered from the parent's stored PNG (read before anything is charged)."""
    async with AckGuard(interaction) as guard:
        parent, png = await parent_of(service, parent_key)
        await service.start_from(
            interaction, guard, parent, kind=kind, text=text, strength=strength, init_image=png
        )


async def open_remix(bot: ImagineBot, parent_key: str) -> tuple[str, str | None]:
    """The prompt and negative the Remix form starts with, or a ``UserError`` when the image
    cannot be remixed (checked before the form opens, so nobody fills it in for nothing)."""
    assert bot.db is not None
    parent = await db.get_generation(bot.db, parent_key)
    if parent is None:
        raise UserError("I can't find that image any more.")
    if not await bot.images.has(parent_key):
        raise UserError(render.image_gone_text())
    return parent.prompt, parent.negative_prompt
