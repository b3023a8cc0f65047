"""How a job ends: the image uploaded, or the failure told; always the row, the metric and
the message together.

``Finisher.end`` is the one end-of-job path. An image delivered, an engine failure, a cancel, an
upload Discord refused, a reply nobody could see and a job a restart could not resume all go
through it: the row is recorded (done, or failed/cancelled with the quota unit refunded exactly
once), the ``imagine_jobs_total`` outcome is counted, and the member is shown the ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable

import discord

import db
from bot import metrics, render
from bot.delivery import MessageGone, StatusMessage, fit_to_limit
from bot.imagine.deps import JobDeps
from bot.imagine.job import Job, Outcome, utcnow
from bot.imagine.presenting import Shown
from bot.store import StoredImage
from engine.contract import FailureKind, JobFailed, JobResult

logger = logging.getLogger(__name__)

Show = Callable[[str], Awaitable[None]]

# Pauses between attempts to record a delivered image as done (a busy or briefly unreachable
# database); after the last one the row waits for the next start's recovery.
RECORD_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 2.0, 5.0)
# How long a delivery waits to hear what the backend runs (which buttons to show).
STATUS_TIMEOUT_S = 2.0


def shows_on(target: StatusMessage) -> Show:
    """A job's message becomes the text of its ending: no image, no buttons left to press."""

    async def show(text: str) -> None:
        await target.edit(content=text, embed=None, attachments=[], view=None)

    return show


class Finisher:
    """Ends jobs: ``deliver`` for a result, ``end`` for every outcome."""

    def __init__(self, deps: JobDeps) -> None:
        self.client = deps.client
        self.db = deps.database
        self.images = deps.images
        self.views = deps.views
        self.backend = deps.backend

    async def deliver(self, job: Job, result: JobResult) -> str:
        """Write the result down, upload the image, then end the job as done.

        The row holds the whole result *before* the upload (status ``delivering``): a crash in
        the middle of it leaves the next start everything it needs without reading anything
        back from Discord but the message's buttons.
        """
        await job.stop_progress()
        image = result.image
        fields = db.JobResultFields(
            seed=image.seed,
            width=image.width,
            height=image.height,
            steps=result.steps,
            true_cfg_scale=result.true_cfg_scale,
            mode_used=str(result.mode),
            model=result.model,
            queued_s=result.queued_s,
            run_s=result.run_s,
            worker=result.worker,
            note=result.note,
            model_prompt=result.full_prompt,
            model_negative=result.negative_prompt,
        )
        row = await db.record_result(self.db, job.key, fields, now=utcnow())
        if row.finished:
            # Exactly once: a finished row was delivered (or ended) already.
            logger.info("job %s already %s; not posting it again", job.key, row.status)
            return str(row.status)
        # The image is kept while it uploads: a full disk never delays or stops the delivery.
        keeping = asyncio.create_task(
            self.images.keep(
                job_key=job.key, user_id=job.user_id, guild_id=job.guild_id, png=image.png
            ),
            name=f"keep-{job.key}",
        )
        try:
            return await self._upload(job, result, keeping)
        finally:
            # keep() never raises. A shutdown that cuts the upload short lets it finish.
            if not keeping.done():
                await asyncio.shield(keeping)

    async def _upload(
        self, job: Job, result: JobResult, keeping: asyncio.Task[StoredImage | None]
    ) -> str:
        """Put the image in the job's message (or a reply), then end the job as done once the
        image is also kept (so a done job's Vary buttons find it)."""
        requester = job.requester or self.client.get_user(job.user_id)
        if requester is None:  # a job resumed after a restart: only its id is known
            with contextlib.suppress(discord.HTTPException):
                requester = await self.client.fetch_user(job.user_id)
        renderer = self.views.renderer(job.kind)
        png, stem = renderer.file(result)
        tasks = await self._tasks()

        async def make_file(limit: int) -> tuple[discord.File, str | None]:
            data, filename, note = await asyncio.to_thread(fit_to_limit, png, limit, stem)
            alt = render.alt_text(job.kind, result.prompt)
            return discord.File(io.BytesIO(data), filename=filename, description=alt), note

        def embed_for(filename: str, note: str | None) -> discord.Embed:
            shown = Shown(requester, job.user_id, filename, note, job.negative)
            return renderer.embed(result, shown)

        try:
            message_id = await job.target.deliver(
                make_file=make_file,
                embed_for=embed_for,
                view=renderer.view(job.key, tasks),
                done_text=render.delivered_elsewhere_text(job.header),
            )
        except (discord.HTTPException, MessageGone) as exc:
            logger.error("job %s: the image could not be delivered: %s", job.key, exc)
            failure = JobFailed(FailureKind.ERROR, "Discord did not accept the finished image here")
            ending = Outcome.failed(failure, error=f"could not deliver the image: {exc}")
            await self.end_job(job, ending)
            await asyncio.shield(keeping)
            await self.images.forget(job.key)  # nobody saw it: nothing to vary
            return "undeliverable"
        await asyncio.shield(keeping)
        return await self._record_delivered(job, message_id, result)

    async def _tasks(self) -> frozenset[str] | None:
        """What the backend runs now, for the result's buttons (None: it did not say in time;
        then every button shows, and pressing one checks)."""
        try:
            status = await asyncio.wait_for(self.backend.status(), STATUS_TIMEOUT_S)
        except Exception as exc:
            logger.debug("the backend's tasks are unknown at delivery: %s", exc)
            return None
        return frozenset(status.capabilities)

    async def _record_delivered(self, job: Job, message_id: int | None, result: JobResult) -> str:
        """Record a delivered job as done. An image the member has is never taken back: a
        database error here is retried, and if the database stays down the row is left as it
        is (``delivering``, the result on it) for the next start's recovery, which finds the
        image by its buttons and records it; never a "failed" edit or a refund."""
        outcome = Outcome.delivered(message_id, run_s=result.run_s, steps=result.steps)
        for attempt, delay in enumerate((*RECORD_RETRY_DELAYS_S, None), start=1):
            try:
                return await self.end_job(job, outcome)
            except Exception as exc:
                if delay is None:
                    logger.error(
                        "job %s: the image was delivered but could not be recorded (%s); "
                        "the next start records it",
                        job.key,
                        exc,
                    )
                    return "delivered, not recorded"
                logger.warning(
                    "job %s: recording the delivered image failed (attempt %d: %s); retrying",
                    job.key,
                    attempt,
                    exc,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def end(
        self,
        key: str,
        outcome: Outcome,
        *,
        show: Show | None = None,
        header: str = "",
        requester_id: int = 0,
    ) -> str:
        """End a job: record it (done, or failed/cancelled with its quota unit refunded),
        count it, and show the member its ending through ``show``. Returns the row's status.

        A job the row says is done already (someone delivered it) is never turned into a
        failure; its image is never overwritten with an error.
        """
        now = utcnow()
        if outcome.status == db.GenerationStatus.DONE:
            row = await db.complete_generation(self.db, key, message_id=outcome.message_id, now=now)
            if row.status == db.GenerationStatus.DONE:
                metrics.JOBS.labels("done").inc()
                if outcome.run_s is not None:
                    metrics.SECONDS_PER_IMAGE.observe(outcome.run_s)
                    if outcome.steps:
                        metrics.SECONDS_PER_STEP.observe(outcome.run_s / outcome.steps)
            return str(row.status)
        row = await db.fail_generation(
            self.db,
            key,
            status=outcome.status,
            error=outcome.error if outcome.error is not None else outcome.reason,
            now=now,
        )
        if row.status == db.GenerationStatus.DONE:
            return str(row.status)
        metrics.JOBS.labels(outcome.metric or str(row.status)).inc()
        if show is not None:
            try:
                await show(outcome.text(header, requester_id))
            except (discord.HTTPException, MessageGone) as exc:
                logger.warning("could not show how job %s ended: %s", key, exc)
        return str(row.status)

    async def end_job(self, job: Job, outcome: Outcome) -> str:
        """``end`` for a job this process follows: its message shows the ending."""
        return await self.end(
            job.key,
            outcome,
            show=shows_on(job.target),
            header=job.header,
            requester_id=job.user_id,
        )
