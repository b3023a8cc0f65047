"""Loading the text-to-image pipeline: from disk (or the Hub) onto the device, with its
Lightning LoRA, once at start.

Apart from ``engine.pipeline`` because it is a different question, asked once: what to load,
from where, and where it goes; ``ImageGenerator`` then owns the loaded pipeline and turns jobs
into images. The decisions themselves live in ``engine.devices`` (device, dtype, memory mode);
the weights are read ahead of the loader by ``engine.prefetch``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

from engine.devices import EngineUnavailable, choose_memory_mode, resolve_device, resolve_dtype
from engine.diffusers_types import Pipeline
from engine.generation import load_lightning_lora
from engine.placing import carry_out, measure_link, probe_card, probe_host
from engine.planning import (
    DEFAULT_LINK_GIB_S,
    QWEN_IMAGE,
    QWEN_IMAGE_WITH_EDIT,
    MemoryPlan,
    Placement,
    PlanError,
    plan_memory,
    streamed_plan,
)
from engine.prefetch import read_ahead
from engine.settings import EngineSettings, MemoryMode
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE, tiny_defaults

logger = logging.getLogger(__name__)

LORA_ADAPTER = "lightning"


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedPipeline:
    """A pipeline on its device, and what was decided while loading it."""

    pipe: Pipeline
    device: torch.device
    dtype: torch.dtype
    memory_mode: MemoryMode
    max_side: int | None
    fast_available: bool
    # None where IMAGINE_MEMORY_MODE forces offloading the old way (model or sequential).
    plan: MemoryPlan | None = None
    # Fast mode's switch when the plan turned the LoRA into an adapter of compact weights.
    lora_switch: Callable[[bool], None] | None = None


def load_pipeline(settings: EngineSettings) -> LoadedPipeline:
    """Load the pipeline once. Refuses the real model on a CPU before downloading anything."""
    # The defining module: to a type checker ``diffusers.QwenImagePipeline`` is diffusers'
    # untyped placeholder (engine.diffusers_types says why).
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    # transformers leaves it unannotated.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    check_model_source(settings.model, "IMAGINE_MODEL")
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

    plan = make_plan(settings, device)
    memory_mode = MemoryMode.RESIDENT
    if plan is None:
        free_gib = None
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            free_gib = free / 2**30
        memory_mode, why = choose_memory_mode(settings.memory_mode, device, free_gib)
        logger.info("memory mode %s (%s)", memory_mode, why)
    else:
        memory_mode = mode_of(plan)

    started = time.perf_counter()
    lora, lora_weight = lightning_source(settings, tiny is not None)
    with read_ahead(
        settings.model,
        lora,
        lora_weight,
        cache=settings.hf_cache_dir,
        enabled=settings.prefetch_weights,
    ):
        # Its modules are registered at run time, so diffusers' class declares none of what
        # the engine uses: here it becomes the engine's view of a pipeline.
        pipe = cast(
            Pipeline,
            QwenImagePipeline.from_pretrained(
                settings.model,
                dtype=dtype,
                cache_dir=str(settings.hf_cache_dir) if settings.hf_cache_dir else None,
            ),
        )
        pipe.set_progress_bar_config(disable=True)
        fast_available = load_lightning(pipe, lora, lora_weight)
        lora_switch = None
        if plan is None:
            place(pipe, memory_mode, device)
        else:
            lora_switch = carry_out(pipe, plan, device, adapter=LORA_ADAPTER).lora_switch
    logger.info(
        "loaded %s on %s (%s) in %.1fs", settings.model, device, dtype,
        time.perf_counter() - started,
    )  # fmt: skip
    return LoadedPipeline(
        pipe, device, dtype, memory_mode, max_side, fast_available, plan, lora_switch
    )


def make_plan(settings: EngineSettings, device: torch.device) -> MemoryPlan | None:
    """The memory plan for this card (``engine.planning``), logged with its reasons; None where
    ``IMAGINE_MEMORY_MODE`` forces model or sequential offload. A setting the card cannot
    honour (FP8 weights on an Ampere card) refuses at start with what to change."""
    forced = settings.memory_mode
    if forced in (MemoryMode.MODEL_OFFLOAD, MemoryMode.SEQUENTIAL_OFFLOAD):
        return None
    card = probe_card(device, settings.gpu_memory_gib)
    models = QWEN_IMAGE_WITH_EDIT if settings.edit_model.strip() else QWEN_IMAGE
    try:
        if forced == MemoryMode.STREAMED:
            plan = streamed_plan(card, models, settings.weights)
        elif forced == MemoryMode.RESIDENT:
            plan = plan_memory(
                dataclasses.replace(card, usable_gib=10_000.0), probe_host(), models,
                settings.weights,
            )  # fmt: skip
        else:
            link = measure_link(device) or DEFAULT_LINK_GIB_S
            plan = plan_memory(card, probe_host(), models, settings.weights, link_gib_s=link)
    except PlanError as exc:
        raise EngineUnavailable(str(exc)) from None
    logger.info("memory plan for %s (%.0f GiB usable, %s): %s", card.name, card.usable_gib,
                card.source, plan.summary())  # fmt: skip
    for reason in plan.reasons:
        logger.info("memory plan: %s", reason)
    return plan


def mode_of(plan: MemoryPlan) -> MemoryMode:
    """The generators' coarse view of a plan: whether the transformer stays on the device."""
    placement = plan.transformer.placement
    if placement == Placement.SEQUENTIAL:
        return MemoryMode.SEQUENTIAL_OFFLOAD
    if placement == Placement.STREAMED:
        return MemoryMode.STREAMED
    return MemoryMode.RESIDENT


# A Hugging Face id: owner/name, nothing more (a path has ./, ../, / or ~, or more parts).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def check_model_source(value: str, variable: str) -> None:
    """Refuse a model setting that is neither a folder here nor a Hugging Face id, naming it:
    a mistyped path otherwise surfaced as "no usable CUDA GPU" (on a CPU) or as a Hub error."""
    path = Path(value)
    if path.is_dir():
        return
    if path.exists():
        raise EngineUnavailable(
            f"{variable}={value!r} is a file; give the folder of a diffusers pipeline or a "
            "Hugging Face id such as Qwen/Qwen-Image."
        )
    if _HUB_ID.fullmatch(value) and not value.startswith((".", "~")):
        return
    raise EngineUnavailable(
        f"{variable}={value!r}: there is no folder {path.absolute()} here, and it is not a "
        "Hugging Face id (owner/name, such as Qwen/Qwen-Image). Check the path; a tiny model "
        "for dry runs is made with `python -m engine tiny ./tiny-model`."
    )


def lightning_source(settings: EngineSettings, tiny: bool) -> tuple[str, str]:
    """The Lightning LoRA's repository or folder and file: the tiny model carries its own."""
    if tiny:
        local = Path(settings.model) / TINY_LORA_DIR
        if local.is_dir():
            return str(local), TINY_LORA_FILE
    return settings.lightning_lora, settings.lightning_weight_name


def load_lightning(pipe: Pipeline, source: str, weight_name: str) -> bool:
    """Load the Lightning LoRA for fast mode; on failure fast mode falls back to standard."""
    return load_lightning_lora(
        pipe,
        source,
        weight_name,
        LORA_ADAPTER,
        log=logger,
        name="Lightning LoRA",
        unavailable="fast mode unavailable",
        fallback="fast requests will run in standard mode",
    )


def place(pipe: Pipeline, memory_mode: MemoryMode, device: torch.device) -> None:
    """Put the pipeline where a forced memory mode says: model or sequential offload."""
    if memory_mode == MemoryMode.RESIDENT:
        pipe.to(device)
    elif memory_mode == MemoryMode.MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
