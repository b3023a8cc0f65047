"""Text-to-image and variations with Qwen-Image: ``ImageGenerator``, the loaded pipeline as a
``Generator`` of the ``generate`` task.

``ImageGenerator`` is not thread-safe (diffusers schedulers keep per-call state): exactly one
thread may call ``generate`` (``engine.runner``). Loading the pipeline is ``engine.loader``;
where the models run is decided in ``engine.devices``; what a pipeline call shares with the edit
generator (fast mode's switch, the step callback, OOM, the PNG) is ``engine.generation``.
A job with a source image and a strength is a variation (image-to-image, ``engine.img2img``)
on the same modules.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from typing import Protocol

import torch

from engine.contract import TASK_GENERATE, FailureKind, JobFailed, JobRequest, JobResult, Mode
from engine.diffusers_types import Pipeline
from engine.generation import (
    LightningModes,
    StepWatch,
    StopAgreement,
    call_arguments,
    job_result,
    oom_fails_job,
    pick_seed,
)
from engine.generator import UNWATCHED, Generator, GeneratorInfo, JobControl, Plan
from engine.img2img import Img2ImgView, img2img_fields, load_init_image
from engine.loader import LORA_ADAPTER, load_pipeline
from engine.planning import MemoryPlan
from engine.presets import (
    ASPECTS,
    MODES,
    NEUTRAL_NEGATIVE,
    POSITIVE_MAGIC,
    image_size,
    public_model_name,
)
from engine.previews import PreviewMaker
from engine.settings import EngineSettings, MemoryMode


class Residency(Protocol):
    """Which transformer is on the accelerator when two share it (``engine.edit.swap``)."""

    def activate(self, name: str) -> float: ...

    def is_resident(self, name: str) -> bool: ...


logger = logging.getLogger(__name__)


class ImageGenerator(LightningModes, Generator):
    """A loaded Qwen-Image pipeline plus everything decided at load time."""

    lora_adapter = LORA_ADAPTER

    def __init__(
        self,
        pipe: Pipeline,
        settings: EngineSettings,
        *,
        device: torch.device,
        dtype: torch.dtype,
        memory_mode: MemoryMode,
        max_side: int | None,
        fast_available: bool,
        model_name: str,
        memory_plan: MemoryPlan | None = None,
    ) -> None:
        self.pipe = pipe
        # None for a forced offload mode and for pipelines built outside the loader (bench).
        self.memory_plan = memory_plan
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.memory_mode = memory_mode
        self.max_side = max_side
        self.fast_available = fast_available
        self.model_name = model_name
        self._init_modes()
        # Set by engine.optimize when it merges the LoRA into the weights itself.
        self.lora_switch: Callable[[bool], None] | None = None
        self.optimizations: list[str] = []
        # The Vary buttons' img2img pipeline: built on first use from this pipeline's modules.
        self._img2img = Img2ImgView()
        # Set by engine.parallel: every rank of one image must stop at the same step, so each
        # step's stop decision goes through this (rank 0's decision wins).
        self.agree_stop: StopAgreement | None = None
        # Set by engine.edit when the edit model's transformer shares the accelerator with this
        # one and both don't fit: this one is made resident before each job.
        self.swap: Residency | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: EngineSettings) -> ImageGenerator:
        """Load the pipeline once (``engine.loader``) and apply the speed-ups."""
        loaded = load_pipeline(settings)
        generator = cls(
            loaded.pipe,
            settings,
            device=loaded.device,
            dtype=loaded.dtype,
            memory_mode=loaded.memory_mode,
            max_side=loaded.max_side,
            fast_available=loaded.fast_available,
            model_name=settings.model,
            memory_plan=loaded.plan,
        )
        generator.lora_switch = loaded.lora_switch
        generator._apply_speedups()
        return generator

    def _apply_speedups(self) -> None:
        """GPU-only optimisations (compile, attention backend, FP8), when available."""
        try:
            from engine import optimize
        except ImportError:  # optimize is optional; the stock path is always correct
            return
        self.optimizations = optimize.apply(self)

    # --------------------------------------------------------------- what it is
    def tasks(self) -> tuple[str, ...]:
        return (TASK_GENERATE,)

    def info(self) -> GeneratorInfo:
        gpu = "cpu"
        memory_gb = 0.0
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            gpu = props.name
            memory_gb = round(props.total_memory / 2**30, 1)
        return GeneratorInfo(
            model=public_model_name(self.model_name),
            tasks=self.tasks(),
            device=str(self.device),
            gpu=gpu,
            memory_mode=self.memory_line(),
            memory_gb=memory_gb,
            dtype=str(self.dtype).removeprefix("torch."),
            fast_available=self.fast_available,
            optimizations=tuple(self.optimizations),
            resident_models=self.resident_models(),
        )

    def memory_line(self) -> str:
        """What /status and the start-up log say of where the models live."""
        if self.memory_plan is None or self.device.type != "cuda":
            return str(self.memory_mode)
        return self.memory_plan.summary()

    @property
    def weight_format(self) -> str:
        """The transformer's weight format, recorded with each image (it changes the pixels)."""
        return "bf16" if self.memory_plan is None else str(self.memory_plan.weights)

    def resident_models(self) -> tuple[str, ...]:
        if self.swap is not None and not self.swap.is_resident(self.model_name):
            return ()
        return (public_model_name(self.model_name),)

    def preferred_task(self) -> str | None:
        return None

    def img2img_pipeline(self) -> Pipeline:
        """The ``QwenImageImg2ImgPipeline`` over this pipeline's modules (built on first use)."""
        return self._img2img.get(self.pipe)

    # --------------------------------------------------------------- generation
    def plan(self, request: JobRequest) -> Plan:
        """Every parameter this request will run with (also what goes into the PNG)."""
        request.validate()
        if request.task != TASK_GENERATE:
            raise JobFailed(FailureKind.INVALID, f"This generator cannot run {request.task!r}.")
        if request.aspect not in ASPECTS:
            raise JobFailed(FailureKind.INVALID, f"Unknown aspect {request.aspect!r}.")
        mode = request.mode
        note = None
        if mode == Mode.FAST and not self.fast_available:
            mode = Mode.STANDARD
            note = "Fast mode is unavailable on this server, so standard mode was used."
        preset = MODES[mode]
        steps = self.settings.lightning_steps if mode == Mode.FAST else preset.steps
        cfg = preset.true_cfg_scale
        full_prompt = request.style.apply(request.prompt)
        if cfg > 1 and self.settings.positive_magic:
            full_prompt = full_prompt.rstrip(" .,") + POSITIVE_MAGIC
        negatives = [n.strip() for n in (request.negative_prompt, request.style.negative) if n]
        # True CFG only runs with a negative prompt; " " is the neutral one.
        negative = ", ".join(n for n in negatives if n) or NEUTRAL_NEGATIVE
        width, height = image_size(request.aspect, self.max_side)
        plan = Plan(
            task=TASK_GENERATE,
            prompt=request.prompt,
            full_prompt=full_prompt,
            negative_prompt=negative if cfg > 1 else "",
            style=request.style.name,
            seed=pick_seed(request),
            steps=steps,
            true_cfg_scale=cfg,
            width=width,
            height=height,
            aspect=request.aspect,
            mode=mode,
            requested_mode=request.mode,
            model=public_model_name(self.model_name),
            note=note,
            weights=self.weight_format,
        )
        if request.images:  # a variation: fewer steps, strength, parent job
            plan = img2img_fields(plan, request)
        return plan

    def generate(
        self, request: JobRequest, control: JobControl = UNWATCHED, plan: Plan | None = None
    ) -> JobResult:
        """Render one image. Raises ``JobFailed`` for OOM, cancel, deadline and bad input.

        Previews (with ``settings.previews``, and only when the control wants them) come
        through the control's steps (``engine.previews``).
        """
        if plan is None:
            plan = self.plan(request)
        init_image = None
        if request.images:  # decoded and checked before any GPU work
            init_image = load_init_image(request.images[0], plan.width, plan.height)
        previews = None
        if control.previews and self.settings.previews:
            previews = PreviewMaker(
                width=plan.width,
                height=plan.height,
                total=plan.steps,
                interval_s=self.settings.preview_interval_s,
            )
        watch = StepWatch(
            total=plan.steps,
            deadline_s=request.deadline_s or self.settings.job_timeout_s,
            device=self.device,
            control=control,
            delay_s=self.settings.test_step_delay_s,
            previews=previews,
            agree_stop=self.agree_stop,
        )
        if self.swap is not None:
            self.swap.activate(self.model_name)
        self._set_mode(plan.mode == Mode.FAST)
        pipe = self.pipe
        image_kwargs: dict[str, object] = {}
        if init_image is not None:
            pipe = self.img2img_pipeline()  # after _set_mode: it follows the scheduler
            image_kwargs = {"image": init_image, "strength": plan.strength}
        oom_message = (
            "The GPU ran out of memory for this image. Try again in a moment, or pick "
            "a smaller aspect or fast mode."
        )
        with (
            oom_fails_job(f"job {request.job_id} ({plan.size})", self.free_memory, oom_message),
            torch.inference_mode(),
        ):
            output = pipe(
                **call_arguments(
                    plan,
                    prompt=plan.full_prompt,
                    # A variation's schedule has the mode's full length; strength skips its start.
                    steps=plan.schedule_steps or plan.steps,
                    seed=plan.seed,
                    max_sequence_length=self.settings.max_sequence_length,
                    callback=watch,
                ),
                **image_kwargs,
            )
        watch.raise_if_stopped("Generation", "The generation was cancelled.")
        return job_result(request, plan, output.images[0], watch.elapsed())

    def warmup(self) -> None:
        """Render one short image per path so the first user does not pay for lazy init."""
        started = time.perf_counter()
        modes = [Mode.STANDARD] + ([Mode.FAST] if self.fast_available else [])
        for mode in modes:
            request = JobRequest(job_id=f"warmup-{mode}", user_id=0, prompt="warm up", seed=0)
            request = dataclasses.replace(request, mode=mode)
            plan_steps = self.settings.lightning_steps if mode == Mode.FAST else 2
            self.warm_once(request, plan_steps)
        logger.info("warm-up done in %.1fs", time.perf_counter() - started)

    def warm_once(self, request: JobRequest, steps: int) -> None:
        """One pipeline call of ``steps`` steps for ``request`` (warm-up and benchmarks)."""
        plan = self.plan(request)
        self._set_mode(plan.mode == Mode.FAST)
        with torch.inference_mode():
            self.pipe(
                **call_arguments(
                    plan,
                    prompt=plan.full_prompt,
                    steps=steps,
                    seed=0,
                    max_sequence_length=self.settings.max_sequence_length,
                )
            )

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
