"""The job / progress / result contract between the Discord side and the GPU side.

This module is the only thing the bot imports from ``engine``: it must never import torch,
diffusers, discord or ``db`` so that the bot process stays light and remote GPU workers hold no
database. Everything here is plain data that survives a JSON round trip, because the same
objects travel through Redis when workers run on other machines.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


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


class JobFailed(Exception):
    """Raised by ``JobHandle.result()`` and by ``submit`` when a job cannot deliver an image.

    ``user_message`` is safe to show to the requester as is: short, no stack trace, no paths.
    """

    def __init__(self, kind: FailureKind, user_message: str) -> None:
        super().__init__(f"{kind}: {user_message}")
        self.kind = FailureKind(kind)
        self.user_message = user_message

    def to_dict(self) -> dict[str, str]:
        return {"kind": str(self.kind), "user_message": self.user_message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobFailed:
        return cls(FailureKind(data["kind"]), str(data["user_message"]))


@dataclasses.dataclass(frozen=True, slots=True)
class StyleSpec:
    """A style as the GPU side needs it: already resolved from the guild's table by the bot."""

    name: str = "none"
    template: str = "{prompt}"
    negative: str = ""

    def apply(self, prompt: str) -> str:
        # str.replace, not str.format: user prompts may contain braces.
        if "{prompt}" not in self.template:
            return f"{prompt}, {self.template}" if self.template else prompt
        return self.template.replace("{prompt}", prompt)


# Image-to-image input limits: checked before any GPU work. The stored images are at most about
# 1.5 megapixels; the cap leaves room for uploads while keeping a decompression bomb harmless.
MAX_INIT_IMAGE_BYTES = 20 * 2**20
MAX_INIT_IMAGE_PIXELS = 4096 * 4096
# generations.job_key is a String(32); a parent id is one of those keys.
MAX_JOB_ID_CHARS = 32
_IMG2IMG_FIELDS = ("init_image", "strength", "parent_job_id")
# Edits (/edit): up to three input images, each a normalised RGB PNG (bot.uploads keeps them at
# most ~2 megapixels, so well under this cap); they travel with the job, through Redis too.
MAX_EDIT_IMAGES = 3
MAX_EDIT_IMAGE_BYTES = 8 * 2**20
# What a worker can run (WorkerInfo.capabilities) and what a job needs (JobRequest.needs).
CAPABILITY_GENERATE = "generate"
CAPABILITY_EDIT = "edit"


def _b64encode(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _b64decode(value: Any, what: str) -> bytes | None:
    """Bytes from the dict form (base64 text); bad text is bad input, not a crash."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise JobFailed(FailureKind.INVALID, f"The {what} could not be decoded.") from None


@dataclasses.dataclass(frozen=True, slots=True)
class JobRequest:
    """One image to make. ``job_id`` is the Discord interaction id: unique and idempotent."""

    job_id: str
    user_id: int
    prompt: str
    style: StyleSpec = dataclasses.field(default_factory=StyleSpec)
    negative_prompt: str | None = None
    aspect: str = "1:1"
    seed: int | None = None
    mode: Mode = Mode.STANDARD
    # Wall-clock budget for the GPU work, enforced inside the step callback so a late job
    # frees the GPU instead of running on after nobody waits for it.
    deadline_s: float | None = None
    # Image-to-image (the Vary buttons): the source PNG, how much of it is re-noised (0..1],
    # and the job it came from (recorded in the PNG's text chunks).
    init_image: bytes | None = None
    strength: float | None = None
    parent_job_id: str | None = None
    # Editing (/edit): the input images, first the one to edit; the prompt is the instruction.
    # Empty for every other job (whose dict then carries no such key).
    edit_images: tuple[bytes, ...] = ()

    @property
    def needs(self) -> str:
        """The capability a worker must have to run this job."""
        return CAPABILITY_EDIT if self.edit_images else CAPABILITY_GENERATE

    def validate(self) -> None:
        """Refuse inconsistent image-to-image fields with ``JobFailed(INVALID)``.

        Cheap checks only (no image decoding: this module imports no imaging library); the
        engine decodes the image with a pixel cap before any GPU work.
        """
        if self.init_image is None:
            if self.strength is not None:
                raise JobFailed(FailureKind.INVALID, "A strength needs a source image.")
        else:
            if not isinstance(self.init_image, bytes) or not self.init_image:
                raise JobFailed(FailureKind.INVALID, "The source image is empty.")
            if len(self.init_image) > MAX_INIT_IMAGE_BYTES:
                raise JobFailed(
                    FailureKind.INVALID,
                    f"The source image is larger than {MAX_INIT_IMAGE_BYTES // 2**20} MB.",
                )
            strength = self.strength
            if (
                isinstance(strength, bool)
                or not isinstance(strength, int | float)
                or not math.isfinite(strength)
                or not 0 < strength <= 1
            ):
                raise JobFailed(
                    FailureKind.INVALID, "The variation strength must be above 0 and at most 1."
                )
        if self.parent_job_id is not None and (
            not isinstance(self.parent_job_id, str)
            or not 0 < len(self.parent_job_id) <= MAX_JOB_ID_CHARS
        ):
            raise JobFailed(FailureKind.INVALID, "The parent job id is not valid.")
        self._validate_edit_images()

    def _validate_edit_images(self) -> None:
        images = self.edit_images
        if not isinstance(images, tuple):
            raise JobFailed(FailureKind.INVALID, "The edit images are not valid.")
        if len(images) > MAX_EDIT_IMAGES:
            raise JobFailed(FailureKind.INVALID, f"An edit takes at most {MAX_EDIT_IMAGES} images.")
        if images and self.init_image is not None:
            raise JobFailed(FailureKind.INVALID, "An edit cannot also be a variation.")
        for image in images:
            if not isinstance(image, bytes) or not image:
                raise JobFailed(FailureKind.INVALID, "An edit image is empty.")
            if len(image) > MAX_EDIT_IMAGE_BYTES:
                raise JobFailed(
                    FailureKind.INVALID,
                    f"An edit image is larger than {MAX_EDIT_IMAGE_BYTES // 2**20} MB.",
                )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mode"] = str(self.mode)
        data["init_image"] = _b64encode(self.init_image)
        # A text-to-image job's dict stays exactly what it was before these fields existed, so
        # workers of the previous version still read it during a rolling upgrade.
        for key in _IMG2IMG_FIELDS:
            if data[key] is None:
                del data[key]
        if self.edit_images:
            data["edit_images"] = [_b64encode(image) for image in self.edit_images]
        else:
            del data["edit_images"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRequest:
        fields = dict(data)
        fields["style"] = StyleSpec(**fields.get("style") or {})
        fields["mode"] = Mode(fields.get("mode", Mode.STANDARD))
        fields["init_image"] = _b64decode(fields.get("init_image"), "source image")
        if "edit_images" in fields:
            images = fields["edit_images"]
            if not isinstance(images, list | tuple) or len(images) > MAX_EDIT_IMAGES:
                raise JobFailed(FailureKind.INVALID, "The edit images are not valid.")
            fields["edit_images"] = tuple(
                _b64decode(image, "edit image") or b"" for image in images
            )
        return cls(**fields)


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

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.preview is None:
            del data["preview"]  # the dict of a plain step is unchanged
        else:
            data["preview"] = _b64encode(self.preview)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        fields = dict(data)
        fields["preview"] = _b64decode(fields.get("preview"), "preview")
        return cls(**fields)


@dataclasses.dataclass(frozen=True, slots=True)
class JobResult:
    """The finished image and every parameter actually used, so it can be reproduced."""

    job_id: str
    png: bytes
    width: int
    height: int
    seed: int
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
    queued_s: float = 0.0
    run_s: float = 0.0
    note: str | None = None
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["png"] = self.png.hex()
        data["mode"] = str(self.mode)
        data["requested_mode"] = str(self.requested_mode)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        fields = dict(data)
        fields["png"] = bytes.fromhex(fields["png"])
        fields["mode"] = Mode(fields["mode"])
        fields["requested_mode"] = Mode(fields["requested_mode"])
        return cls(**fields)


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
    # What the worker can run: "generate" (text-to-image, variations) and "edit" (/edit).
    capabilities: tuple[str, ...] = (CAPABILITY_GENERATE,)


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
    # What this backend can run now ("generate", "edit"): on the Redis path, what at least one
    # ready worker can run. The bot refuses /edit before charging when "edit" is missing.
    capabilities: tuple[str, ...] = (CAPABILITY_GENERATE,)
    # While the model gets ready (the first start downloads ~58 GB, loads and warms up): what it
    # is doing ("downloading the model: 12.3 of 57.7 GB"), how far (0..1) and how long it may
    # still take, where known. Jobs submitted meanwhile wait in the line. ``load_error``: the
    # load failed (a message fit for members); jobs are refused.
    loading: str | None = None
    load_progress: float | None = None
    load_eta_s: float | None = None
    load_error: str | None = None


ProgressCallback = Callable[[Progress], None]
"""Called on the event loop that submitted the job, once per finished step. Keep it cheap."""


@runtime_checkable
class JobHandle(Protocol):
    """What ``submit`` returns: await the result, ask where the job stands."""

    job_id: str

    async def result(self) -> JobResult:
        """The image, or ``JobFailed``."""
        ...


@runtime_checkable
class ImageBackend(Protocol):
    """Where jobs go: the in-process GPU thread, or GPU workers behind Redis.

    The bot's cogs talk only to this protocol, so they cannot tell the two apart.
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
