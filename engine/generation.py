"""What one image's pipeline call shares between the text-to-image generator
(``engine.pipeline``) and the edit generator (``engine.edit.generator``): fast mode's switch
(Lightning LoRA and its scheduler), the per-step callback (progress with throttled device
syncs, previews, cancel, deadline), the out-of-memory answer, and the PNG with its parameters.

One place, so that a fix to progress, cancel or the deadline reaches text-to-image,
variations and edits alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, OutputImage
from engine.diffusers_types import Pipeline, Scheduler
from engine.generator import JobControl, Plan
from engine.pnginfo import a1111_parameters
from engine.presets import MAX_SEED
from engine.previews import PreviewMaker

logger = logging.getLogger(__name__)

StopAgreement = Callable[[FailureKind | None], FailureKind | None]

# Lightning's distilled sampler: a fixed shift of 3 (log(3) on both ends), no terminal shift.
LIGHTNING_SCHEDULER_OVERRIDES: dict[str, object] = {
    "base_shift": math.log(3),
    "max_shift": math.log(3),
    "shift_terminal": None,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "shift": 1.0,
}

# Progress needs a device sync to report honest step times; do it at most this often.
PROGRESS_SYNC_INTERVAL_S = 0.5


class LightningModes:
    """Fast mode's switch for a generator whose ``pipe`` may carry a Lightning LoRA adapter:
    the adapter on with the Lightning scheduler, or off with the pipeline's own scheduler.

    A generator sets ``pipe``, ``fast_available`` and ``lora_adapter``, then calls
    ``_init_modes()``. ``lora_switch``, when set (``engine.optimize`` merges the LoRA into the
    weights itself), replaces PEFT's enable/disable.
    """

    pipe: Pipeline
    fast_available: bool
    lora_adapter: str
    lora_switch: Callable[[bool], None] | None = None

    def _init_modes(self) -> None:
        self._base_scheduler = self.pipe.scheduler
        self._fast_scheduler: Scheduler | None = None
        if self.fast_available:
            self._fast_scheduler = type(self.pipe.scheduler).from_config(
                {**dict(self.pipe.scheduler.config), **LIGHTNING_SCHEDULER_OVERRIDES}
            )
        self._lora_active: bool | None = None

    def _set_mode(self, fast: bool) -> None:
        if not self.fast_available or self._lora_active is fast:
            return
        if self.lora_switch is not None:
            self.lora_switch(fast)
        elif fast:
            self.pipe.enable_lora()
            self.pipe.set_adapters([self.lora_adapter], adapter_weights=[1.0])
        else:
            self.pipe.disable_lora()
        if fast and self._fast_scheduler is not None:  # fast_available: it was made
            self.pipe.scheduler = self._fast_scheduler
        else:
            self.pipe.scheduler = self._base_scheduler
        self._lora_active = fast


def load_lightning_lora(
    pipe: Pipeline,
    source: str,
    weight_name: str | None,
    adapter: str,
    *,
    log: logging.Logger,
    name: str,
    unavailable: str,
    fallback: str,
) -> bool:
    """Load a Lightning LoRA as ``adapter``; True when fast mode can run. A LoRA that cannot be
    loaded is never fatal: the log says which and why (first line of the error), and fast
    requests run the standard call (``fallback`` says how, ``log`` is the caller's logger)."""
    try:
        pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=adapter)
    except Exception as exc:
        log.warning(
            "%s: could not load the %s %s/%s (%s); %s",
            unavailable,
            name,
            source,
            weight_name,
            exc.__class__.__name__ + ": " + str(exc).splitlines()[0][:200],
            fallback,
        )
        return False
    log.info("%s loaded from %s (%s)", name, source, weight_name)
    return True


class StepWatch:
    """``callback_on_step_end`` for one pipeline call, and what it saw.

    Reports progress to the job's ``JobControl`` (a device sync at most every
    ``PROGRESS_SYNC_INTERVAL_S``, and on the first and last step, so step times are honest
    without stalling the GPU every step), hands it previews, and stops the call at the next
    step when the control says so or the deadline passes (diffusers' ``_interrupt`` skips the
    remaining steps). ``agree_stop`` (``engine.parallel``) makes every rank stop at the same step.
    """

    def __init__(
        self,
        *,
        total: int,
        deadline_s: float,
        device: torch.device,
        control: JobControl,
        delay_s: float = 0.0,
        previews: PreviewMaker | None = None,
        agree_stop: StopAgreement | None = None,
    ) -> None:
        self.total = total
        self.deadline_s = deadline_s
        self.control = control
        self.delay_s = delay_s
        self.previews = previews
        self.agree_stop = agree_stop
        self.sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.started = time.perf_counter()
        self.deadline = self.started + deadline_s
        self.last_sync = self.started
        self.stopped: FailureKind | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(
        self, pipe: Pipeline, index: int, _t: object, kwargs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if self.delay_s:
            time.sleep(self.delay_s)
        step, total = index + 1, self.total
        preview = None
        if self.previews is not None:
            preview = self.previews.observe(pipe, step, kwargs["latents"])
        now = time.perf_counter()
        if preview is not None or (
            self.control.followed
            and (
                self.sync is None
                or step in (1, total)
                or now - self.last_sync >= PROGRESS_SYNC_INTERVAL_S
            )
        ):
            if self.sync is not None:
                self.sync()  # honest step times; at most every PROGRESS_SYNC_INTERVAL_S
            now = self.last_sync = time.perf_counter()
            self.control.step(step, total, now - self.started, preview)
        reason = self.control.stop_reason()
        if reason is None and now > self.deadline:
            reason = FailureKind.TIMEOUT
        if self.agree_stop is not None:
            reason = self.agree_stop(reason)
        if reason is not None and self.stopped is None:
            self.stopped = reason
            pipe._interrupt = True  # diffusers skips the remaining steps
        return kwargs

    def raise_if_stopped(self, took: str, cancelled: str) -> None:
        """After the call: a stopped run fails the job, in the caller's words (``took`` names
        what ran too long, ``cancelled`` is the whole cancel message)."""
        if self.stopped is None:
            return
        if self.stopped == FailureKind.TIMEOUT:
            raise JobFailed(
                FailureKind.TIMEOUT, f"{took} took longer than {self.deadline_s:.0f} s."
            )
        raise JobFailed(self.stopped, cancelled)


def call_arguments(
    plan: Plan,
    *,
    prompt: str,
    steps: int,
    seed: int,
    max_sequence_length: int,
    callback: StepWatch | None = None,
) -> dict[str, object]:
    """The arguments every Qwen-Image pipeline call here takes from a plan. True CFG runs only
    with a negative prompt (an empty one means none); the noise comes from a CPU generator,
    so one seed makes the same image on any device."""
    arguments: dict[str, object] = {
        "prompt": prompt,
        "negative_prompt": plan.negative_prompt or None,
        "true_cfg_scale": plan.true_cfg_scale,
        "width": plan.width,
        "height": plan.height,
        "num_inference_steps": steps,
        "max_sequence_length": max_sequence_length,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
        "output_type": "pil",
    }
    if callback is not None:
        arguments["callback_on_step_end"] = callback
    return arguments


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@contextlib.contextmanager
def oom_fails_job(what: str, free_memory: Callable[[], None], user_message: str) -> Iterator[None]:
    """An out-of-memory error inside becomes ``JobFailed(OOM, user_message)`` after the cached
    memory is freed, so the next job starts clean; any other error passes through."""
    try:
        yield
    except Exception as exc:
        if not is_oom(exc):
            raise
        free_memory()
        logger.warning("%s: GPU out of memory", what)
        raise JobFailed(FailureKind.OOM, user_message) from exc


def png_with_parameters(image: Image.Image, parameters: Mapping[str, str | int | float]) -> bytes:
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


def pick_seed(request: JobRequest) -> int:
    """The request's seed, or a fresh random one; a seed out of range is the user's error."""
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise JobFailed(FailureKind.INVALID, f"Seed must be between 0 and {MAX_SEED}.")
    return seed


def job_result(request: JobRequest, plan: Plan, image: Image.Image, run_s: float) -> JobResult:
    """The finished one-image job: the PNG (the plan in its text chunks) and the parameters it
    actually ran with. ``prompt`` is what the user typed; ``full_prompt`` is what the model
    read (after the style template and quality suffix, or the edit's instruction)."""
    png = png_with_parameters(image, plan.png_parameters())
    return JobResult(
        job_id=request.job_id,
        images=(OutputImage(png=png, width=image.width, height=image.height, seed=plan.seed),),
        steps=plan.steps,
        true_cfg_scale=plan.true_cfg_scale,
        mode=plan.mode,
        requested_mode=request.mode,
        style=plan.style or "none",
        prompt=request.prompt,
        full_prompt=plan.model_prompt,
        negative_prompt=plan.negative_prompt,
        aspect=plan.aspect,
        model=plan.model_label,
        run_s=run_s,
        note=plan.note,
    )
