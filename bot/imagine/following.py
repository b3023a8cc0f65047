"""Following jobs while they wait and render: live progress edits, places in line, and the
tasks that wait for each result.

Engine progress arrives once per denoising step; each job's ``ProgressReporter`` turns it into
sparse edits of its status message. When the line moves, waiting members are told their new
place, sparingly far back in a long line (Discord's rate limit is shared by every job).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
from collections.abc import Callable, Coroutine

import discord

import db
from bot import metrics, render
from bot.imagine.job import Job, utcnow
from bot.imagine.presenting import JobViews
from bot.progress import ProgressReporter
from engine.contract import ImageBackend, Progress, ProgressCallback

logger = logging.getLogger(__name__)

# A preview is a small JPEG or WebP (at most 256 px on its long side, a few KB); anything larger,
# or not one of those, is not attached (through Redis it came from outside this process).
MAX_PREVIEW_BYTES = 64 * 1024


def preview_name(data: bytes) -> str | None:
    """The attachment name for a preview, or None when it is not a small JPEG or WebP."""
    if len(data) > MAX_PREVIEW_BYTES:
        return None
    if data.startswith(b"\xff\xd8\xff"):
        return "preview.jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "preview.webp"
    return None


# At shutdown, how long a job that is already delivering (or reporting its failure) may take to
# finish: cutting it off mid-upload would leave the row unfinished, and the next start would
# have to look for the image before it could end the job.
FINISH_GRACE_S = 20.0


class Follower:
    """The jobs this process follows, by key, and every task working for them."""

    def __init__(
        self,
        backend: ImageBackend,
        database: db.Database,
        *,
        views: JobViews,
        interval_s: float,
    ) -> None:
        self._backend = backend
        self._database = database
        self._views = views
        self._interval_s = interval_s
        self.jobs: dict[str, Job] = {}
        # Progress that arrived before the job's status message existed.
        self._early: dict[str, Progress] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresh_pending = False
        # A line under the place in line while the engine's model loads (bot.presence).
        self.note: Callable[[], str | None] = lambda: None
        self.closing = False

    def spawn(
        self, coro: Coroutine[object, None, None], *, context: contextvars.Context | None = None
    ) -> asyncio.Task[None]:
        """A task this follower owns: kept alive until done, cancelled at ``close``."""
        loop = asyncio.get_running_loop()
        task = (
            loop.create_task(coro, context=context)
            if context is not None
            else loop.create_task(coro)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def owners(self) -> dict[str, int]:
        """Requester of every job this process follows, by job key."""
        return {key: job.user_id for key, job in self.jobs.items()}

    # ------------------------------------------------------------------ progress
    def on_progress(self, key: str) -> ProgressCallback:
        """The engine's per-step callback for one job (cheap: it runs once per step)."""

        def on_progress(progress: Progress) -> None:
            job = self.jobs.get(key)
            if job is None:
                self._early[key] = progress
                return
            job.progress = progress
            if progress.preview is not None and preview_name(progress.preview) is not None:
                job.preview = progress.preview  # the next edit shows the newest one
            if not job.running:
                job.running = True
                self.spawn(self._mark_running(key), context=job.context)
            if job.reporter is not None:
                job.reporter.update(f"{job.header}\n{render.progress_line(progress)}")

        return on_progress

    async def _mark_running(self, key: str) -> None:
        try:
            await db.mark_running(self._database, key, now=utcnow())
        except Exception:
            logger.exception("could not mark job %s running", key)
        await self.refresh_positions()

    def follow(
        self,
        job: Job,
        run: Callable[[Job], Coroutine[object, None, None]],
        *,
        shown_text: str | None = None,
    ) -> None:
        """Start following ``job``: its progress edits, then ``run(job)`` until it ends.

        ``shown_text`` is what its message shows already (so the first edit waits a full
        interval instead of repeating it).
        """

        async def edit(text: str) -> None:
            preview, job.preview = job.preview, None
            if preview is None:
                await job.target.edit(content=text, view=self._views.status_view(job.key))
                return
            # At most one preview per edit, replacing the one before. The upload runs as its
            # own task so that the final image can abandon it (Job.stop_progress) rather than
            # wait for it; the final edit replaces every attachment anyway.
            file = discord.File(
                io.BytesIO(preview),
                filename=preview_name(preview) or "",
                description=render.preview_alt_text(job.progress),
            )
            upload = asyncio.ensure_future(
                job.target.edit(
                    content=text, view=self._views.status_view(job.key), attachments=[file]
                )
            )
            job.preview_upload = upload
            try:
                await upload
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                logger.debug("job %s: preview upload abandoned for the final image", job.key)
            finally:
                job.preview_upload = None

        job.reporter = ProgressReporter(edit, interval=self._interval_s, label=job.key)
        if shown_text is not None:
            job.reporter.mark_shown(shown_text)
        self.jobs[job.key] = job
        early = self._early.pop(job.key, None)
        if early is not None:
            self.on_progress(job.key)(early)
        metrics.QUEUE_DEPTH.set(len(self.jobs))
        job.task = self.spawn(run(job), context=job.context)
        if len(self.jobs) > 1:
            # The fair queue may have put this job ahead of others (a newcomer's first image
            # goes before a member's later ones): their places change too.
            self._refresh_soon()

    def _refresh_soon(self) -> None:
        """One refresh of the places in line for a burst of new jobs, not one per job."""
        if self._refresh_pending or self.closing:
            return
        self._refresh_pending = True

        async def refresh() -> None:
            await asyncio.sleep(0)  # the other jobs of the same burst join first
            self._refresh_pending = False
            await self.refresh_positions()

        self.spawn(refresh())

    def release(self, key: str, *, line_moved: bool = True) -> None:
        """Stop following a job that ended; the members behind it move up."""
        self.jobs.pop(key, None)
        self._early.pop(key, None)
        metrics.QUEUE_DEPTH.set(len(self.jobs))
        if line_moved and not self.closing:
            self.spawn(self.refresh_positions())

    def drop_early(self, key: str) -> None:
        """Forget progress of a job that will never be followed (its message failed)."""
        self._early.pop(key, None)

    # ------------------------------------------------------------------ places in line
    async def position(self, key: str) -> int | None:
        try:
            return await self._backend.position(key)
        except Exception as exc:  # a position is a nicety; never fail a job for it
            logger.debug("position of %s unavailable: %s", key, exc)
            return None

    async def refresh_positions(self) -> None:
        """Tell waiting members their new place in line when the line moves."""
        for job in list(self.jobs.values()):
            if job.running or job.reporter is None or job.reporter.closed:
                continue
            position = await self.position(job.key)
            if position is None or position == job.position:
                continue
            previous, job.position = job.position, position
            # Near the front every step counts; far back, only every tenth place is worth an
            # edit: a long line must not spend Discord's rate limit on "position 143".
            if position <= 10 or previous is None or position // 10 != previous // 10:
                job.reporter.update(self.queued_text(job.header, position))

    def queued_text(self, header: str, position: int | None) -> str:
        """A waiting job's message: its header, its place in line, and while the model is
        still loading, that it is (so nobody waits in silence)."""
        note = self.note()
        text = f"{header}\n{render.queued_line(position)}"
        return f"{text}\n{note}" if note else text

    # ------------------------------------------------------------------ shutdown
    async def close(self, *, grace_s: float = FINISH_GRACE_S) -> None:
        """Stop following jobs; their rows stay unfinished so the next start resumes them.

        A job already delivering (or telling its failure) gets ``grace_s`` to finish: its row
        is written down before the upload, but a finished job needs no search at the next start.
        """
        self.closing = True
        finishing = [
            job.task
            for job in self.jobs.values()
            if job.finishing and job.task is not None and not job.task.done()
        ]
        for job in list(self.jobs.values()):
            if job.reporter is not None:
                job.reporter.abandon()
        if finishing:
            logger.info("waiting for %d job(s) that are being delivered", len(finishing))
            _, late = await asyncio.wait(finishing, timeout=grace_s)
            if late:
                logger.warning(
                    "%d delivery(ies) did not finish in time; they resume at the next start",
                    len(late),
                )
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
