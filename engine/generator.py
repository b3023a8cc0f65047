"""What every generator provides, written down once: the ``Generator`` protocol, the frozen
``Plan`` a job runs with, the ``JobControl`` a runner hands it, and ``GeneratorInfo``.

A generator turns a ``JobRequest`` of the tasks it runs into a ``JobResult`` on the one thread
that owns it (``engine.runner``). Text-to-image and variations (``engine.pipeline``), edits
(``engine.edit``), one image across several GPUs (``engine.parallel``) and the engine's router
over them (``engine.generators``) are generators; so is any new kind of job's. Nothing here
imports torch: the runner, both backends and tests' own generators use these types without it.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from engine.contract import TASK_GENERATE, FailureKind, JobRequest, JobResult, Mode


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Every parameter one job runs with, decided before any GPU work: what the pipeline is
    called with, what the result reports and what the PNG's text chunks record.

    ``prompt`` is what the member typed, ``full_prompt`` what the model reads (after the style's
    template and the quality suffix); an edit has an ``instruction`` instead. A variation runs
    ``steps`` of a ``schedule_steps`` schedule from its source at ``strength``.
    """

    task: str
    seed: int
    steps: int
    true_cfg_scale: float
    width: int
    height: int
    aspect: str
    mode: Mode
    requested_mode: Mode
    model: str
    negative_prompt: str  # "" when no true CFG runs
    prompt: str = ""
    full_prompt: str = ""
    style: str = ""
    instruction: str | None = None
    input_images: tuple[str, ...] = ()  # an edit's inputs, by SHA-256
    schedule_steps: int | None = None
    strength: float | None = None
    parent_job_id: str | None = None
    note: str | None = None
    # The transformer's weight format (the memory plan's): a compact one changes the pixels
    # for the same seed, so the PNG and Details record it.
    weights: str = "bf16"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def model_label(self) -> str:
        """The model as results name it: with its weight format where that is not bf16."""
        return self.model if self.weights == "bf16" else f"{self.model} ({self.weights} weights)"

    @property
    def cfg(self) -> bool:
        """Whether true classifier-free guidance runs (it needs a negative prompt too)."""
        return self.true_cfg_scale > 1 and bool(self.negative_prompt)

    @property
    def model_prompt(self) -> str:
        """What the model reads as its prompt: the instruction of an edit, else the prompt
        after the style's template and the quality suffix."""
        return self.instruction if self.instruction is not None else self.full_prompt

    def png_parameters(self) -> dict[str, str | int | float]:
        """The PNG's text chunks: every parameter needed to reproduce the image, by name
        (``engine.pnginfo`` formats them for A1111 readers too)."""
        out: dict[str, str | int | float] = {}
        for name, value in (
            ("prompt", self.prompt),
            ("full_prompt", self.full_prompt),
            ("instruction", self.instruction),
            ("input_images", ",".join(self.input_images)),
            ("negative_prompt", self.negative_prompt),
            ("style", self.style),
            ("seed", self.seed),
            ("steps", self.steps),
            ("schedule_steps", self.schedule_steps),
            ("strength", self.strength),
            ("parent_job_id", self.parent_job_id),
            ("true_cfg_scale", self.true_cfg_scale),
            ("width", self.width),
            ("height", self.height),
            ("size", self.size),
            ("aspect", self.aspect),
            ("mode", str(self.mode)),
            ("requested_mode", str(self.requested_mode)),
            ("model", self.model),
            ("weights", self.weights),
            ("note", self.note),
        ):
            if value is None or (value == "" and name != "negative_prompt"):
                continue
            out[name] = value
        return out


class JobControl(Protocol):
    """What the runner gives a generator for one job: where its progress goes and whether to
    stop. Called on the generating thread, once per denoising step: keep it cheap."""

    @property
    def followed(self) -> bool:
        """Whether anyone follows the steps (reporting one costs a device sync now and then)."""
        ...

    @property
    def previews(self) -> bool:
        """Whether anyone will look at previews of the image forming (they cost a decode)."""
        ...

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        """``step`` of ``total`` denoising steps finished; ``preview`` a small JPEG, on some."""
        ...

    def stop_reason(self) -> FailureKind | None:
        """Why the job must stop at this step (cancelled, …), or None to go on."""
        ...


class Unwatched:
    """A ``JobControl`` for work nobody follows (warm-up, benchmarks, the command line)."""

    followed = False
    previews = False

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        return None

    def stop_reason(self) -> FailureKind | None:
        return None


UNWATCHED = Unwatched()


@dataclasses.dataclass(frozen=True, slots=True)
class GeneratorInfo:
    """What a loaded generator reports about itself (``/status``, heartbeats, the log)."""

    model: str
    tasks: tuple[str, ...] = (TASK_GENERATE,)
    device: str = "cpu"
    gpu: str = "cpu"
    memory_mode: str = "resident"
    memory_gb: float = 0.0
    dtype: str = "bfloat16"
    fast_available: bool = False
    optimizations: tuple[str, ...] = ()
    resident_models: tuple[str, ...] = ()
    # Editing, where it is loaded; else why it is off.
    edit_model: str | None = None
    edit_fast_available: bool = False
    edit_shared: tuple[tuple[str, str], ...] = ()  # component, why it is or is not shared
    edit_optimizations: tuple[str, ...] = ()
    edit_off: str | None = None
    # One image across several GPUs (engine.parallel).
    gpus: tuple[str, ...] = ()
    parallel: str | None = None


class Generator(Protocol):
    """A loaded model that runs jobs of some tasks. Not thread-safe: one thread calls it.

    ``generate`` raises ``JobFailed`` for everything a member should read (bad input, out of
    memory, cancel, deadline); any other exception is a crash the runner answers for.
    """

    def tasks(self) -> tuple[str, ...]:
        """The tasks it runs (what a worker announces, how jobs are routed)."""
        ...

    def info(self) -> GeneratorInfo: ...

    def plan(self, request: JobRequest) -> Plan:
        """Every parameter ``request`` will run with; ``JobFailed(INVALID)`` for bad input."""
        ...

    def generate(
        self, request: JobRequest, control: JobControl, plan: Plan | None = None
    ) -> JobResult:
        """Run one job. ``plan`` is given by ``engine.parallel``, whose follower ranks must
        run exactly the parameters rank 0 chose (the seed, the size)."""
        ...

    def warmup(self) -> None:
        """Run each path once so the first member does not pay for lazy initialisation."""
        return None

    def free_memory(self) -> None:
        """Release what a failed job left on the accelerator."""
        return None

    def resident_models(self) -> tuple[str, ...]:
        """The models on the accelerator now."""
        return ()

    def preferred_task(self) -> str | None:
        """The task whose model is on the accelerator now when not every model fits (its
        jobs go first, within the fair queue's bound), or None when all fit."""
        return None
