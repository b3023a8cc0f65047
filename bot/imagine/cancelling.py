"""The Cancel button: stop a job that waits or renders, whoever in this process follows it.

A job this process follows is cancelled in the backend and ends through its own path (its
message turns into "Cancelled"); a job nobody here follows (the backend lost it, or it was
never resumed) is dropped from the backend and ended here, through the same ``Finisher``.
"""

from __future__ import annotations

from typing import Protocol

import db as dbmod
from bot import errors, render
from bot.errors import UserError
from bot.imagine.finish import Finisher
from bot.imagine.following import Follower
from bot.imagine.job import Outcome
from bot.interaction import Interaction
from engine.contract import ImageBackend


class Cancelling(Protocol):
    """What cancelling needs of the job service (``JobService`` is it)."""

    db: dbmod.Database
    backend: ImageBackend
    follower: Follower
    finish: Finisher


async def cancel(service: Cancelling, interaction: Interaction, key: str) -> None:
    """Stop a waiting or rendering job (who may: ``views.CancelButton`` checks it)."""
    row = await dbmod.get_generation(service.db, key)
    if row is None:
        raise UserError("I can't find that image any more.")
    if row.finished:
        raise UserError("This generation has already finished.")
    job = service.follower.jobs.get(key)
    if job is not None:
        job.cancelled_by = interaction.user.id
        if not await service.backend.cancel(key):
            raise UserError("It's too late to cancel: the image is being delivered.")
        # One answer: the click is acknowledged silently and the job's own ending turns
        # its message into "Cancelled" (and says the unit came back); no private
        # "Cancelled" besides it.
        await interaction.response.defer()
        return
    # Nobody in this process follows the job (the backend lost it, or it was never
    # resumed): make sure the backend drops it, then end it here.
    await service.backend.cancel(key)

    async def show(text: str) -> None:
        await interaction.response.edit_message(
            content=text, view=None, allowed_mentions=errors.NO_MENTIONS
        )

    status = await service.finish.end(
        key,
        Outcome.cancelled(interaction.user.id),
        show=show,
        header=render.header_of(row),
        requester_id=row.user_id,
    )
    if status == dbmod.GenerationStatus.DONE:
        raise UserError("It's too late to cancel: the image was already delivered.")
    if not interaction.response.is_done():  # the message could not be edited
        await errors.send_ephemeral(interaction, "Cancelled.")
