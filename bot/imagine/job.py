"""A job as this process follows it, and how it ends.

``follow_job`` is the one place that builds a ``Job``, from the job's database row, so a fresh
/imagine, a button and a job resumed after a restart cannot drift apart (``spec.request_for``
is the one place that builds its ``JobRequest``). ``Outcome`` says how a job ended;
``Finisher.end`` turns it into the row, the metric and the message.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt

import discord

import db
from bot import render
from bot.delivery import StatusMessage
from bot.progress import ProgressReporter
from engine.contract import FailureKind, JobFailed, JobHandle, Progress


def utcnow() -> dt.datetime:
    """Discord's notion of now (quota days, token ages) in one place."""
    return discord.utils.utcnow()


@dataclasses.dataclass(eq=False)
class Job:
    """A job this process is following: its handle, its message and its progress."""

    key: str
    kind: str
    user_id: int
    guild_id: int | None
    header: str
    target: StatusMessage
    handle: JobHandle
    context: contextvars.Context
    requested_at: float
    requester: discord.abc.User | None = None
    negative: str | None = None
    reporter: ProgressReporter | None = None
    progress: Progress | None = None
    running: bool = False
    cancelled_by: int | None = None
    position: int | None = None
    finishing: bool = False  # the engine answered; delivery or the failure notice is under way
    task: asyncio.Task[None] | None = None
    # The newest preview of the image forming, not shown yet, and the edit uploading one.
    preview: bytes | None = None
    preview_upload: asyncio.Future[None] | None = None

    async def stop_progress(self) -> None:
        """No progress edit after this: a preview upload in flight is abandoned (the final
        image must not wait for it; the final edit replaces every attachment), and a text edit
        on the wire is waited for (cut off, it could still land after the final edit)."""
        if self.preview_upload is not None and not self.preview_upload.done():
            self.preview_upload.cancel()
        if self.reporter is not None:
            await self.reporter.close()


def follow_job(
    row: db.Generation,
    *,
    target: StatusMessage,
    handle: JobHandle,
    requested_at: float,
    requester: discord.abc.User | None = None,
    position: int | None = None,
) -> Job:
    """The ``Job`` for a reserved (or resumed) row whose request the backend accepted."""
    return Job(
        key=row.job_key,
        kind=row.kind,
        user_id=row.user_id,
        guild_id=row.guild_id,
        header=render.header_of(row),
        target=target,
        handle=handle,
        context=contextvars.copy_context(),
        requested_at=requested_at,
        requester=requester,
        negative=row.negative_prompt,
        position=position,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended: what its row, the metrics and its message get.

    ``reason`` is what the member reads; ``error`` (default: the reason) is what the row keeps.
    ``metric`` is the ``imagine_jobs_total`` outcome (default: the row's final status).
    """

    status: db.GenerationStatus
    reason: str = ""
    kind: FailureKind = FailureKind.ERROR
    error: str | None = None
    metric: str | None = None
    cancelled_by: int | None = None
    message_id: int | None = None
    run_s: float | None = None
    steps: int | None = None

    @classmethod
    def delivered(
        cls, message_id: int | None, *, run_s: float | None = None, steps: int | None = None
    ) -> Outcome:
        return cls(db.GenerationStatus.DONE, message_id=message_id, run_s=run_s, steps=steps)

    @classmethod
    def failed(
        cls,
        failure: JobFailed,
        *,
        reason: str | None = None,
        error: str | None = None,
        metric: str | None = None,
        cancelled_by: int | None = None,
    ) -> Outcome:
        """The engine (or the bot) gave up on the job; a cancel stays a cancel."""
        if failure.kind == FailureKind.CANCELLED:
            return cls(
                db.GenerationStatus.CANCELLED,
                failure.user_message,
                failure.kind,
                metric=metric,
                cancelled_by=cancelled_by,
            )
        return cls(
            db.GenerationStatus.FAILED,
            reason if reason is not None else failure.user_message,
            failure.kind,
            error=error,
            metric=metric,
        )

    @classmethod
    def cancelled(cls, by_user_id: int | None) -> Outcome:
        return cls(
            db.GenerationStatus.CANCELLED,
            "Cancelled.",
            FailureKind.CANCELLED,
            cancelled_by=by_user_id,
        )

    def text(self, header: str, requester_id: int) -> str:
        """The job's message after a failure or a cancel; every one says the unit came back."""
        if self.status == db.GenerationStatus.CANCELLED:
            return render.cancelled_text(header, self.cancelled_by, requester_id, refunded=True)
        return render.failure_text(header, self.kind, self.reason, refunded=True)
