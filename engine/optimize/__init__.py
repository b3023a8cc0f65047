"""Make a resident Qwen-Image engine fast (project issue #5): ``apply`` runs the steps; one
module per step beside this one.

``ImageGenerator.load`` calls ``apply(generator)`` once the pipeline sits where it will run; the
names it returns are shown in ``/status``. Every step here is optional: a step that cannot run
on this machine is skipped with a log line, and the stock diffusers path stays correct without
it. What each step buys on an H100 is measured by ``bench/gpu.py`` and summarised in
``docs/PERFORMANCE.md``.

The steps, in the order they run:

- ``prompt-cache``: text-encoder outputs are kept for recent prompts. True CFG encodes the same
  neutral negative for every image, and rerolls/variations repeat the prompt.
- ``vae-2d``: still images are decoded with 2D convolutions (the VAE's causal 3D convolutions
  see zero padding in two of their three temporal taps for a single frame): same result, a
  third of the decoder's convolution work.
- ``lora-fused``: fast mode's Lightning LoRA is merged into the base weights when fast mode
  starts and taken out again when a CFG mode starts (one GEMM per linear, ~45 ms for all 840
  on an H100). Unmerged, every adapted linear runs two extra skinny matmuls per forward.
- ``fp8-rowwise`` (``IMAGINE_FP8``, Hopper/Ada only): the image stream's attention and MLP
  linears run as FP8 matmuls with one scale per activation row and per weight channel. This
  changes the output slightly (measured error in docs/PERFORMANCE.md), so it is opt-in.
- ``attention:<backend>``: the fastest exact attention kernel this card offers, picked by timing
  the candidates at start-up on the model's own head shape.
- ``rope-real``: rotary embeddings in real arithmetic, which the compiler can fuse.
- ``compile``: the 60 repeated transformer blocks are compiled once (regional compilation, one
  graph with dynamic sequence lengths, so every aspect and prompt length reuses it), with a
  persistent on-disk cache so a restart does not pay the compile again.

``encode_png`` (used by ``engine.generation.png_with_parameters``) takes PNG compression, about
half a second per 1328² image with Pillow, off the critical path by spreading it over threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.optimize.attention import (
    ATTENTION_CANDIDATES,
    ATTENTION_MAX_REL_ERROR,
    ATTENTION_MIN_GAIN,
    ATTENTION_PROBE_TOKENS,
    _available_attention_backends,
    pick_attention_backend,
    time_attention,
)
from engine.optimize.compilation import (
    compile_and_check,
    compile_transformer,
    configure_compile_cache,
    default_compile_cache_dir,
    smoke_forward,
    uncompile_transformer,
)
from engine.optimize.fp8 import (
    FP8_CHECK_ROWS,
    FP8_DTYPE,
    FP8_FAST_ACCUM,
    FP8_MAX,
    FP8_TARGETS,
    FP8Linear,
    check_fp8_kernel,
    enable_fp8,
    fp8_eligible,
    fp8_linear,
    fp8_supported,
    quantize_rows,
)
from engine.optimize.lora import (
    LORA_ADAPTER,
    LORA_CORRECTION_BUDGET_BYTES,
    LoraFusion,
    install_lora_fusion,
)
from engine.optimize.png import PNG_LEVEL, PNG_WORKERS, encode_png
from engine.optimize.prompt_cache import PROMPT_CACHE_SIZE, PromptCache, install_prompt_cache
from engine.optimize.rope import install_real_rotary, rotary_real
from engine.optimize.vae import install_vae_single_frame
from engine.planning import WeightFormat
from engine.settings import MemoryMode

if TYPE_CHECKING:
    from engine.pipeline import ImageGenerator

__all__ = [
    "ATTENTION_CANDIDATES",
    "ATTENTION_MAX_REL_ERROR",
    "ATTENTION_MIN_GAIN",
    "ATTENTION_PROBE_TOKENS",
    "FP8_CHECK_ROWS",
    "FP8_DTYPE",
    "FP8_FAST_ACCUM",
    "FP8_MAX",
    "FP8_TARGETS",
    "LORA_ADAPTER",
    "LORA_CORRECTION_BUDGET_BYTES",
    "PNG_LEVEL",
    "PNG_WORKERS",
    "PROMPT_CACHE_SIZE",
    "FP8Linear",
    "LoraFusion",
    "PromptCache",
    "_available_attention_backends",
    "apply",
    "check_fp8_kernel",
    "compile_and_check",
    "compile_transformer",
    "configure_compile_cache",
    "default_compile_cache_dir",
    "enable_fp8",
    "encode_png",
    "fp8_eligible",
    "fp8_linear",
    "fp8_supported",
    "install_lora_fusion",
    "install_prompt_cache",
    "install_real_rotary",
    "install_vae_single_frame",
    "pick_attention_backend",
    "quantize_rows",
    "rotary_real",
    "smoke_forward",
    "time_attention",
    "uncompile_transformer",
]

logger = logging.getLogger(__name__)


def apply(generator: ImageGenerator) -> list[str]:
    """Apply every speed-up this machine supports to a freshly loaded ``ImageGenerator``."""
    applied: list[str] = []
    pipe = generator.pipe
    settings = generator.settings
    cuda = generator.device.type == "cuda"
    resident = generator.memory_mode == MemoryMode.RESIDENT

    _try(applied, "prompt-cache", lambda: install_prompt_cache(pipe))
    if generator.memory_mode != MemoryMode.SEQUENTIAL_OFFLOAD:  # its hooks wrap every layer
        _try(applied, "vae-2d", lambda: install_vae_single_frame(pipe.vae) > 0)
    plan = generator.memory_plan
    compact = plan is not None and plan.weights != WeightFormat.BF16
    if compact:
        applied.append(f"weights:{plan.weights}" if plan is not None else "weights")
    if generator.lora_switch is not None:
        applied.append("lora-adapter")  # the plan's compact weights carry it beside them
    elif generator.fast_available and resident:
        _try(applied, "lora-fused", lambda: install_lora_fusion(generator))
    # Blocks streamed by the memory plan (engine.streaming) compile like resident ones: the
    # copies happen in a wrapper outside the compiled block.
    planned_stream = generator.memory_mode == MemoryMode.STREAMED and plan is not None
    if not (cuda and (resident or planned_stream)):
        if settings.fp8 or settings.compile:
            logger.info("compile/FP8 skipped: they need the models resident on a CUDA GPU")
        return applied

    if settings.fp8 and (compact or not resident):
        logger.info("IMAGINE_FP8: the memory plan's compact weights already run as planned")
    elif settings.fp8:
        if fp8_supported(generator.device):
            _try(applied, "fp8-rowwise", lambda: enable_fp8(generator))
        else:
            logger.warning("IMAGINE_FP8 is set but this GPU has no FP8 matmuls; running bf16")
    backend = _try_value(lambda: pick_attention_backend(pipe.transformer, generator.device))
    if backend is not None:
        applied.append(f"attention:{backend}")
    if settings.compile:
        cache = configure_compile_cache(settings.compile_cache_dir)
        logger.info("compile cache: %s", cache)
        _try(applied, "rope-real", install_real_rotary)
        _try(applied, "compile", lambda: compile_and_check(pipe.transformer, generator.device))
    return applied


def _try(applied: list[str], name: str, step: Callable[[], object]) -> None:
    """Run one optional step; a failure leaves the stock path in place and is logged."""
    started = time.perf_counter()
    try:
        result = step()
    except Exception:
        logger.exception("speed-up %s failed; continuing without it", name)
        return
    if result is False:
        return
    applied.append(name)
    logger.info("speed-up %s applied in %.1fs", name, time.perf_counter() - started)


def _try_value(step: Callable[[], str | None]) -> str | None:
    try:
        return step()
    except Exception:
        logger.exception("attention backend selection failed; keeping the default")
        return None
