"""``lora-fused``: fast mode's Lightning LoRA merged into the base weights on demand.

Merged when fast mode starts and taken out again when a CFG mode starts (one GEMM per linear,
~45 ms for all 840 on an H100). Unmerged, every adapted linear runs two extra skinny matmuls
per forward. FP8 linears (``engine.optimize.fp8``) keep both weight sets and swap them instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from engine.diffusers_types import Pipeline

if TYPE_CHECKING:
    from engine.optimize.fp8 import FP8Linear

logger = logging.getLogger(__name__)

LORA_ADAPTER = "lightning"


class Switchable(Protocol):
    """A generator whose fast mode these steps take over (``ImageGenerator``,
    ``EditGenerator``): its pipeline, where it runs, and fast mode's switch
    (``engine.generation.LightningModes``)."""

    lora_switch: Callable[[bool], None] | None
    _lora_active: bool | None

    @property
    def pipe(self) -> Pipeline: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...


# Exact-restore corrections are kept while they cost at most this many bytes on the device.
LORA_CORRECTION_BUDGET_BYTES = 256 * 2**20
_CORRECTION_BYTES = 6  # int32 position + bf16 value


@dataclasses.dataclass
class _Delta:
    """One adapted linear: W_fast = W + scale * up @ down, merged and unmerged in place."""

    name: str
    weight: torch.Tensor
    up: torch.Tensor  # (out, rank)
    down: torch.Tensor  # (rank, in)
    scale: float
    fix_index: torch.Tensor | None = None  # flat positions where W + d - d != W
    fix_value: torch.Tensor | None = None

    def add(self, sign: float) -> None:
        # One GEMM with beta=1: the product is accumulated in fp32 and rounded once.
        self.weight.addmm_(self.up, self.down, alpha=sign * self.scale)

    def cycle(self, keep_corrections: bool) -> tuple[int, float]:
        """Merge and unmerge once; return (elements changed, squared norm of the change).

        The rounded merge/unmerge is idempotent after one application (measured: a second
        cycle changes no element), so after this the weights are a fixed point and every
        later switch restores them bit for bit. The change itself is below one bf16 rounding
        of the merged weight; with ``keep_corrections`` it is undone as well.
        """
        self.drop_corrections()  # any earlier ones describe other weights
        original = self.weight.detach().clone()
        self.add(+1.0)
        self.add(-1.0)
        flat, before = self.weight.view(-1), original.view(-1)
        index = torch.nonzero(flat != before).squeeze(1)
        change = float((flat.float() - before.float()).square().sum()) if index.numel() else 0.0
        if keep_corrections and index.numel():
            self.fix_index = index.to(torch.int32 if flat.numel() < 2**31 else torch.int64)
            self.fix_value = before[index].clone()
            flat.index_copy_(0, index, before[index])
        return int(index.numel()), change

    def drop_corrections(self) -> None:
        self.fix_index = None
        self.fix_value = None

    def fuse(self) -> None:
        self.add(+1.0)

    def unfuse(self) -> None:
        self.add(-1.0)
        if self.fix_index is not None and self.fix_value is not None:  # set together
            self.weight.view(-1).index_copy_(0, self.fix_index.long(), self.fix_value)


class LoraFusion:
    """Moves the transformer between its base weights and base + Lightning LoRA.

    bf16 linears are merged in place (one GEMM per linear, each weight read and written once)
    and unmerged the same way; FP8 linears keep both weight sets and swap them.
    """

    def __init__(self, deltas: list[_Delta]) -> None:
        self.deltas = deltas
        self.swaps: list[FP8Linear] = []
        self.fused = False
        self.exact = True
        self.changed = 0
        self.relative_change = 0.0
        self.switches = 0
        self.last_switch_s = 0.0

    @torch.no_grad()
    def prepare(self, budget_bytes: int = LORA_CORRECTION_BUDGET_BYTES) -> None:
        """Bring every weight to the merge/unmerge fixed point, keeping exact-restore
        corrections while they fit ``budget_bytes``."""
        used = 0
        change = norm = 0.0
        for position, delta in enumerate(self.deltas):
            count, sq = delta.cycle(keep_corrections=self.exact)
            self.changed += count
            change += sq
            norm += float(delta.weight.float().square().sum())
            used += count * _CORRECTION_BYTES
            if self.exact and used > budget_bytes:
                # Over budget: no corrections at all; move the linears restored so far to
                # the fixed point too, so that no later switch changes a single bit.
                self.exact = False
                for done in self.deltas[: position + 1]:
                    done.drop_corrections()
                    done.cycle(keep_corrections=False)
        self.relative_change = (change / norm) ** 0.5 if norm and not self.exact else 0.0

    @torch.no_grad()
    def __call__(self, fast: bool) -> None:
        if fast == self.fused:
            return
        started = time.perf_counter()
        for delta in self.deltas:
            delta.fuse() if fast else delta.unfuse()
        for module in self.swaps:
            module.swap()
        self.fused = fast
        self.switches += 1
        self.last_switch_s = time.perf_counter() - started

    def take(self, weight: torch.Tensor) -> _Delta | None:
        """Hand over the delta of one linear (FP8 conversion keeps it in its own form)."""
        for index, delta in enumerate(self.deltas):
            if delta.weight is weight:
                return self.deltas.pop(index)
        return None


@torch.no_grad()
def install_lora_fusion(generator: Switchable, adapter: str = LORA_ADAPTER) -> LoraFusion | bool:
    """Take the loaded LoRA out of PEFT's wrappers and let the generator merge it on demand."""
    from peft.tuners.lora import LoraLayer

    transformer = generator.pipe.transformer
    layers = [(n, m) for n, m in transformer.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        logger.info("no LoRA layers to fuse")
        return False
    linears: list[tuple[str, nn.Linear, nn.Linear, nn.Linear, float]] = []  # base, down, up
    for name, layer in layers:
        if adapter not in layer.lora_A:
            logger.info("LoRA fusion skipped: %s has no %r adapter", name, adapter)
            return False
        if layer.use_dora.get(adapter) or layer.lora_bias.get(adapter):
            logger.info("LoRA fusion skipped: %s uses DoRA or a LoRA bias", name)
            return False
        base, down, up = layer.get_base_layer(), layer.lora_A[adapter], layer.lora_B[adapter]
        if not (
            isinstance(base, nn.Linear)
            and isinstance(down, nn.Linear)
            and isinstance(up, nn.Linear)
        ):
            logger.info("LoRA fusion skipped: %s is not a linear layer", name)
            return False
        linears.append((name, base, down, up, layer.scaling[adapter]))
    deltas = []
    for name, base, down, up, scale in linears:
        weight = base.weight
        up_weight = up.weight.detach().to(weight.device, weight.dtype)
        down_weight = down.weight.detach().to(weight.device, weight.dtype)
        deltas.append(_Delta(name, weight, up_weight.contiguous(), down_weight.contiguous(), scale))
    transformer.unload_lora()  # plain nn.Linear again; the LoRA now lives in ``deltas`` only
    fusion = LoraFusion(deltas)
    fusion.prepare()
    total = sum(d.weight.numel() for d in deltas)
    if fusion.exact:
        logger.info(
            "LoRA fusion: %d linears; %d of %d weights restored from corrections (exact)",
            len(deltas),
            fusion.changed,
            total,
        )
    else:
        logger.info(
            "LoRA fusion: %d linears; merge/unmerge rounding moved %d of %d weights by less "
            "than one bf16 step (relative change %.1e) once at start-up; every later switch "
            "restores them bit for bit",
            len(deltas),
            fusion.changed,
            total,
            fusion.relative_change,
        )
    generator.lora_switch = fusion
    return fusion
