"""The messages the bot and the GPU workers exchange through Redis: one definition, versioned.

Every message carries ``v`` (``WIRE_VERSION``). A reader accepts only its own version and the
shape defined here (unknown extra fields are ignored, so a field can be added without a new
version; removing or retyping one needs ``v`` 2). Whatever else arrives (another version, broken
JSON, a wrong type, a missing field) raises ``WireError``; the loop that read it logs it
(``log_skipped``) and goes on with the next message. Redis content is untrusted input: a bad
message never ends a loop, a worker or the bot.

Messages:

* ``JobMessage`` — bot -> worker, the one argument of the taskiq task;
* ``Marker`` — bot, stored while a job is with the workers;
* ``Event`` — worker -> bot on the events channel: ``started``, ``progress``, ``done``,
  ``worker`` (a worker came or went);
* ``ResultEnvelope`` — worker -> bot, the stored outcome of a job (an image or a failure);
* ``Heartbeat`` — worker -> bot, what ``/status`` shows and how many jobs a worker takes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
import time
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from engine.contract import (
    CAPABILITY_GENERATE,
    JobFailed,
    JobRequest,
    JobResult,
    Progress,
    WorkerInfo,
)

logger = logging.getLogger(__name__)

WIRE_VERSION = 1
# A progress event's preview, base64: a 256 px JPEG is a few KB; this leaves room and keeps
# every event small on the events channel.
MAX_PREVIEW_B64_CHARS = 64 * 1024


class WireError(ValueError):
    """A message this version cannot read: another version, or not the shape defined here."""


class WorkerState(enum.StrEnum):
    """Where a worker is in its life; only ``idle`` and ``busy`` workers take jobs."""

    STARTING = "starting"
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    GONE = "gone"

    @property
    def ready(self) -> bool:
        return self in (WorkerState.IDLE, WorkerState.BUSY)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = WIRE_VERSION

    def dumps(self) -> str:
        """The JSON that goes to Redis."""
        return self.model_dump_json()


# ----------------------------------------------------------------------------- bot -> worker
class JobMessage(_Message):
    """One image job as the bot hands it to the broker."""

    request: dict[str, Any]  # JobRequest.to_dict(); read back with ``job()``
    submitted_at: float  # when the member asked (wall clock), for the queue time
    dispatched_at: float  # when the bot handed it to the broker (ack latency, stale entries)
    attempt: int = Field(ge=1)
    # The capability a worker needs to run it (JobRequest.needs); it also chose the stream the
    # job went to. Absent in messages of older bots: text-to-image.
    needs: str = Field(CAPABILITY_GENERATE, max_length=32)

    @classmethod
    def of(
        cls, request: JobRequest, *, submitted_at: float, dispatched_at: float, attempt: int
    ) -> JobMessage:
        return cls(
            request=request.to_dict(),
            submitted_at=submitted_at,
            dispatched_at=dispatched_at,
            attempt=attempt,
            needs=request.needs,
        )

    def job(self) -> JobRequest:
        """The request inside, or ``WireError`` when it is not a ``JobRequest`` (a request
        that is one but carries bad input raises ``JobFailed(INVALID)``, as it would anywhere)."""
        try:
            return JobRequest.from_dict(self.request)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise WireError(f"job request unreadable: {exc}") from None


class Marker(_Message):
    """Stored by the bot while a job is with the workers (its existence is what counts)."""

    user_id: int
    submitted_at: float
    dispatched_at: float
    attempt: int


# ----------------------------------------------------------------------------- worker -> bot
class StartedEvent(_Message):
    type: Literal["started"] = "started"
    job_id: str
    worker: str


class ProgressEvent(_Message):
    """A denoising step finished; on some steps with a small preview of the image forming
    (base64 JPEG or WebP, at most ``MAX_PREVIEW_B64_CHARS``; a bigger one is never sent)."""

    type: Literal["progress"] = "progress"
    job_id: str
    worker: str
    step: int = Field(ge=0)
    total: int = Field(ge=0)
    elapsed_s: float
    sec_per_step: float
    # Optional and added without a new version: a reader of version 1 without this field
    # ignores it (extra fields are ignored), and one with it refuses a preview that is not
    # base64 or too large, like any other malformed message.
    preview: str | None = Field(None, min_length=4, max_length=MAX_PREVIEW_B64_CHARS)

    @field_validator("preview")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("preview is not base64") from None
        return value

    @classmethod
    def of(
        cls,
        job_id: str,
        worker: str,
        step: int,
        total: int,
        elapsed_s: float,
        sec_per_step: float,
        preview: bytes | None = None,
    ) -> ProgressEvent:
        """The event for one step; a preview too large for the wire is dropped (the step is
        still reported)."""
        encoded = base64.b64encode(preview).decode("ascii") if preview else None
        if encoded is not None and len(encoded) > MAX_PREVIEW_B64_CHARS:
            logger.debug("job %s: preview of %d bytes dropped (too large)", job_id, len(preview))
            encoded = None
        return cls(
            job_id=job_id,
            worker=worker,
            step=step,
            total=total,
            elapsed_s=elapsed_s,
            sec_per_step=sec_per_step,
            preview=encoded,
        )

    def progress(self) -> Progress:
        preview = base64.b64decode(self.preview) if self.preview is not None else None
        return Progress(
            self.job_id, self.step, self.total, self.elapsed_s, self.sec_per_step, preview=preview
        )


class DoneEvent(_Message):
    """A result was saved. ``written``: it was the first one stored (others are dropped)."""

    type: Literal["done"] = "done"
    job_id: str
    worker: str
    written: bool = True


class WorkerEvent(_Message):
    """A worker became ready, or left: the bot re-reads heartbeats at once."""

    type: Literal["worker"] = "worker"
    worker: str
    state: WorkerState


Event = Annotated[
    StartedEvent | ProgressEvent | DoneEvent | WorkerEvent, Field(discriminator="type")
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


class ResultEnvelope(_Message):
    """What a worker stores as the taskiq result: an image or a failure the member can read."""

    ok: bool
    result: dict[str, Any] | None = None  # JobResult.to_dict()
    error: dict[str, Any] | None = None  # JobFailed.to_dict()

    @classmethod
    def success(cls, result: JobResult) -> ResultEnvelope:
        return cls(ok=True, result=result.to_dict())

    @classmethod
    def failure(cls, failed: JobFailed) -> ResultEnvelope:
        return cls(ok=False, error=failed.to_dict())

    def outcome(self) -> JobResult | JobFailed:
        """The image or the failure inside, or ``WireError`` when it is not readable."""
        try:
            if self.ok and self.result is not None:
                return JobResult.from_dict(self.result)
            if not self.ok and self.error is not None:
                return JobFailed.from_dict(self.error)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise WireError(f"result unreadable: {exc}") from None
        raise WireError("result envelope holds neither a result nor an error")


class Heartbeat(_Message):
    """A worker's announcement, renewed every ``IMAGINE_HEARTBEAT_S``."""

    name: str
    consumer: str
    host: str
    pid: int
    state: WorkerState
    capacity: int = Field(ge=0)  # jobs it takes now: 1 when ready, 0 otherwise
    gpu: str
    memory_gb: float = Field(ge=0)
    memory_mode: str
    model: str
    fast_available: bool
    current_job: str | None = None
    jobs_done: int = Field(ge=0)
    sec_per_step: float | None = None
    started_at: float
    last_seen: float
    # What it runs: "generate", plus "edit" when its edit model loaded. Absent in heartbeats
    # of older workers: text-to-image only.
    capabilities: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=lambda: [CAPABILITY_GENERATE], max_length=8
    )

    # The models whose transformer is on its GPU now (one of two when both don't fit).
    resident_models: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=8
    )

    def can(self, capability: str) -> bool:
        """Whether this worker runs jobs that need ``capability``."""
        return capability in self.capabilities

    def info(self) -> WorkerInfo:
        """The worker as ``/status`` shows it."""
        return WorkerInfo(
            name=self.name,
            gpu=self.gpu,
            memory_gb=self.memory_gb,
            memory_mode=self.memory_mode,
            model=self.model,
            current_job=self.current_job,
            last_seen=self.last_seen,
            jobs_done=self.jobs_done,
            capabilities=tuple(self.capabilities),
        )


# ---------------------------------------------------------------------------------- parsing
M = TypeVar("M", bound=_Message)


def _document(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """JSON object of our version, or ``WireError``."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise WireError("not JSON") from None
        except RecursionError:  # "[[[[..." deeper than the parser goes: no message of ours
            raise WireError("JSON too deeply nested") from None
    if not isinstance(data, dict):
        raise WireError(f"not a JSON object but {type(data).__name__}")
    version = data.get("v")
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version!r} (this side speaks {WIRE_VERSION})")
    return data


def _validated(model: type[M], data: bytes | str | dict[str, Any]) -> M:
    document = _document(data)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise WireError(_short(exc)) from None


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def parse_event(data: bytes | str) -> Event:
    """An event from the events channel, or ``WireError``."""
    document = _document(data)
    try:
        return _EVENT.validate_python(document)
    except ValidationError as exc:
        raise WireError(_short(exc)) from None


def parse_heartbeat(data: bytes | str) -> Heartbeat:
    return _validated(Heartbeat, data)


def parse_result(value: Any) -> JobResult | JobFailed:
    """The outcome a worker stored (the taskiq result's return value), or ``WireError``."""
    return _validated(ResultEnvelope, value).outcome()


def parse_job(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[JobMessage, JobRequest]:
    """The taskiq task's arguments: exactly one ``JobMessage``, or ``WireError``."""
    if len(args) != 1 or kwargs:
        raise WireError(f"expected one job message, got {len(args)} arguments and {len(kwargs)}")
    message = _validated(JobMessage, args[0])
    return message, message.job()


# --------------------------------------------------------------------------------- skipping
_SKIP_LOG_EVERY_S = 60.0
_REASON_MAX = 200
_skip_logged: dict[tuple[str, str], float] = {}


def brief(exc: BaseException | str, limit: int = _REASON_MAX) -> str:
    """One short line about an error: a reason can quote what was read, which may be huge."""
    text = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def log_skipped(where: str, exc: WireError) -> None:
    """Log a message that was skipped, once: each one is one record, so none goes unseen and
    none is counted twice. Only the first of each reason per place and minute is a warning;
    the repeats are debug records, so a stream of bad messages (an old worker during an
    upgrade) cannot flood the log."""
    reason = brief(exc)  # a reason can quote the message (a bad tag): not all of it
    key = (where, reason)
    now = time.monotonic()
    level = logging.WARNING
    if now - _skip_logged.get(key, -_SKIP_LOG_EVERY_S) < _SKIP_LOG_EVERY_S:
        level = logging.DEBUG
    else:
        if len(_skip_logged) > 256:
            _skip_logged.clear()
        _skip_logged[key] = now
    logger.log(level, "skipped an unreadable message in %s: %s", where, reason)
