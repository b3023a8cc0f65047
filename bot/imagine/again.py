"""Jobs made from a finished one, by the buttons under it: Reroll, Variations, Vary
(Subtle/Strong) and Remix. Each builds the new job's ``JobSpec`` from its parent's and starts it.

* Reroll: the same prompt, style, aspect and mode with a new seed, text-to-image; under an
  edit, the same edit of the same images (copied to the new job, which then owns them).
* Variations (the button images from before Vary still carry): two new seeds of the prompt.
* Vary (Subtle/Strong): image-to-image from the parent's stored image at a strength, new seed:
  about strength × steps denoising steps with the same prompt, style, aspect and mode (true CFG
  as in text mode, Lightning in fast mode).
* Remix: a strong Vary whose prompt and negative the member edited in a form first.

An image-to-image job's input is its parent's stored image, by the parent's key. Whether it is
still stored is checked *before* anything is charged: an image that retention (or its Delete
button) removed is answered privately and costs nothing. A job resumed after a restart reads
it again (``JobService.submit``); if it is gone by then, the job is refunded and says why.
"""

from __future__ import annotations

import dataclasses

import db
from bot import render
from bot.errors import UserError
from bot.images import NotStored
from bot.imagine import kinds
from bot.imagine.ack import AckGuard
from bot.imagine.service import JobService
from bot.imagine.spec import JobSpec, input_key
from engine.presets import VARY_STRONG_STRENGTH, VARY_SUBTLE_STRENGTH

VARIATION_COUNT = 2
MISSING_TEXT = "I can't find that image any more."
INPUTS_GONE_TEXT = (
    "The images of that edit are no longer stored, so it can't be redone. Nothing was charged."
)


async def parent_row(jobs: JobService, parent_key: str) -> db.Generation:
    """The finished job a button belongs to, or the answer that it is gone."""
    parent = await db.get_generation(jobs.db, parent_key)
    if parent is None:
        raise UserError(MISSING_TEXT)
    return parent


async def reroll(jobs: JobService, guard: AckGuard, parent_key: str) -> None:
    """Same parameters, new seed: a new job charged to whoever clicked."""
    parent = await parent_row(jobs, parent_key)
    spec = JobSpec.of_row(parent)
    if parent.kind in jobs.kinds and jobs.kinds[parent.kind].rerolls_inputs:
        await jobs.check_task(jobs.kinds[parent.kind].task)  # before copying anything
        inputs = await copy_inputs(jobs, guard, spec.inputs)
        again = dataclasses.replace(spec, seed=None, parent_key=parent.job_key, inputs=inputs)
    else:
        again = text_again(spec, kinds.REROLL.name, parent.job_key)
    await start_owning_inputs(jobs, guard, again)


async def variations(jobs: JobService, guard: AckGuard, parent_key: str) -> None:
    """Two more seeds of the same prompt: two new jobs."""
    parent = await parent_row(jobs, parent_key)
    spec = text_again(JobSpec.of_row(parent), kinds.VARIATION.name, parent.job_key)
    await jobs.start(guard, spec, copies=VARIATION_COUNT)


async def vary(jobs: JobService, guard: AckGuard, parent_key: str, *, strong: bool) -> None:
    """Vary (Subtle / Strong): the same request, a new seed, from the stored image."""
    parent = await stored_parent(jobs, parent_key)
    strength = VARY_STRONG_STRENGTH if strong else VARY_SUBTLE_STRENGTH
    spec = image_again(JobSpec.of_row(parent), kinds.VARY.name, parent.job_key, strength)
    await jobs.start(guard, spec)


async def remix(
    jobs: JobService, guard: AckGuard, parent_key: str, *, prompt: str, negative: str | None
) -> None:
    """The Remix form's answer: a strong variation with the edited prompt and negative.

    The edited text passes exactly the checks of /imagine (``policy.server_rules``): an empty or
    over-long prompt, or a blocked word, is refused privately and charges nothing.
    """
    parent = await stored_parent(jobs, parent_key)
    spec = JobSpec.of_row(parent)
    spec = image_again(spec, kinds.REMIX.name, parent.job_key, VARY_STRONG_STRENGTH)
    await jobs.start(guard, dataclasses.replace(spec, prompt=prompt, negative=negative))


async def open_remix(jobs: JobService, parent_key: str) -> tuple[str, str | None]:
    """The prompt and negative the Remix form starts with, or a ``UserError`` when the image
    cannot be remixed (checked before the form opens, so nobody fills it in for nothing)."""
    parent = await parent_row(jobs, parent_key)
    if not await jobs.images.has(parent_key):
        raise UserError(render.image_gone_text())
    return parent.prompt, parent.negative_prompt


# ---------------------------------------------------------------------- the specs
def text_again(spec: JobSpec, kind: str, parent_key: str) -> JobSpec:
    """Text-to-image of the parent's prompt, style, aspect and mode, with a new seed."""
    return JobSpec(
        kind=kind,
        prompt=spec.prompt,
        negative=spec.negative,
        style=spec.style,
        aspect=spec.aspect,
        mode=spec.mode,
        parent_key=parent_key,
    )


def image_again(spec: JobSpec, kind: str, parent_key: str, strength: float) -> JobSpec:
    """Image-to-image from the parent's stored image at ``strength``, with a new seed."""
    return dataclasses.replace(
        text_again(spec, kind, parent_key), strength=strength, inputs=(parent_key,)
    )


async def stored_parent(jobs: JobService, parent_key: str) -> db.Generation:
    """The parent of an image-to-image job, or a ``UserError`` when its image is no longer
    stored (nothing is charged)."""
    parent = await parent_row(jobs, parent_key)
    if not await jobs.images.has(parent_key):
        raise UserError(render.image_gone_text())
    return parent


# ---------------------------------------------------------------------- owned inputs
async def copy_inputs(jobs: JobService, guard: AckGuard, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The images of ``keys`` kept again as the inputs of the job ``guard`` answers for (the
    bytes are stored once): each job owns its inputs, so one member's erase never removes
    another's."""
    images = []
    for key in keys:
        try:
            images.append(await jobs.images.read(key))
        except NotStored:
            raise UserError(INPUTS_GONE_TEXT) from None
    if not images:
        raise UserError(INPUTS_GONE_TEXT)
    return await keep_inputs(jobs, guard, images)


async def keep_inputs(jobs: JobService, guard: AckGuard, images: list[bytes]) -> tuple[str, ...]:
    """Keep the input images of the job ``guard`` answers for in the image store, as
    ``<job_key>:in<n>`` of its requester (best effort, like any kept image); their keys are
    the job's inputs."""
    interaction = guard.interaction
    keys = []
    for number, png in enumerate(images, start=1):
        key = input_key(str(interaction.id), number)
        await jobs.images.keep(
            job_key=key,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            png=png,
            sweep=False,  # kept before the quota decides: a refusal must evict nothing
        )
        keys.append(key)
    return tuple(keys)


async def start_owning_inputs(jobs: JobService, guard: AckGuard, spec: JobSpec) -> None:
    """``start`` a job whose inputs it owns: refused, the inputs go again (nothing of a job
    that was never made stays)."""
    try:
        await jobs.start(guard, spec)
    except UserError:
        for key in spec.inputs:
            await jobs.images.forget(key)
        raise
