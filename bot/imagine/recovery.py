"""Restart recovery: every job a previous run left unfinished is resumed, recorded or refunded.

Recovery works from the database alone. A job whose image the last run already posted (it
died between the upload and recording it) is found by its Reroll button's custom id and
completed from the result fields its row got before the upload; nothing reads the wording of
a message back. Every other unfinished job is submitted again under the same key (the engine
runs a key once) or, when that is impossible, refunded with its message saying so.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import discord

import db as dbmod
from bot import render
from bot.delivery import StatusMessage
from bot.imagine.finish import Finisher, shows_on
from bot.imagine.following import Follower
from bot.imagine.job import Job, Outcome, follow_job, utcnow
from bot.imagine.presenting import JobViews
from engine.contract import FailureKind, JobFailed, JobHandle


class Resuming(Protocol):
    """What recovery needs of the job service (``JobService`` is it)."""

    db: dbmod.Database
    client: discord.Client
    views: JobViews
    follower: Follower
    finish: Finisher

    async def submit(self, row: dbmod.Generation, style: dbmod.Style) -> JobHandle: ...

    async def run(self, job: Job) -> None: ...


logger = logging.getLogger(__name__)

# How many messages after the status message to search for a late reply with the image.
REPLY_SEARCH_LIMIT = 50


async def recover(service: Resuming) -> None:
    """Resume jobs a previous run left queued, running or delivering, or end them."""
    try:
        forgotten = await dbmod.forget_expired_tokens(service.db, now=utcnow())
        if forgotten:
            logger.debug("dropped %d expired interaction tokens", forgotten)
        rows = await dbmod.unfinished_generations(service.db)
    except Exception:
        logger.exception("could not read unfinished jobs")
        return
    if rows:
        logger.info("resuming %d unfinished job(s) from the last run", len(rows))
    for row in rows:
        if row.job_key in service.follower.jobs:
            continue
        try:
            await resume(service, row)
        except Exception:
            logger.exception("could not resume job %s", row.job_key)


async def resume(service: Resuming, row: dbmod.Generation) -> None:
    """Record, resubmit or refund one unfinished job of a previous run."""
    marker = service.views.renderer(row.kind).marker(row.job_key)
    delivered = await find_delivered(service.client, row, marker)
    if delivered is not None:
        # The last run posted the image, then died before writing that down: the row already
        # holds the result (written before the upload); only the message id was missing.
        await service.finish.end(
            row.job_key, Outcome.delivered(delivered.id, run_s=row.run_s, steps=row.steps)
        )
        logger.info(
            "job %s was delivered before the restart (message %s)", row.job_key, delivered.id
        )
        return
    target = StatusMessage.from_row(service.client, row)
    style = await dbmod.get_style(service.db, row.guild_id, row.style)
    failure: JobFailed | None = None
    handle: JobHandle | None = None
    if style is None:
        failure = JobFailed(
            FailureKind.INVALID, f"The style “{row.style}” was removed while the bot restarted."
        )
    elif row.message_id is None:
        failure = JobFailed(
            FailureKind.UNAVAILABLE, "The bot restarted before the job was announced."
        )
    else:
        try:
            handle = await service.submit(row, style)
        except JobFailed as exc:
            failure = exc
    if handle is None:
        failure = failure or JobFailed(FailureKind.UNAVAILABLE, "The job could not be resumed.")
        await service.finish.end(
            row.job_key,
            Outcome.failed(
                failure,
                reason=render.not_resumed_reason(failure.user_message),
                error=failure.user_message,
            ),
            show=shows_on(target),
            header=render.header_of(row),
            requester_id=row.user_id,
        )
        logger.info("job %s could not be resumed: %s", row.job_key, failure.user_message)
        return
    job = follow_job(
        row,
        target=target,
        handle=handle,
        requested_at=time.perf_counter(),
        position=await service.follower.position(row.job_key),
    )
    service.follower.follow(job, service.run)
    assert job.reporter is not None
    job.reporter.update(render.resumed_text(job.header, job.position))
    logger.info("job %s resumed after a restart", row.job_key)


async def find_delivered(
    bot: discord.Client, row: dbmod.Generation, marker: str
) -> discord.Message | None:
    """The message that already carries this job's image, if the last run posted one.

    The image replaces the status message, or (late delivery) goes out as a reply right after
    it; either way it carries a button of the job's result whose custom id (``marker``, its
    renderer's: the Reroll button's for images) names the job. Without permission to read the
    channel the answer is "unknown", and the job is rendered again.
    """
    if row.channel_id is None or row.message_id is None:
        return None
    channel = bot.get_partial_messageable(row.channel_id, guild_id=row.guild_id)
    try:
        status = await channel.fetch_message(row.message_id)
        if _carries(status, marker):
            return status
    except discord.NotFound:
        pass  # the status message was deleted; a reply may still exist
    except discord.HTTPException as exc:
        logger.info("cannot check job %s's message (%s); rendering it again", row.job_key, exc)
        return None
    me = bot.user
    try:
        async for message in channel.history(
            after=discord.Object(row.message_id), limit=REPLY_SEARCH_LIMIT
        ):
            if (me is None or message.author.id == me.id) and _carries(message, marker):
                return message
    except discord.HTTPException as exc:
        logger.info("cannot read job %s's channel (%s); rendering it again", row.job_key, exc)
    return None


def _carries(message: discord.Message, custom_id: str) -> bool:
    return bool(message.attachments) and any(
        getattr(child, "custom_id", None) == custom_id
        for row in message.components
        for child in getattr(row, "children", ())
    )
