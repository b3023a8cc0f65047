"""The messages the bot and the GPU workers exchange through Redis: one definition, versioned.

Each message class carries its own version (``VERSION``, written as ``v``). The two that carry
the contract — ``JobMessage`` (a ``JobRequest``) and ``ResultEnvelope`` (a ``JobResult`` or a
``Failure``) — take those classes as their fields, so their wire shape *is*
``engine.contract``'s: pydantic reads the dataclasses' fields, strictly (exact types, bytes as
base64). ``tests/engine/redis/test_wire_versions.py`` pins every message's shape per version:
changing a field there fails until someone decides whether older readers may go without it
(extra fields are ignored: same version) or not (a new version, and a reader for the old one).

Rolling upgrades, one version step: a reader accepts its version and the one before
(``engine.redis.wire_v1`` turns a version-1 job or result into today's), and a worker answers a
job in the version it was asked in. So new workers serve an old bot; an old worker refuses a
new bot's job plainly (the member is refunded): upgrade the workers first.

Whatever else arrives (another version, broken JSON, a wrong type, a missing field) raises
``WireError``; the loop that read it logs it (``log_skipped``) and goes on with the next message.
Redis content is untrusted input: a bad message never ends a loop, a worker or the bot.

Messages:

* ``JobMessage`` — bot -> worker, the one argument of the taskiq task;
* ``Marker`` — bot, stored while a job is with the workers;
* ``Event`` — worker -> bot on the events channel: ``started``, ``progress``, ``done``,
  ``worker`` (a worker came or went);
* ``ResultEnvelope`` — worker -> bot, the stored outcome of a job (a result or a failure);
* ``Heartbeat`` — worker -> bot, what ``/status`` shows and how many jobs a worker takes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import logging
import time
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.contract import (
    TASK_GENERATE,
    Failure,
    JobFailed,
    JobRequest,
    JobResult,
    Progress,
    WorkerInfo,
)
from engine.redis import wire_v1

logger = logging.getLogger(__name__)

M = TypeVar("M", bound="_Message")

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
    """A message of one version. Fields a reader does not know are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    VERSION: ClassVar[int] = 1
    v: int = 1

    @model_validator(mode="after")
    def _own_version(self) -> _Message:
        if self.v != self.VERSION:
            raise ValueError(f"version {self.v} is not {self.VERSION}")
        return self

    def dumps(self) -> str:
        """The JSON that goes to Redis."""
        return self.model_dump_json()

    @classmethod
    def upgrade(cls, document: dict[str, object]) -> dict[str, object]:
        """The previous version's ``document`` as this version's (``WireError`` where there is
        no previous version, or it cannot be read)."""
        raise WireError(f"wire version {document.get('v')!r} (this side speaks {cls.VERSION})")

    @classmethod
    def read(cls: type[M], data: bytes | str | dict[str, object]) -> M:
        """This message from Redis, or ``WireError``."""
        document = _document(data)
        if document.get("v") == cls.VERSION - 1:
            try:
                document = cls.upgrade(document)
            except wire_v1.Unreadable as exc:
                raise WireError(str(exc)) from None
        elif document.get("v") != cls.VERSION:
            raise WireError(f"wire version {document.get('v')!r} (this side speaks {cls.VERSION})")
        try:
            return cls._validate(document)
        except ValidationError as exc:
            raise WireError(_short(exc)) from None

    @classmethod
    def _validate(cls: type[M], document: dict[str, object]) -> M:
        return cls.model_validate(document)


class _ContractMessage(_Message):
    """A message whose fields are ``engine.contract`` classes: read strictly from JSON (their
    bytes are base64 there), never from Python objects."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, strict=True, ser_json_bytes="base64", val_json_bytes="base64"
    )

    @classmethod
    def _validate(cls: type[M], document: dict[str, object]) -> M:
        return cls.model_validate_json(json.dumps(document))

    def document(self) -> dict[str, object]:
        """The message as the JSON object that goes to Redis (taskiq serializes it)."""
        data: dict[str, object] = json.loads(self.model_dump_json())
        return data


# ----------------------------------------------------------------------------- bot -> worker
class JobMessage(_ContractMessage):
    """One job as the bot hands it to the broker; ``request.task`` chose its stream."""

    VERSION: ClassVar[int] = 2
    v: int = 2
    request: JobRequest
    submitted_at: float  # when the member asked (wall clock), for the queue time
    dispatched_at: float  # when the bot handed it to the broker (ack latency, stale entries)
    attempt: int = Field(ge=1)

    @classmethod
    def upgrade(cls, document: dict[str, object]) -> dict[str, object]:
        return wire_v1.job_message(document)


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
    def of(cls, worker: str, progress: Progress) -> ProgressEvent:
        """The event for one step; a preview too large for the wire is dropped (the step is
        still reported)."""
        preview = progress.preview
        encoded = base64.b64encode(preview).decode("ascii") if preview else None
        if encoded is not None and len(encoded) > MAX_PREVIEW_B64_CHARS:
            logger.debug("job %s: preview of %d bytes dropped (too large)", progress.job_id,
                         len(encoded))  # fmt: skip
            encoded = None
        return cls(
            job_id=progress.job_id,
            worker=worker,
            step=progress.step,
            total=progress.total,
            elapsed_s=progress.elapsed_s,
            sec_per_step=progress.sec_per_step,
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


class ResultEnvelope(_ContractMessage):
    """What a worker stores as the taskiq result: what the job made, or a failure the member
    can read."""

    VERSION: ClassVar[int] = 2
    v: int = 2
    ok: bool
    result: JobResult | None = None
    error: Failure | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> ResultEnvelope:
        if self.ok and (self.result is None or not (self.result.images or self.result.texts)):
            raise ValueError("a successful result holds no image and no text")
        if not self.ok and self.error is None:
            raise ValueError("a failure holds no error")
        return self

    @classmethod
    def success(cls, result: JobResult) -> ResultEnvelope:
        return cls(ok=True, result=result)

    @classmethod
    def failure(cls, failed: JobFailed) -> ResultEnvelope:
        return cls(ok=False, error=failed.failure)

    @classmethod
    def upgrade(cls, document: dict[str, object]) -> dict[str, object]:
        return wire_v1.result_envelope(document)

    def outcome(self) -> JobResult | JobFailed:
        """The result or the failure inside."""
        if self.ok and self.result is not None:
            return self.result
        assert self.error is not None  # _one_outcome
        return JobFailed.of(self.error)

    def document_for(self, version: int) -> dict[str, object]:
        """This envelope as a reader of ``version`` expects it: a worker answers a job in the
        version the job came in, so a bot one version older still reads its results."""
        if version == self.VERSION - 1:
            return wire_v1.result_document(self.ok, self.result, self.error)
        return self.document()


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
        default_factory=lambda: [TASK_GENERATE], max_length=8
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
def _document(data: object) -> dict[str, object]:
    """The JSON object of a message, or ``WireError``."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise WireError("not JSON") from None
        except RecursionError:  # "[[[[..." deeper than the parser goes: no message of ours
            raise WireError("JSON too deeply nested") from None
    if not isinstance(data, dict):
        raise WireError(f"not a JSON object but {type(data).__name__}")
    return data


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


EVENT_VERSION = 1


def parse_event(data: object) -> Event:
    """An event from the events channel (untrusted: anything at all), or ``WireError``."""
    document = _document(data)
    if document.get("v") != EVENT_VERSION:
        raise WireError(f"wire version {document.get('v')!r} (this side speaks {EVENT_VERSION})")
    try:
        return _EVENT.validate_python(document)
    except ValidationError as exc:
        raise WireError(_short(exc)) from None


def parse_heartbeat(data: bytes | str) -> Heartbeat:
    return Heartbeat.read(data)


def parse_result(value: object) -> JobResult | JobFailed:
    """The outcome a worker stored (the taskiq result's return value), or ``WireError``."""
    if not isinstance(value, bytes | str | dict):
        raise WireError(f"not a JSON object but {type(value).__name__}")
    return ResultEnvelope.read(value).outcome()


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedJob:
    """A job message as a worker read it, and the version it came in (the answer's)."""

    message: JobMessage
    version: int

    @property
    def request(self) -> JobRequest:
        return self.message.request


def parse_job(args: tuple[object, ...], kwargs: dict[str, object]) -> ParsedJob:
    """The taskiq task's arguments: exactly one ``JobMessage``, or ``WireError``."""
    if len(args) != 1 or kwargs:
        raise WireError(f"expected one job message, got {len(args)} arguments and {len(kwargs)}")
    data = args[0]
    if not isinstance(data, bytes | str | dict):
        raise WireError(f"not a JSON object but {type(data).__name__}")
    version = _document(data).get("v")
    message = JobMessage.read(data)
    return ParsedJob(message, JobMessage.VERSION if version == JobMessage.VERSION else 1)


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
