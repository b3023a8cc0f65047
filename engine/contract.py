"""The job / progress / result contract between the Discord side and the GPU side.

The bot imports this module (with ``presets``, ``settings`` and the two backends' factories)
and nothing else from ``engine``: it imports no torch, diffusers, discord or ``db``, so the bot
process stays light and remote GPU workers hold no database. Everything here is plain, frozen
data. ``engine.redis.wire`` derives the Redis messages from these classes (pydantic reads their
fields and the ``__pydantic_config__`` below), so a field added here is a field on the wire;
``tests/engine/redis/test_wire_versions.py`` makes that a decision, never an accident.

A job names the ``task`` the engine runs for it (``TASK_GENERATE``: text-to-image, or
image-to-image when it carries a source image and a strength; ``TASK_EDIT``: Qwen-Image-Edit).
A task is also what a GPU worker announces it can run, so jobs are routed by it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import ClassVar, Final, Protocol, runtime_checkable


class Mode(enum.StrEnum):
    """Speed/quality trade-off a user picks; each maps to steps and CFG in ``presets``."""

    QUALITY = "quality"
    STANDARD = "standard"
    FAST = "fast"


class FailureKind(enum.StrEnum):
    """Why a job did not produce an image; the bot turns each into plain words."""

    OOM = "oom"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"
    UNAVAILABLE = "unavailable"
    QUEUE_FULL = "queue_full"
    INVALID = "invalid"


# How the wire reads these classes (pydantic): exact types (no "1" for 1), bytes as base64.
# Fields a reader does not know are ignored, so an optional field can be added without a new
# wire version where an older reader may safely go without it (the wire test asks which).
WIRE_CONFIG: Final[Mapping[str, object]] = {
    "strict": True,
    "extra": "ignore",
    "ser_json_bytes": "base64",
    "val_json_bytes": "base64",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A job that produced nothing, as data: what ``JobFailed`` carries across a process."""

    kind: FailureKind
    user_message: str

    __pydantic_config__: ClassVar[Mapping[str, object]] = WIRE_CONFIG


class JobFailed(Exception):
    """Raised by ``JobHandle.result()`` and by ``submit`` when a job cannot deliver an image.

    ``user_message`` is safe to show to the requester as is: short, no stack trace, no paths.
    """

    def __init__(self, kind: FailureKind, user_message: str) -> None:
        super().__init__(f"{kind}: {user_message}")
        self.kind = FailureKind(kind)
        self.user_message = user_message

    @property
    def failure(self) -> Failure:
        return Failure(self.kind, self.user_message)

    @classmethod
    def of(cls, failure: Failure) -> JobFailed:
        return cls(failure.kind, failure.user_message)


@dataclasses.dataclass(frozen=True, slots=True)
class StyleSpec:
    """A style as the GPU side needs it: already resolved from the guild's table by the bot."""

    name: str = "none"
    template: str = "{prompt}"
    negative: str = ""

    __pydantic_config__: ClassVar[Mapping[str, object]] = WIRE_CONFIG

    def apply(self, prompt: str) -> str:
        # str.replace, not str.format: user prompts may contain braces.
        if "{prompt}" not in self.template:
            return f"{prompt}, {self.template}" if self.template else prompt
        return self.template.replace("{prompt}", prompt)


# What a job asks the engine to run, and what a worker announces it can run.
TASK_GENERATE: Final = "generate"
TASK_EDIT: Final = "edit"
MAX_TASK_CHARS: Final = 32

# Input images: checked before any GPU work. Stored images are at most about 1.7 megapixels and
# uploads are normalised to about 2 megapixels; the caps leave room while keeping a
# decompression bomb harmless, and bound one job's message on the Redis wire.
MAX_INPUT_IMAGES: Final = 3
MAX_INPUT_IMAGE_BYTES: Final = 20 * 2**20
MAX_INPUT_BYTES: Final = 32 * 2**20
MAX_INPUT_IMAGE_PIXELS: Final = 4096 * 4096
# The longest side over the shortest of an input image. Qwen2-VL's image processor refuses
# anything past 200:1 (a plain ValueError deep in the pipeline); past about 20:1 its short side
# shrinks to a few patches at the model's condition size, and the edit's output is clamped to
# 3:1 anyway. The bot refuses such an upload, the engine such an input from anywhere.
MAX_INPUT_ASPECT_RATIO: Final = 20
# An edit takes up to three images (the first is edited), each a normalised RGB PNG.
MAX_EDIT_IMAGES: Final = 3
MAX_EDIT_IMAGE_BYTES: Final = 8 * 2**20
# generations.job_key is a String(32); a parent id is one of those keys.
MAX_JOB_ID_CHARS: Final = 32


@dataclasses.dataclass(frozen=True, slots=True)
class JobRequest:
    """One job to run. ``job_id`` is the Discord interaction id: unique and idempotent."""

    job_id: str
    user_id: int
    prompt: str
    task: str = TASK_GENERATE
    style: StyleSpec = dataclasses.field(default_factory=StyleSpec)
    negative_prompt: str | None = None
    aspect: str = "1:1"
    seed: int | None = None
    mode: Mode = Mode.STANDARD
    # Wall-clock budget for the GPU work, enforced inside the step callback so a late job
    # frees the GPU instead of running on after nobody waits for it.
    deadline_s: float | None = None
    # The job's input images, read from the bot's image store by the job's keys: the source
    # of a variation (with ``strength``, the share of the schedule re-run from it), or the
    # images of an edit (the first is the one edited).
    images: tuple[bytes, ...] = ()
    strength: float | None = None
    # The job this one was made from (a variation's PNG records it).
    parent_job_id: str | None = None

    __pydantic_config__: ClassVar[Mapping[str, object]] = WIRE_CONFIG

    def validate(self) -> None:
        """Refuse malformed fields with ``JobFailed(INVALID)``: cheap checks only (this module
        decodes no image); what a task needs of its inputs is its generator's to check."""
        if not self.task or len(self.task) > MAX_TASK_CHARS:
            raise JobFailed(FailureKind.INVALID, "The job names no task this engine knows.")
        if len(self.images) > MAX_INPUT_IMAGES:
            raise JobFailed(FailureKind.INVALID, f"A job takes at most {MAX_INPUT_IMAGES} images.")
        for image in self.images:
            if not image:
                raise JobFailed(FailureKind.INVALID, "An input image is empty.")
            if len(image) > MAX_INPUT_IMAGE_BYTES:
                raise JobFailed(
                    FailureKind.INVALID,
                    f"An input image is larger than {MAX_INPUT_IMAGE_BYTES // 2**20} MB.",
                )
        if sum(len(image) for image in self.images) > MAX_INPUT_BYTES:
            raise JobFailed(
                FailureKind.INVALID,
                f"The input images are larger than {MAX_INPUT_BYTES // 2**20} MB together.",
            )
        strength = self.strength
        if strength is not None:
            if not self.images:
                raise JobFailed(FailureKind.INVALID, "A strength needs a source image.")
            if (
                isinstance(strength, bool)
                or not isinstance(strength, int | float)
                or not math.isfinite(strength)
                or not 0 < strength <= 1
            ):
                raise JobFailed(
                    FailureKind.INVALID, "The variation strength must be above 0 and at most 1."
                )
        if self.parent_job_id is not None and not 0 < len(self.parent_job_id) <= MAX_JOB_ID_CHARS:
            raise JobFailed(FailureKind.INVALID, "The parent job id is not valid.")


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """A denoising step finished. ``step`` counts completed steps, 1..total."""

    job_id: str
    step: int
    total: int
    elapsed_s: float
    sec_per_step: float
    # A small JPEG of the image forming (engine.previews), on some steps only.
    preview: bytes | None = None

    @property
    def percent(self) -> int:
        return int(100 * self.step / self.total) if self.total else 0

    @property
    def eta_s(self) -> float:
        return max(0.0, (self.total - self.step) * self.sec_per_step)


@dataclasses.dataclass(frozen=True, slots=True)
class OutputImage:
    """One finished image: the PNG (its text chunks hold the parameters) and its seed."""

    png: bytes
    width: int
    height: int
    seed: int

    __pydantic_config__: ClassVar[Mapping[str, object]] = WIRE_CONFIG


@dataclasses.dataclass(frozen=True, slots=True)
class JobResult:
    """What a job made — images (a grid makes several) or text, or both — and every
    parameter it actually ran with, so it can be reproduced."""

    job_id: str
    images: tuple[OutputImage, ...]
    steps: int
    true_cfg_scale: float
    mode: Mode
    requested_mode: Mode
    style: str
    prompt: str
    full_prompt: str
    negative_prompt: str
    aspect: str
    model: str
    texts: tuple[str, ...] = ()
    queued_s: float = 0.0
    run_s: float = 0.0
    note: str | None = None
    worker: str | None = None

    __pydantic_config__: ClassVar[Mapping[str, object]] = WIRE_CONFIG

    @property
    def image(self) -> OutputImage:
        """The image of a one-image job; ``JobFailed`` when the job made none (a result from
        outside this process is untrusted: it may hold nothing at all)."""
        if not self.images:
            raise JobFailed(FailureKind.ERROR, "The engine answered without an image.")
        return self.images[0]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One GPU worker as ``/status`` shows it."""

    name: str
    gpu: str
    memory_gb: float
    memory_mode: str
    model: str
    current_job: str | None = None
    last_seen: float = 0.0
    jobs_done: int = 0
    # The tasks it runs: "generate" (text-to-image, variations) and "edit" (/edit).
    capabilities: tuple[str, ...] = (TASK_GENERATE,)


@dataclasses.dataclass(frozen=True, slots=True)
class EngineStatus:
    """A snapshot of the image backend for ``/status``."""

    backend: str
    ready: bool
    model: str
    memory_mode: str
    gpu: str
    queue_length: int
    running: tuple[str, ...] = ()
    mean_sec_per_step: float | None = None
    fast_available: bool = True
    workers: tuple[WorkerInfo, ...] = ()
    note: str | None = None
    # The engine's per-user safety ceiling (jobs waiting or running at once). Members are held
    # to their server's /limits max_queued first; this is what applies above that, or where a
    # server set no limit. None: the backend has none.
    queued_ceiling_per_user: int | None = None
    # The models on the accelerator now (text-to-image, edit); an idle one that waits in host
    # memory is not listed.
    resident_models: tuple[str, ...] = ()
    # The tasks this backend can run now ("generate", "edit"): on the Redis path, what at least
    # one ready worker can run. The bot refuses /edit before charging when "edit" is missing.
    capabilities: tuple[str, ...] = (TASK_GENERATE,)
    # While the model gets ready (the first start downloads ~58 GB, loads and warms up): what it
    # is doing ("downloading the model: 12.3 of 57.7 GB"), how far (0..1) and how long it may
    # still take, where known. Jobs submitted meanwhile wait in the line. ``load_error``: the
    # load failed (a message fit for members); jobs are refused.
    loading: str | None = None
    load_progress: float | None = None
    load_eta_s: float | None = None
    load_error: str | None = None
    # Why this backend cannot edit, where it cannot (members read it): the operator turned
    # editing off, or the edit model could not load here.
    edit_off: str | None = None


ProgressCallback = Callable[[Progress], None]
"""Called on the event loop that submitted the job, once per finished step. Keep it cheap."""


@runtime_checkable
class JobHandle(Protocol):
    """What ``submit`` returns: await the result, ask where the job stands."""

    job_id: str

    async def result(self) -> JobResult:
        """The result, or ``JobFailed``."""
        ...


@runtime_checkable
class ImageBackend(Protocol):
    """Where jobs go: the in-process GPU thread, or GPU workers behind Redis.

    The bot talks only to this protocol, so it cannot tell the two apart.
    """

    async def start(self) -> None:
        """Load models / connect; return when jobs can be accepted."""
        ...

    async def close(self) -> None: ...

    async def submit(
        self, request: JobRequest, on_progress: ProgressCallback | None = None
    ) -> JobHandle:
        """Queue a job. Raises ``JobFailed`` (QUEUE_FULL, UNAVAILABLE, INVALID) at once when
        it cannot be queued. Submitting a ``job_id`` that is already queued or running returns
        a handle on the existing job instead of running it twice."""
        ...

    async def position(self, job_id: str) -> int | None:
        """0 while the job runs, n >= 1 when n - 1 jobs run or wait before it, None if unknown."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; its handle then raises ``JobFailed(CANCELLED)``."""
        ...

    async def status(self) -> EngineStatus: ...
