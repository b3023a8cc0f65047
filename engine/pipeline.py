"""Load Qwen-Image once and turn ``JobRequest`` objects into PNG bytes.

``ImageGenerator`` is not thread-safe (diffusers schedulers keep per-call state): exactly one
thread may call ``generate``. The in-process backend and each remote worker own one instance.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, Mode
from engine.img2img import Img2ImgView, img2img_plan, load_init_image
from engine.pnginfo import a1111_parameters
from engine.presets import (
    ASPECTS,
    MAX_SEED,
    MODES,
    NEUTRAL_NEGATIVE,
    POSITIVE_MAGIC,
    image_size,
)
from engine.previews import PreviewCallback, PreviewMaker
from engine.settings import EngineSettings, MemoryMode
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE, tiny_defaults

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float, float], None]
"""on_step(step, total, elapsed_s, sec_per_step), called on the generating thread."""
StopCheck = Callable[[], FailureKind | None]

LORA_ADAPTER = "lightning"

# Lightning's distilled sampler: a fixed shift of 3 (log(3) on both ends), no terminal shift.
LIGHTNING_SCHEDULER_OVERRIDES: dict[str, Any] = {
    "base_shift": math.log(3),
    "max_shift": math.log(3),
    "shift_terminal": None,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "shift": 1.0,
}

# Bytes of bf16 weights of the three real models, and what a 1328² CFG image needs on top.
RESIDENT_GIB = 57.0
ACTIVATIONS_GIB = 6.0
TRANSFORMER_GIB = 41.0

# Progress needs a device sync to report honest step times; do it at most this often.
PROGRESS_SYNC_INTERVAL_S = 0.5


class EngineUnavailable(RuntimeError):
    """The configured model cannot be served on this machine; the message says what to do."""


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable(f"IMAGINE_DEVICE={setting} but no CUDA GPU is usable here.")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    try:
        return table[setting.lower()]
    except KeyError:
        raise EngineUnavailable(f"unknown IMAGINE_DTYPE {setting!r}") from None


def choose_memory_mode(
    setting: MemoryMode, device: torch.device, free_gib: float | None
) -> tuple[MemoryMode, str]:
    """Keep everything resident whenever it fits: offloading made the same image ~8x slower."""
    if setting != MemoryMode.AUTO:
        return setting, "set by IMAGINE_MEMORY_MODE"
    if device.type != "cuda" or free_gib is None:
        return MemoryMode.RESIDENT, f"{device.type}: models stay in main memory"
    if free_gib >= RESIDENT_GIB + ACTIVATIONS_GIB:
        return (
            MemoryMode.RESIDENT,
            f"{free_gib:.0f} GiB free >= {RESIDENT_GIB + ACTIVATIONS_GIB:.0f}",
        )
    if free_gib >= TRANSFORMER_GIB + ACTIVATIONS_GIB:
        return MemoryMode.MODEL_OFFLOAD, f"{free_gib:.0f} GiB free: one model on the GPU at a time"
    return MemoryMode.SEQUENTIAL_OFFLOAD, f"{free_gib:.0f} GiB free: layer-by-layer offload (slow)"


def png_with_parameters(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG bytes whose text chunks hold every parameter needed to reproduce the image: one
    chunk per key, all of them as JSON (``parameters_json``), and ``parameters`` in the format
    A1111 / Civitai "PNG Info" readers show (``engine.pnginfo``)."""
    texts = [(key, str(value)) for key, value in parameters.items()]
    texts.append(("parameters", a1111_parameters(parameters)))
    texts.append(("parameters_json", json.dumps(parameters, ensure_ascii=False, sort_keys=True)))
    try:  # multi-threaded encoder (Pillow's took ~0.5 s of the GPU thread per 1328² image)
        from engine.optimize import encode_png
    except ImportError:
        pass
    else:
        return encode_png(image, texts)
    info = PngInfo()
    for key, value in texts:
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buffer.getvalue()


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def load_generator(settings: EngineSettings) -> Any:
    """The engine's generator: ``ImageGenerator.load``, or with several GPUs in
    ``IMAGINE_GPUS`` the ``engine.parallel`` facade that runs each image across them."""
    gpus = [g.strip() for g in (getattr(settings, "gpus", "") or "").split(",") if g.strip()]
    if len(gpus) > 1:
        from engine import parallel

        return parallel.load(settings)
    if len(gpus) == 1 and not settings.device.startswith("cpu"):
        settings = settings.model_copy(update={"device": f"cuda:{gpus[0]}"})
    return ImageGenerator.load(settings)


class ImageGenerator:
    """A loaded Qwen-Image pipeline plus everything decided at load time."""

    def __init__(
        self,
        pipe: Any,
        settings: EngineSettings,
        *,
        device: torch.device,
        dtype: torch.dtype,
        memory_mode: MemoryMode,
        max_side: int | None,
        fast_available: bool,
        model_name: str,
    ) -> None:
        self.pipe = pipe
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.memory_mode = memory_mode
        self.max_side = max_side
        self.fast_available = fast_available
        self.model_name = model_name
        self._base_scheduler = pipe.scheduler
        self._fast_scheduler = None
        if fast_available:
            self._fast_scheduler = type(pipe.scheduler).from_config(
                {**dict(pipe.scheduler.config), **LIGHTNING_SCHEDULER_OVERRIDES}
            )
        self._lora_active: bool | None = None
        # Set by engine.optimize when it merges the LoRA into the weights itself.
        self.lora_switch: Callable[[bool], None] | None = None
        self.optimizations: list[str] = []
        # The Vary buttons' img2img pipeline: built on first use from this pipeline's modules.
        self._img2img = Img2ImgView()
        # Set by engine.parallel: every rank of one image must stop at the same step, so each
        # step's stop decision goes through this (rank 0's decision wins).
        self.agree_stop: Callable[[FailureKind | None], FailureKind | None] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: EngineSettings) -> ImageGenerator:
        """Load the pipeline once. Refuses the real model on a CPU before downloading anything."""
        from diffusers import QwenImagePipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        device = resolve_device(settings.device)
        tiny = tiny_defaults(settings.model) if Path(settings.model).is_dir() else None
        if device.type == "cpu" and tiny is None and not settings.allow_cpu:
            raise EngineUnavailable(
                f"No usable CUDA GPU found, so {settings.model!r} (a 20B-parameter model) will not "
                "be loaded: on a CPU one image would take hours. For a dry run of the whole bot, "
                "build the tiny random model with `python -m engine tiny ./tiny-model` and set "
                "IMAGINE_MODEL=./tiny-model (images are noise, everything else is real)."
            )
        dtype = resolve_dtype(settings.dtype, device)
        max_side = settings.max_side
        if max_side is None and tiny is not None:
            max_side = int(tiny.get("max_side", 256))
            logger.info("tiny model: output sizes capped at %d px (exact aspect)", max_side)

        free_gib = None
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            free_gib = free / 2**30
        memory_mode, why = choose_memory_mode(settings.memory_mode, device, free_gib)
        logger.info("memory mode %s (%s)", memory_mode, why)

        started = time.perf_counter()
        pipe = QwenImagePipeline.from_pretrained(
            settings.model,
            dtype=dtype,
            cache_dir=str(settings.hf_cache_dir) if settings.hf_cache_dir else None,
        )
        pipe.set_progress_bar_config(disable=True)
        fast_available = cls._load_lightning(pipe, settings, tiny is not None)
        cls._place(pipe, memory_mode, device)
        logger.info(
            "loaded %s on %s (%s) in %.1fs", settings.model, device, dtype,
            time.perf_counter() - started,
        )  # fmt: skip
        generator = cls(
            pipe,
            settings,
            device=device,
            dtype=dtype,
            memory_mode=memory_mode,
            max_side=max_side,
            fast_available=fast_available,
            model_name=settings.model,
        )
        generator._apply_speedups()
        return generator

    @staticmethod
    def _load_lightning(pipe: Any, settings: EngineSettings, tiny: bool) -> bool:
        """Load the Lightning LoRA for fast mode; on failure fast mode falls back to standard."""
        source = settings.lightning_lora
        weight_name = settings.lightning_weight_name
        if tiny:
            local = Path(settings.model) / TINY_LORA_DIR
            if local.is_dir():
                source, weight_name = str(local), TINY_LORA_FILE
        try:
            pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=LORA_ADAPTER)
        except Exception as exc:
            logger.warning(
                "fast mode unavailable: could not load the Lightning LoRA %s/%s (%s); "
                "fast requests will run in standard mode",
                source,
                weight_name,
                exc.__class__.__name__ + ": " + str(exc).splitlines()[0][:200],
            )
            return False
        logger.info("Lightning LoRA loaded from %s (%s)", source, weight_name)
        return True

    @staticmethod
    def _place(pipe: Any, memory_mode: MemoryMode, device: torch.device) -> None:
        if memory_mode == MemoryMode.RESIDENT:
            pipe.to(device)
        elif memory_mode == MemoryMode.MODEL_OFFLOAD:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)

    def _apply_speedups(self) -> None:
        """GPU-only optimisations (compile, attention backend, FP8), when available."""
        try:
            from engine import optimize
        except ImportError:  # optimize is optional; the stock path is always correct
            return
        self.optimizations = optimize.apply(self)

    # --------------------------------------------------------------- generation
    def info(self) -> dict[str, object]:
        gpu = "cpu"
        memory_gb = 0.0
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            gpu = props.name
            memory_gb = round(props.total_memory / 2**30, 1)
        return {
            "model": self.model_name,
            "device": str(self.device),
            "gpu": gpu,
            "memory_mode": str(self.memory_mode),
            "memory_gb": memory_gb,
            "dtype": str(self.dtype).removeprefix("torch."),
            "fast_available": self.fast_available,
            "optimizations": list(self.optimizations),
        }

    def _set_mode(self, fast: bool) -> None:
        if not self.fast_available or self._lora_active is fast:
            return
        if self.lora_switch is not None:
            self.lora_switch(fast)
        elif fast:
            self.pipe.enable_lora()
            self.pipe.set_adapters([LORA_ADAPTER], adapter_weights=[1.0])
        else:
            self.pipe.disable_lora()
        self.pipe.scheduler = self._fast_scheduler if fast else self._base_scheduler
        self._lora_active = fast

    def img2img_pipeline(self) -> Any:
        """The ``QwenImageImg2ImgPipeline`` over this pipeline's modules (built on first use)."""
        return self._img2img.get(self.pipe)

    def plan(self, request: JobRequest) -> dict[str, Any]:
        """Every parameter this request will run with (also what goes into the PNG)."""
        request.validate()
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
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        if not 0 <= seed <= MAX_SEED:
            raise JobFailed(FailureKind.INVALID, f"Seed must be between 0 and {MAX_SEED}.")
        width, height = image_size(request.aspect, self.max_side)
        plan = {
            "prompt": request.prompt,
            "full_prompt": full_prompt,
            "negative_prompt": negative if cfg > 1 else "",
            "style": request.style.name,
            "seed": seed,
            "steps": steps,
            "true_cfg_scale": cfg,
            "width": width,
            "height": height,
            "size": f"{width}x{height}",
            "aspect": request.aspect,
            "mode": str(mode),
            "requested_mode": str(request.mode),
            "model": self.model_name,
            "note": note,
        }
        if request.init_image is not None:  # a variation: fewer steps, strength, parent job
            plan.update(img2img_plan(request, steps))
        return plan

    def generate(
        self,
        request: JobRequest,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        plan: dict[str, Any] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> JobResult:
        """Render one image. Raises ``JobFailed`` for OOM, cancel, deadline and bad input.

        ``plan`` (from ``plan(request)``) is given by ``engine.parallel``, whose follower ranks
        must run exactly the parameters rank 0 chose (the seed, the size).
        ``on_preview`` (with ``settings.previews``) is called instead of ``on_step`` for the
        steps that carry a preview JPEG (``engine.previews``).
        """
        if plan is None:
            plan = self.plan(request)
        init_image = None
        if request.init_image is not None:  # decoded and checked before any GPU work
            init_image = load_init_image(request.init_image, plan["width"], plan["height"])
        previews = None
        if on_preview is not None and self.settings.previews:
            previews = PreviewMaker(
                width=plan["width"],
                height=plan["height"],
                total=plan["steps"],
                interval_s=self.settings.preview_interval_s,
            )
        deadline_s = request.deadline_s or self.settings.job_timeout_s
        started = time.perf_counter()
        deadline = started + deadline_s
        stopped: list[FailureKind] = []
        last_sync = started
        delay = self.settings.test_step_delay_s
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None

        def step_end(pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal last_sync
            if delay:
                time.sleep(delay)
            step = index + 1
            total = plan["steps"]
            preview = None
            if previews is not None:
                preview = previews.observe(pipe, step, kwargs["latents"])
            now = time.perf_counter()
            if preview is not None or (
                on_step is not None
                and (
                    sync is None
                    or step in (1, total)
                    or now - last_sync >= PROGRESS_SYNC_INTERVAL_S
                )
            ):
                if sync is not None:
                    sync()  # honest step times; at most every PROGRESS_SYNC_INTERVAL_S
                now = time.perf_counter()
                last_sync = now
                elapsed = now - started
                if preview is not None and on_preview is not None:
                    on_preview(step, total, elapsed, elapsed / step, preview)
                elif on_step is not None:
                    on_step(step, total, elapsed, elapsed / step)
            reason = should_stop() if should_stop is not None else None
            if reason is None and now > deadline:
                reason = FailureKind.TIMEOUT
            if self.agree_stop is not None:
                reason = self.agree_stop(reason)
            if reason is not None and not stopped:
                stopped.append(reason)
                pipe._interrupt = True  # diffusers skips the remaining steps
            return kwargs

        self._set_mode(plan["mode"] == Mode.FAST)
        pipe, image_kwargs = self.pipe, {}
        if init_image is not None:
            pipe = self.img2img_pipeline()  # after _set_mode: it follows the scheduler
            image_kwargs = {"image": init_image, "strength": plan["strength"]}
        try:
            with torch.inference_mode():
                output = pipe(
                    prompt=plan["full_prompt"],
                    negative_prompt=plan["negative_prompt"] or None,
                    true_cfg_scale=plan["true_cfg_scale"],
                    width=plan["width"],
                    height=plan["height"],
                    # A variation's schedule has the mode's full length; strength skips its start.
                    num_inference_steps=plan.get("schedule_steps", plan["steps"]),
                    max_sequence_length=self.settings.max_sequence_length,
                    generator=torch.Generator(device="cpu").manual_seed(plan["seed"]),
                    callback_on_step_end=step_end,
                    output_type="pil",
                    **image_kwargs,
                )
        except Exception as exc:
            if is_oom(exc):
                self.free_memory()
                logger.warning("job %s: GPU out of memory (%s)", request.job_id, plan["size"])
                raise JobFailed(
                    FailureKind.OOM,
                    "The GPU ran out of memory for this image. Try again in a moment, or pick "
                    "a smaller aspect or fast mode.",
                ) from exc
            raise
        if stopped:
            if stopped[0] == FailureKind.TIMEOUT:
                raise JobFailed(
                    FailureKind.TIMEOUT, f"Generation took longer than {deadline_s:.0f} s."
                )
            raise JobFailed(stopped[0], "The generation was cancelled.")
        image = output.images[0]
        run_s = time.perf_counter() - started
        # "prompt" is what the user typed; "full_prompt" is what the model read after the style
        # template and quality suffix.
        chunk = {k: v for k, v in plan.items() if v is not None}
        png = png_with_parameters(image, chunk)
        return JobResult(
            job_id=request.job_id,
            png=png,
            width=image.width,
            height=image.height,
            seed=plan["seed"],
            steps=plan["steps"],
            true_cfg_scale=plan["true_cfg_scale"],
            mode=Mode(plan["mode"]),
            requested_mode=request.mode,
            style=plan["style"],
            prompt=request.prompt,
            full_prompt=plan["full_prompt"],
            negative_prompt=plan["negative_prompt"],
            aspect=request.aspect,
            model=self.model_name,
            run_s=run_s,
            note=plan["note"],
        )

    def warmup(self) -> None:
        """Render one short image per path so the first user does not pay for lazy init."""
        started = time.perf_counter()
        modes = [Mode.STANDARD] + ([Mode.FAST] if self.fast_available else [])
        for mode in modes:
            request = JobRequest(job_id=f"warmup-{mode}", user_id=0, prompt="warm up", seed=0)
            request = dataclasses.replace(request, mode=mode)
            plan_steps = self.settings.lightning_steps if mode == Mode.FAST else 2
            self._warm_once(request, plan_steps)
        logger.info("warm-up done in %.1fs", time.perf_counter() - started)

    def _warm_once(self, request: JobRequest, steps: int) -> None:
        plan = self.plan(request)
        self._set_mode(plan["mode"] == Mode.FAST)
        with torch.inference_mode():
            self.pipe(
                prompt=plan["full_prompt"],
                negative_prompt=plan["negative_prompt"] or None,
                true_cfg_scale=plan["true_cfg_scale"],
                width=plan["width"],
                height=plan["height"],
                num_inference_steps=steps,
                max_sequence_length=self.settings.max_sequence_length,
                generator=torch.Generator(device="cpu").manual_seed(0),
                output_type="pil",
            )

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
