"""``EditGenerator``: Qwen-Image-Edit (``QwenImageEditPlusPipeline``) next to the loaded
text-to-image pipeline, sharing its text encoder and VAE when they are the same weights.

The recommended call follows the Qwen-Image-Edit-2511 model card's Quick Start (also the
QwenLM/Qwen-Image README): ``true_cfg_scale=4.0``, ``negative_prompt=" "``,
``num_inference_steps=40``, ``guidance_scale=1.0`` (ignored by this non-distilled transformer,
so it is not passed), images as a list of up to three. Quality mode runs diffusers' default of
50 steps; fast mode needs an edit Lightning LoRA (``IMAGINE_EDIT_LIGHTNING_LORA``, e.g.
``lightx2v/Qwen-Image-Edit-2511-Lightning``, 4 steps, no CFG, the Lightning scheduler shift) and
otherwise falls back to the standard call, logged and noted on the result.

Output size: the first image's aspect ratio at diffusers' 1024² target area (multiples of 32).
diffusers 0.42.1 alone would take the ratio of the *last* image (``image[-1].size``); here the
first image is the one being edited and the others are references, so the size is passed
explicitly.

Like ``ImageGenerator``, one thread calls ``generate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from PIL import Image

from engine.contract import (
    MAX_EDIT_IMAGE_BYTES,
    MAX_EDIT_IMAGES,
    TASK_EDIT,
    TASK_GENERATE,
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
    Mode,
)
from engine.devices import EngineUnavailable
from engine.diffusers_types import Pipeline
from engine.edit.images import decode_edit_image, edit_output_size
from engine.edit.processor import edit_image_sizes, load_processor
from engine.edit.sharing import same_weights
from engine.edit.speedups import apply_edit_speedups
from engine.edit.swap import TransformerSwap, choose_residency
from engine.generation import (
    LightningModes,
    StepWatch,
    call_arguments,
    job_result,
    load_lightning_lora,
    oom_fails_job,
    pick_seed,
)
from engine.generator import UNWATCHED, Generator, GeneratorInfo, JobControl, Plan
from engine.loader import check_model_source
from engine.optimize.quant import AdapterSwitch, QuantLinear
from engine.pipeline import ImageGenerator
from engine.placing import component, place_text_encoder, place_transformer
from engine.planning import Component, ComponentPlan, Placement, WeightFormat
from engine.prefetch import read_ahead
from engine.presets import NEUTRAL_NEGATIVE, public_model_name
from engine.settings import EngineSettings, MemoryMode
from engine.streaming import module_bytes
from engine.tiny import tiny_defaults

logger = logging.getLogger(__name__)

EDIT_LORA_ADAPTER = "edit-lightning"
# Components that may be the text-to-image pipeline's own modules.
SHARABLE = ("text_encoder", "vae")
# Model card (Qwen-Image-Edit-2511 Quick Start): 40 steps, true CFG 4.0 with the negative " ".
EDIT_STEPS = {Mode.QUALITY: 50, Mode.STANDARD: 40}
EDIT_TRUE_CFG = 4.0


class EditUnavailable(RuntimeError):
    """Editing is off or cannot run here; the message says why, in words a user can read."""


_WHY = {
    Placement.RESIDENT: "both transformers resident",
    Placement.SWAPPED: "the idle transformer waits in pinned host memory and is swapped in",
    Placement.STREAMED: "streamed block by block from pinned host memory",
    Placement.SEQUENTIAL: "fetched layer by layer",
    Placement.ABSENT: "absent",
}


def _switch(converted: list[QuantLinear]) -> AdapterSwitch | None:
    """Fast edits' switch when the edit LoRA now runs beside compact weights."""
    if any(module.lora_down is not None for module in converted):
        return AdapterSwitch(converted)
    return None


class EditGenerator(LightningModes, Generator):
    """The loaded edit pipeline, what it shares with text-to-image, and where its transformer is."""

    lora_adapter = EDIT_LORA_ADAPTER

    def __init__(
        self,
        pipe: Pipeline,
        base: ImageGenerator,
        *,
        settings: EngineSettings,
        model_name: str,
        shared: dict[str, str],
        swap: TransformerSwap | None,
        fast_available: bool,
        condition_area: int | None = None,
        vae_area: int | None = None,
    ) -> None:
        self.pipe = pipe
        self.base = base
        self.settings = settings
        self.model_name = model_name
        # component -> why it is (or is not) the text-to-image pipeline's module
        self.shared = shared
        self.swap = swap
        self.fast_available = fast_available
        self.condition_area = condition_area
        self.vae_area = vae_area
        self.max_side = base.max_side
        # The engine.optimize steps applied to the edit pipeline (engine.edit.speedups).
        self.optimizations: list[str] = []
        self._init_modes()

    @property
    def device(self) -> torch.device:
        """The text-to-image pipeline's device (``engine.optimize`` steps read it)."""
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, base: ImageGenerator, settings: EngineSettings | None = None) -> EditGenerator:
        """Load ``settings.edit_model`` next to ``base``. Raises ``EditUnavailable`` when editing
        is off (empty setting) and ``EngineUnavailable`` for the real model on a CPU."""
        # The defining module: to a type checker ``diffusers.QwenImageEditPlusPipeline`` is
        # diffusers' untyped placeholder (engine.diffusers_types says why).
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
            QwenImageEditPlusPipeline,
        )

        settings = settings or base.settings
        source = settings.edit_model.strip()
        if not source:
            raise EditUnavailable("Image editing is turned off on this server.")
        check_model_source(source, "IMAGINE_EDIT_MODEL")  # a mistyped path, named as such
        tiny = tiny_defaults(source) if Path(source).is_dir() else None
        if base.device.type == "cpu" and tiny is None and not settings.allow_cpu:
            raise EngineUnavailable(
                f"No usable CUDA GPU found, so the edit model {source!r} (20B parameters) will "
                "not be loaded. For a dry run, build `python -m engine tiny DIR --edit` and set "
                "IMAGINE_EDIT_MODEL=DIR."
            )
        cache_dir = str(settings.hf_cache_dir) if settings.hf_cache_dir else None
        plan = base.memory_plan
        if plan is not None and not plan.edit_available:
            raise EditUnavailable(
                "Image editing is off on this machine: "
                + next((r for r in plan.reasons if r.startswith("editing is off")), "no room")
                + "."
            )
        # Streamed modules are shared too: the hooks on a module serve whichever pipeline runs it.
        resident = base.memory_mode in (MemoryMode.RESIDENT, MemoryMode.STREAMED)
        shared: dict[str, str] = {}
        components: dict[str, object] = {}
        for name in SHARABLE:
            if not resident:
                shared[name] = f"not shared: memory mode {base.memory_mode} offloads each pipeline"
                continue
            same, why = same_weights(base.model_name, source, name, cache_dir)
            if same:
                components[name] = getattr(base.pipe, name)
            shared[name] = ("shared: " if same else "separate copy: ") + why
            logger.info("edit %s: %s", name, shared[name])
        started = time.perf_counter()
        with read_ahead(
            source,
            settings.edit_lightning_lora.strip(),
            settings.edit_lightning_weight_name,
            cache=settings.hf_cache_dir,
            enabled=settings.prefetch_weights,
            skip=components,  # shared with the base pipeline: already in memory
        ):
            components["processor"] = load_processor(source, cache_dir)
            # Its modules are registered at run time, so diffusers' class declares none of what
            # the engine uses: here it becomes the engine's view of a pipeline.
            pipe = cast(
                Pipeline,
                QwenImageEditPlusPipeline.from_pretrained(
                    source, dtype=base.dtype, cache_dir=cache_dir, **components
                ),
            )
            pipe.set_progress_bar_config(disable=True)
            fast_available = cls._load_lightning(pipe, settings)
            swap, switch = cls._place(pipe, base, source, components)
        logger.info("loaded edit model %s in %.1fs", source, time.perf_counter() - started)
        editor = cls(
            pipe,
            base,
            settings=settings,
            model_name=source,
            shared=shared,
            swap=swap,
            fast_available=fast_available,
            condition_area=(tiny or {}).get("edit_condition_area"),
            vae_area=(tiny or {}).get("edit_vae_area"),
        )
        editor.lora_switch = switch
        editor.optimizations = apply_edit_speedups(editor)
        logger.info("edit speed-ups: %s", ", ".join(editor.optimizations) or "none")
        return editor

    @staticmethod
    def _load_lightning(pipe: Pipeline, settings: EngineSettings) -> bool:
        """The edit Lightning LoRA for fast edits; without one, fast edits run standard."""
        lora, weight_name = (
            settings.edit_lightning_lora.strip(),
            settings.edit_lightning_weight_name,
        )
        if not lora:
            logger.warning(
                "fast edits unavailable: IMAGINE_EDIT_LIGHTNING_LORA is not set; fast edit "
                "requests will run the standard edit call"
            )
            return False
        return load_lightning_lora(
            pipe,
            lora,
            weight_name,
            EDIT_LORA_ADAPTER,
            log=logger,
            name="edit Lightning LoRA",
            unavailable="fast edits unavailable",
            fallback="fast edit requests will run the standard edit call",
        )

    @staticmethod
    def _place(
        pipe: Pipeline, base: ImageGenerator, source: str, shared: Mapping[str, object]
    ) -> tuple[TransformerSwap | None, AdapterSwitch | None]:
        """Put the edit pipeline's own modules where they run (the memory plan's format and
        place for its transformer); the shared ones stay put. Returns the swap between the two
        transformers, and fast edits' switch where the LoRA became an adapter."""
        device = base.device
        plan = base.memory_plan
        if base.memory_mode in (MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD):
            logger.info("edit pipeline: model CPU offload (memory mode %s)", base.memory_mode)
            pipe.enable_model_cpu_offload(device=device)
            return None, None
        for name in SHARABLE:
            if name not in shared:
                module = component(pipe, name)
                if name == "text_encoder" and plan is not None:
                    place_text_encoder(module, plan.of(Component.TEXT_ENCODER), device)
                else:
                    module.to(device)
        transformer = component(pipe, "transformer")
        if plan is not None and device.type == "cuda":
            part = plan.of(Component.EDIT_TRANSFORMER)
            keep_all = part.placement == Placement.RESIDENT
            why = "memory plan: " + _WHY[part.placement]
        else:
            free = None
            if device.type == "cuda":
                free, _total = torch.cuda.mem_get_info(device)
            keep_all, why = choose_residency(device, free, module_bytes(pipe.transformer))
            fmt = plan.weights if plan is not None else WeightFormat.BF16
            placement = Placement.RESIDENT if keep_all else Placement.SWAPPED
            part = ComponentPlan(Component.EDIT_TRANSFORMER, placement, fmt, 0.0, 0.0)
        converted, _streamer = place_transformer(transformer, part, device,
                                                 adapter=EDIT_LORA_ADAPTER)  # fmt: skip
        logger.info("edit transformer placement: %s", why)
        if part.placement == Placement.STREAMED:
            return None, _switch(converted)  # nothing to swap: it streams whole
        swap = TransformerSwap(device, keep_all=keep_all)
        swap.add(base.model_name, base.pipe.transformer, on_device=True)
        swap.add(source, pipe.transformer, on_device=keep_all)
        base.swap = swap  # text-to-image jobs now make their transformer resident too
        return swap, _switch(converted)

    # --------------------------------------------------------------- what it is
    def tasks(self) -> tuple[str, ...]:
        return (TASK_EDIT,)

    def resident_models(self) -> tuple[str, ...]:
        """This model, while its transformer is on the accelerator (never, when each pipeline
        is offloaded per call)."""
        if self.swap is None or not self.swap.is_resident(self.model_name):
            return ()
        return (public_model_name(self.model_name),)

    def preferred_task(self) -> str | None:
        """With two transformers and room for one: the task of the one resident now."""
        if self.swap is None or self.swap.keep_all:
            return None
        return TASK_EDIT if self.swap.is_resident(self.model_name) else TASK_GENERATE

    def info(self) -> GeneratorInfo:
        """The text-to-image generator's card, device and memory, and what editing adds."""
        return dataclasses.replace(
            self.base.info(),
            tasks=self.tasks(),
            resident_models=self.resident_models(),
            edit_model=self.model_name,
            edit_fast_available=self.fast_available,
            edit_shared=tuple(self.shared.items()),
            edit_optimizations=tuple(self.optimizations),
        )

    def free_memory(self) -> None:
        self.base.free_memory()

    # --------------------------------------------------------------- generation
    def plan(self, request: JobRequest) -> Plan:
        """Every parameter this edit runs with (also what goes into the PNG's text chunks)."""
        return self._plan(request, [decode_edit_image(data) for data in request.images])

    def _plan(self, request: JobRequest, images: list[Image.Image]) -> Plan:
        request.validate()
        if request.task != TASK_EDIT:
            raise JobFailed(FailureKind.INVALID, f"This generator cannot run {request.task!r}.")
        if not images or len(images) > MAX_EDIT_IMAGES:
            raise JobFailed(FailureKind.INVALID, f"An edit takes one to {MAX_EDIT_IMAGES} images.")
        if any(len(data) > MAX_EDIT_IMAGE_BYTES for data in request.images):
            raise JobFailed(
                FailureKind.INVALID,
                f"An edit image is larger than {MAX_EDIT_IMAGE_BYTES // 2**20} MB.",
            )
        if request.strength is not None:
            raise JobFailed(FailureKind.INVALID, "An edit cannot also be a variation.")
        mode, note = request.mode, None
        if mode == Mode.FAST and not self.fast_available:
            mode = Mode.STANDARD
            note = "Fast edits are unavailable on this server, so the standard edit ran."
        fast = mode == Mode.FAST
        steps = self.settings.edit_lightning_steps if fast else EDIT_STEPS[mode]
        cfg = 1.0 if fast else EDIT_TRUE_CFG
        negative = (request.negative_prompt or "").strip() or NEUTRAL_NEGATIVE
        width, height = edit_output_size(images[0].width, images[0].height, self.max_side)
        divisor = math.gcd(width, height)
        return Plan(
            task=TASK_EDIT,
            instruction=request.prompt,
            input_images=tuple(hashlib.sha256(data).hexdigest() for data in request.images),
            negative_prompt=negative if cfg > 1 else "",
            seed=pick_seed(request),
            steps=steps,
            true_cfg_scale=cfg,
            width=width,
            height=height,
            aspect=f"{width // divisor}:{height // divisor}",
            mode=mode,
            requested_mode=request.mode,
            model=public_model_name(self.model_name),
            note=note,
            weights=self.base.weight_format,
        )

    def generate(
        self, request: JobRequest, control: JobControl = UNWATCHED, plan: Plan | None = None
    ) -> JobResult:
        """Edit the request's images. Raises ``JobFailed`` for bad input, OOM, cancel, deadline.
        The edit pipeline draws no previews; its progress goes through the control's steps."""
        images = [decode_edit_image(data) for data in request.images]
        if plan is None:
            plan = self._plan(request, images)
        watch = StepWatch(
            total=plan.steps,
            deadline_s=request.deadline_s or self.settings.job_timeout_s,
            device=self.base.device,
            control=control,
        )
        if self.swap is not None:
            self.swap.activate(self.model_name)
        self._set_mode(plan.mode == Mode.FAST)
        oom_message = (
            "The GPU ran out of memory for this edit. Try again in a moment, or use "
            "fewer or smaller images."
        )
        with (
            oom_fails_job(f"edit {request.job_id} ({plan.size})", self.free_memory, oom_message),
            edit_image_sizes(self.condition_area, self.vae_area),
            torch.inference_mode(),
        ):
            output = self.pipe(
                image=images,
                **call_arguments(
                    plan,
                    prompt=plan.model_prompt,
                    steps=plan.steps,
                    seed=plan.seed,
                    max_sequence_length=self.settings.max_sequence_length,
                    callback=watch,
                ),
            )
        watch.raise_if_stopped("The edit", "The edit was cancelled.")
        return job_result(request, plan, output.images[0], watch.elapsed())
