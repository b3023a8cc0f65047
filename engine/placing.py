"""Carrying out the memory plan (``engine.planning``) on a loaded pipeline: compact weights
first, then each component where the plan puts it.

Order matters on a small card: the transformer is converted block by block on the GPU (the
bf16 model never has to fit there whole), then the text encoder, then the VAE. What the plan
streams is streamed by ``engine.streaming`` (pinned host copies, one block ahead on a side CUDA
stream), chosen spread through the model so that copies overlap compute.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from engine.diffusers_types import Pipeline
from engine.optimize.fp8 import FP8_CHECK_ROWS, FP8_TARGETS, check_fp8_kernel
from engine.optimize.quant import AdapterSwitch, QuantLinear, quantize_linears
from engine.planning import (
    GIB,
    Card,
    Component,
    ComponentPlan,
    Host,
    LoraForm,
    MemoryPlan,
    Placement,
    WeightFormat,
)
from engine.streaming import BlockStreamer, hook_layers, module_bytes, stream_blocks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """What carrying out the plan left for the generator: fast mode's switch when the LoRA
    became an adapter, and the streamers (their bytes moved, for the benchmark)."""

    lora_switch: Callable[[bool], None] | None
    streamers: tuple[BlockStreamer, ...] = ()

    @property
    def moved_bytes(self) -> int:
        """Bytes copied from host to GPU by streaming so far (the benchmark reads it)."""
        return sum(s.moved_bytes for s in self.streamers)


def probe_card(device: torch.device, gpu_memory_gib: float | None) -> Card:
    """The card as the planner sees it: its free memory now (``usable_card`` applies
    ``IMAGINE_GPU_MEMORY_GIB``)."""
    if device.type != "cuda":
        return Card(name=device.type, usable_gib=0.0, capability=None)
    free, _total = torch.cuda.mem_get_info(device)
    return usable_card(
        torch.cuda.get_device_name(device),
        free / GIB,
        torch.cuda.get_device_capability(device),
        gpu_memory_gib,
    )


def usable_card(
    name: str, free_gib: float, capability: tuple[int, int], gpu_memory_gib: float | None
) -> Card:
    """The free memory, or ``IMAGINE_GPU_MEMORY_GIB`` where that is smaller (a card shared
    with other programs, or a benchmark's cap)."""
    if gpu_memory_gib is not None and gpu_memory_gib < free_gib:
        return Card(name, gpu_memory_gib, capability, source="IMAGINE_GPU_MEMORY_GIB")
    return Card(name, round(free_gib, 1), capability)


def measure_link(device: torch.device, mib: int = 256) -> float | None:
    """Host-to-GPU GiB/s from pinned memory, what streaming copies at (a desktop's PCIe 4.0
    link moves about half what a server's PCIe 5.0 does); None on a CPU. About 0.1 s."""
    if device.type != "cuda":
        return None
    host = torch.empty(mib * 2**20, dtype=torch.uint8).pin_memory()
    target = torch.empty_like(host, device=device)
    target.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(3):
        target.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    return 3 * mib / 1024 / (time.perf_counter() - started)


def probe_host() -> Host:
    from engine.prefetch import available_memory

    available = available_memory()
    return Host(None if available is None else round(available / GIB, 1))


def layer_lists(module: nn.Module) -> list[nn.Module]:
    """The repeated layers of a model (every ``ModuleList`` member), for block-wise work."""
    layers: list[nn.Module] = []
    for child in module.modules():
        if isinstance(child, nn.ModuleList):
            layers.extend(m for m in child if not isinstance(m, nn.ModuleList))
    # A ModuleList nested in a layer would be listed twice: keep the outermost.
    seen: set[int] = set()
    outer = []
    for layer in layers:
        if id(layer) in seen:
            continue
        outer.append(layer)
        seen.update(id(m) for m in layer.modules())
    return outer


def fp8_matmuls_work(block: nn.Module, device: torch.device) -> bool:
    """Run the FP8 matmul on every shape that would use it, at odd row counts, before any
    weight changes (``engine.optimize.fp8.check_fp8_kernel``): a card or build whose cuBLAS
    lacks rowwise-scaled FP8 keeps the FP8 weights but expands them to bf16 instead of failing
    on the first image."""
    shapes = {
        (m.in_features, m.out_features)
        for name, m in block.named_modules()
        if isinstance(m, nn.Linear) and name.removesuffix(".base_layer") in FP8_TARGETS
    }
    try:
        check_fp8_kernel(device, torch.bfloat16, shapes, FP8_CHECK_ROWS)
    except Exception as exc:  # any failure of the kernel means: do not use it
        logger.warning("FP8 matmuls unavailable here (%s); FP8 weights run expanded to bf16",
                       str(exc).splitlines()[0][:160])  # fmt: skip
        return False
    return True


def spread(count: int) -> list[int]:
    """Indices 0..count-1 in an order whose every prefix is spread evenly through the range
    (0, 32, 16, 48, 8, ... for 64): streamed blocks picked from its front sit between resident
    ones, so each copy overlaps the compute of the blocks before it."""
    order: list[int] = []
    step = 1
    while step < count:
        step *= 2
    seen: set[int] = set()
    while step >= 1:
        for index in range(0, count, step):
            if index not in seen:
                seen.add(index)
                order.append(index)
        step //= 2
    return order


def pick_streamed(layers: list[nn.Module], share: float, order: list[int]) -> set[int]:
    """The layers (by index) that stream: taken in ``order`` until they hold ``share`` of the
    layers' bytes."""
    if share <= 0 or not layers:
        return set()
    sizes = [module_bytes(layer) for layer in layers]
    target = share * sum(sizes)
    chosen: set[int] = set()
    held = 0
    for index in order:
        if held >= target - 1:
            break
        chosen.add(index)
        held += sizes[index]
    return chosen


@torch.no_grad()
def compact(
    module: nn.Module,
    fmt: WeightFormat,
    device: torch.device,
    *,
    blocks: Sequence[nn.Module],
    on_device: Callable[[int], bool],
    adapter: str = "lightning",
    fp8_names: tuple[str, ...] = FP8_TARGETS,
) -> list[QuantLinear]:
    """Quantize ``module``'s linears block by block on ``device`` (the bf16 model never has to
    fit there whole); block ``i`` stays there if ``on_device(i)``, else goes back to the host
    (to stream or to wait for a swap). Linears outside the blocks (a text encoder's output
    head) are quantized where they are."""
    converted: list[QuantLinear] = []
    for index, block in enumerate(blocks):
        converted += quantize_linears(block, fmt, device=device, adapter=adapter,
                                      fp8_names=fp8_names)  # fmt: skip
        if not on_device(index):
            block.to("cpu")
    converted += quantize_linears(module, fmt, adapter=adapter)
    return converted


def component(pipe: Pipeline, name: str) -> nn.Module:
    """A pipeline's component as the module it is (the pipeline protocols type only what the
    generators call)."""
    module = getattr(pipe, name)
    if not isinstance(module, nn.Module):
        raise TypeError(f"the pipeline's {name} is not a module")
    return module


def carry_out(
    pipe: Pipeline, plan: MemoryPlan, device: torch.device, *, adapter: str = "lightning"
) -> Placed:
    """Convert and place the text-to-image pipeline's components as ``plan`` says."""
    started = time.perf_counter()
    transformer = plan.of(Component.TRANSFORMER)
    model = component(pipe, "transformer")
    if transformer.placement == Placement.SEQUENTIAL:
        converted: list[QuantLinear] = []
        if transformer.weights != WeightFormat.BF16:
            converted = quantize_linears(model, transformer.weights, adapter=adapter)
        pipe.enable_sequential_cpu_offload(device=device)
        if converted:
            # diffusers offloads buffers only for modules with parameters of their own, and a
            # compact transformer's weights are buffers: without this they would all stay on
            # the GPU, on exactly the cards too small for them.
            from accelerate import cpu_offload
            from accelerate.hooks import remove_hook_from_module

            remove_hook_from_module(model, recurse=True)
            cpu_offload(model, execution_device=device, offload_buffers=True)
        return _placed(plan, converted, [], started)
    converted, streamer = place_transformer(model, transformer, device, adapter=adapter)
    streamers = [streamer] if streamer is not None else []
    encoder = place_text_encoder(component(pipe, "text_encoder"),
                                 plan.of(Component.TEXT_ENCODER), device)  # fmt: skip
    if encoder is not None:
        streamers.append(encoder)
    vae = component(pipe, "vae")
    vae.to(device)
    if plan.vae_tiling:
        tiling = getattr(vae, "enable_tiling", None)
        if callable(tiling):
            tiling()
    return _placed(plan, converted, streamers, started)


def place_transformer(
    transformer: nn.Module,
    part: ComponentPlan,
    device: torch.device,
    *,
    adapter: str = "lightning",
) -> tuple[list[QuantLinear], BlockStreamer | None]:
    """One transformer (the text-to-image or the edit model's) in its format and place. Its
    streamed share of blocks (spread through the model) stream from pinned host memory; the
    rest is resident, or, for ``SWAPPED``, waits on the host for ``engine.edit.swap``."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError("a transformer without transformer_blocks cannot be placed")
    streamed = pick_streamed(list(blocks), part.streamed_share, spread(len(blocks)))
    resident = part.placement in (Placement.RESIDENT, Placement.STREAMED)
    converted: list[QuantLinear] = []
    if part.weights == WeightFormat.FP8 and device.type == "cuda":
        fp8_names = FP8_TARGETS if fp8_matmuls_work(blocks[0], device) else ()
    else:
        fp8_names = FP8_TARGETS
    if part.weights != WeightFormat.BF16:
        converted = compact(transformer, part.weights, device, blocks=list(blocks),
                            fp8_names=fp8_names,
                            on_device=lambda i: resident and i not in streamed,
                            adapter=adapter)  # fmt: skip
    streamer = None
    if streamed:
        for index in streamed:
            blocks[index].to("cpu")
        streamer = stream_blocks(blocks, sorted(streamed), device)
    for child in transformer.children():
        if child is not blocks:
            child.to(device if resident else "cpu")
    if resident:
        for index, block in enumerate(blocks):
            if index not in streamed:
                block.to(device)
    return converted, streamer


def place_text_encoder(
    encoder: nn.Module, part: ComponentPlan, device: torch.device
) -> BlockStreamer | None:
    """The text encoder in its format, its streamed share of layers streaming: the vision
    tower's first (text-to-image never runs it), then language layers spread evenly."""
    layers = layer_lists(encoder)
    # The vision tower's blocks come first in module order; the language layers after them.
    order = list(range(len(layers)))
    language = [i for i in order if "vision" not in type(layers[i]).__name__.lower()]
    vision = sorted(set(order) - set(language))
    preference = vision + [language[i] for i in spread(len(language))]
    streamed = pick_streamed(layers, part.streamed_share, preference)
    if part.weights != WeightFormat.BF16:
        compact(encoder, part.weights, device, blocks=layers,
                on_device=lambda i: i not in streamed)  # fmt: skip
    for index in streamed:
        layers[index].to("cpu")
    streamer = hook_layers([layers[i] for i in sorted(streamed)], device) if streamed else None
    streamed_ids = {id(m) for i in streamed for m in layers[i].modules()}
    for module in encoder.modules():
        if id(module) in streamed_ids:
            continue
        for param in module._parameters.values():
            if param is not None and param.device != device:
                param.data = param.data.to(device)
        for key, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[key] = buffer.to(device)
    return streamer


def _placed(
    plan: MemoryPlan,
    converted: list[QuantLinear],
    streamers: list[BlockStreamer],
    started: float,
) -> Placed:
    switch = None
    if plan.lora == LoraForm.ADAPTER and any(m.lora_down is not None for m in converted):
        switch = AdapterSwitch(converted)
    logger.info(
        "memory plan carried out in %.1fs: %d linears compact (%s), %.1f GiB streamed",
        time.perf_counter() - started,
        len(converted),
        plan.weights,
        sum(s.host_bytes for s in streamers) / GIB,
    )
    return Placed(switch, tuple(streamers))
