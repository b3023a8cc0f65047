"""The engine's speed-ups (``engine.optimize``) for the edit transformer.

The edit transformer is the same class as text-to-image's (``QwenImageTransformer2DModel``), so
the steps that work on a transformer apply unchanged; this module only decides which ones are
valid for the edit pipeline and runs them through ``engine.optimize``'s own functions:

- ``lora-fused``: the edit Lightning LoRA merged on demand, as for text-to-image (and FP8 then
  sees plain linears instead of PEFT wrappers).
- ``fp8-rowwise`` (``IMAGINE_FP8``, Hopper/Ada only), ``attention:<backend>`` (text-to-image's
  timed choice is reused: same head shape, so timing again would only risk a different pick),
  ``rope-real`` (process-wide) and ``compile`` (regional, with the persistent cache).
- ``vae-2d``: only for a VAE of its own; a shared VAE already has it. The PNG encoder is shared.

Not applied: ``prompt-cache``. An edit's prompt encoding runs the vision tower over the input
images, so the same text gives different embeddings for different images.

Swaps (``engine.edit.swap``): compiled code guards on the weights' device, shape and dtype, which
a move to host and back restores, so it survives; CUDA graphs hold addresses and are dropped
after every swap by ``engine.edit.combined``. The edit transformer is brought onto the device
for compile/FP8 (they run a forward), then the text-to-image one is made resident again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from engine import optimize
from engine.diffusers_types import Transformer
from engine.optimize import _try
from engine.settings import MemoryMode

if TYPE_CHECKING:
    from engine.edit.generator import EditGenerator

logger = logging.getLogger(__name__)


def apply_edit_speedups(
    editor: EditGenerator, *, cpu_compile_backend: str | None = None
) -> list[str]:
    """Apply what is valid for the edit pipeline of ``editor`` (an ``EditGenerator``); returns
    the names applied, for ``info()``.

    ``cpu_compile_backend`` lets compile run on a CPU (tests pass ``"eager"``); without it,
    compile and FP8 need the models resident on a CUDA GPU, as for text-to-image.
    """
    applied: list[str] = []
    pipe, base, settings = editor.pipe, editor.base, editor.settings
    device = base.device
    resident = base.memory_mode == MemoryMode.RESIDENT
    cuda = device.type == "cuda"
    base_done = list(getattr(base, "optimizations", []))

    if not editor.shared.get("vae", "").startswith("shared"):
        if base.memory_mode != MemoryMode.SEQUENTIAL_OFFLOAD:
            _try(applied, "vae-2d", lambda: optimize.install_vae_single_frame(pipe.vae) > 0)
    elif "vae-2d" in base_done:
        applied.append("vae-2d(shared)")
    if editor.lora_switch is not None:
        applied.append("lora-adapter")  # the memory plan's compact weights carry it
    elif editor.fast_available and resident:
        _try(
            applied,
            "lora-fused",
            lambda: optimize.install_lora_fusion(editor, editor.lora_adapter),
        )
    compile_here = settings.compile and resident and (cuda or cpu_compile_backend is not None)
    compact = base.memory_plan is not None and base.memory_plan.weights != "bf16"
    fp8_here = settings.fp8 and resident and cuda and not compact
    if not (compile_here or fp8_here):
        if settings.fp8 or settings.compile:
            logger.info("edit compile/FP8 skipped: they need the models resident on a CUDA GPU")
        return applied

    with _edit_transformer_resident(editor):
        if fp8_here:
            if optimize.fp8_supported(device):
                _try(applied, "fp8-rowwise", lambda: optimize.enable_fp8(editor))
            else:
                logger.warning("IMAGINE_FP8 is set but this GPU has no FP8 matmuls; edit in bf16")
        backend = next((n.split(":", 1)[1] for n in base_done if n.startswith("attention:")), None)
        if backend is not None and backend != "native":
            _try(applied, f"attention:{backend}", lambda: _set_backend(pipe.transformer, backend))
        elif backend is not None:
            applied.append("attention:native")
        if compile_here:
            optimize.configure_compile_cache(settings.compile_cache_dir)
            _try(applied, "rope-real", optimize.install_real_rotary)
            compile_backend = "inductor" if cuda else str(cpu_compile_backend)
            _try(
                applied,
                "compile",
                lambda: optimize.compile_and_check(pipe.transformer, device, compile_backend),
            )
    return applied


def _set_backend(transformer: Transformer, backend: str) -> None:
    transformer.set_attention_backend(backend)


@contextmanager
def _edit_transformer_resident(editor: EditGenerator) -> Iterator[None]:
    """Swap the edit transformer in for the steps that run it, and text-to-image back after
    (a swap drops the CUDA graphs it made stale itself)."""
    swap = editor.swap
    if swap is not None:
        swap.activate(editor.model_name)
    try:
        yield
    finally:
        if swap is not None:
            swap.activate(editor.base.model_name)
