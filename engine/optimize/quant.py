"""Compact weights for cards that cannot hold the bf16 models (the memory plan,
``engine.planning``): FP8, int8 or 4-bit linears, with fast mode's LoRA beside them as an adapter.

Weight-only: the stored weight is expanded to the activations' dtype inside the forward and the
matmul runs in bf16. For the image stream's big matmuls (thousands of rows) that expansion is a
few percent of the matmul, and it halves (8-bit) or quarters (4-bit) the weights' memory. FP8
linears of the image stream go further where the card has FP8 matmuls: they run as rowwise-scaled
FP8 matmuls (``engine.optimize.fp8.fp8_linear``), faster than bf16.

The engine's own module rather than a quantization library's tensor subclass: one small class
that runs on a CPU (the tests), composes with regional compilation and with diffusers' group
offloading (plain buffers move like parameters), and carries the LoRA adapter; docs/PERFORMANCE.md
has its speed and its error against bf16.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional

from engine.optimize.fp8 import FP8_DTYPE, FP8_MAX, FP8_TARGETS, fp8_linear
from engine.planning import WeightFormat

logger = logging.getLogger(__name__)

Adapter = tuple[torch.Tensor, torch.Tensor, float]  # down (rank, in), up (out, rank), scale

INT4_GROUP = 64  # one scale per 64 inputs: the usual 4-bit group, ~1.6 % over the packed bytes


class QuantLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored compact, and an optional LoRA adapter
    (``y += s * (x A^T) B^T`` while ``lora_on``)."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    lora_down: torch.Tensor | None
    lora_up: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        fmt: WeightFormat,
        *,
        fp8_matmul: bool = False,
        adapter: Adapter | None = None,
    ) -> None:
        super().__init__()
        if fmt == WeightFormat.BF16:
            raise ValueError("QuantLinear holds compact formats only")
        self.out_features, self.in_features = weight.shape
        self.fmt = fmt
        self.compute_dtype = weight.dtype
        q, scale = quantize_weight(weight.detach(), fmt)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.fp8_matmul = fp8_matmul and fmt == WeightFormat.FP8
        self.register_buffer("lora_down", None)
        self.register_buffer("lora_up", None)
        self.lora_scale = 0.0
        self.lora_on = False
        if adapter is not None:
            down, up, scale_value = adapter
            self.lora_down = down.detach().to(weight.device, weight.dtype).contiguous()
            self.lora_up = up.detach().to(weight.device, weight.dtype).contiguous()
            self.lora_scale = float(scale_value)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight in ``dtype`` (the compute dtype by default)."""
        dtype = dtype or self.compute_dtype
        if self.fmt == WeightFormat.INT4:
            return unpack_int4(self.weight, self.scale, self.in_features).to(dtype)
        return (self.weight.to(torch.float32) * self.scale.t()).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_matmul and x.is_cuda:
            y = fp8_linear(x, self.weight, self.scale, self.bias)
        else:
            y = functional.linear(x, self.dequantize(x.dtype), self.bias)
        if self.lora_on and self.lora_down is not None and self.lora_up is not None:
            y = y + functional.linear(functional.linear(x, self.lora_down), self.lora_up) * (
                self.lora_scale
            )
        return y

    def extra_repr(self) -> str:
        adapter = self.lora_down is not None
        return (
            f"in={self.in_features}, out={self.out_features}, {self.fmt}, "
            f"fp8_matmul={self.fp8_matmul}, adapter={adapter}"
        )


def quantize_weight(weight: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization: FP8/int8 with one fp32 scale per output channel, shaped (1, out)
    as the FP8 matmul wants it; 4-bit with one scale per group of ``INT4_GROUP`` inputs."""
    w = weight.float()
    if fmt == WeightFormat.INT4:
        return pack_int4(w)
    top = FP8_MAX if fmt == WeightFormat.FP8 else 127.0
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / top  # (out, 1)
    scaled = w / scale
    if fmt == WeightFormat.FP8:
        q = scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    else:
        q = scaled.round().clamp(-127, 127).to(torch.int8)
    return q, scale.reshape(1, -1).contiguous()


def pack_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values in [-7, 7] per group, two to a byte (low nibble first), scales (out, groups)."""
    out_features, in_features = w.shape
    pad = (-in_features) % INT4_GROUP
    if pad:
        w = functional.pad(w, (0, pad))
    groups = w.reshape(out_features, -1, INT4_GROUP)
    scale = groups.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 7.0
    q = (groups / scale).round().clamp(-7, 7).to(torch.int16) + 8  # 1..15
    q = q.reshape(out_features, -1)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return packed.contiguous(), scale.squeeze(2).to(torch.bfloat16).contiguous()


def unpack_int4(packed: torch.Tensor, scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """The fp32 weight back from ``pack_int4``'s bytes and scales."""
    low = (packed & 0x0F).to(torch.int16) - 8
    high = (packed >> 4).to(torch.int16) - 8
    q = torch.stack((low, high), dim=2).reshape(packed.shape[0], -1)
    groups = q.reshape(packed.shape[0], -1, INT4_GROUP).float() * scale.float().unsqueeze(2)
    return groups.reshape(packed.shape[0], -1)[:, :in_features]


def _adapter_of(module: nn.Module, adapter: str) -> tuple[nn.Linear, Adapter | None] | None:
    """(base linear, (down, up, scale) or None) for a PEFT LoRA layer or a plain linear."""
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        base = module.get_base_layer()
        if not isinstance(base, nn.Linear) or adapter not in module.lora_A:
            return None
        down, up = module.lora_A[adapter], module.lora_B[adapter]
        if not (isinstance(down, nn.Linear) and isinstance(up, nn.Linear)):
            return None
        return base, (down.weight, up.weight, float(module.scaling[adapter]))
    if isinstance(module, nn.Linear):
        return module, None
    return None


@torch.no_grad()
def quantize_linears(
    root: nn.Module,
    fmt: WeightFormat,
    *,
    device: torch.device | None = None,
    blocks: Iterable[nn.Module] | None = None,
    fp8_names: tuple[str, ...] = FP8_TARGETS,
    adapter: str = "lightning",
) -> list[QuantLinear]:
    """Replace every linear (and PEFT LoRA linear) under ``blocks`` (default: ``root`` itself)
    by a ``QuantLinear``; returns them. With ``device``, each block is moved there first and
    quantized there, so the bf16 model never has to fit on the device whole."""
    converted: list[QuantLinear] = []
    for block in blocks if blocks is not None else [root]:
        if device is not None:
            block.to(device)
        targets: list[tuple[str, tuple[nn.Linear, Adapter | None]]] = []
        for name, module in block.named_modules():
            if not name or ".lora_" in f".{name}" or name.endswith("base_layer"):
                continue
            found = _adapter_of(module, adapter)
            if found is None or any(name.startswith(f"{t}.") for t, _ in targets):
                continue
            targets.append((name, found))
        for name, (base, lora) in targets:
            replacement = QuantLinear(
                base.weight,
                base.bias,
                fmt,
                # FP8 matmuls need both dimensions to be multiples of 16.
                fp8_matmul=fmt == WeightFormat.FP8
                and name in fp8_names
                and base.in_features % 16 == 0
                and base.out_features % 16 == 0,
                adapter=lora,
            )
            block.set_submodule(name, replacement)
            converted.append(replacement)
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()
    return converted


class AdapterSwitch:
    """Fast mode's switch over adapter-carrying ``QuantLinear``s (``LightningModes.lora_switch``):
    the LoRA runs beside the compact weights instead of being merged into them."""

    def __init__(self, modules: list[QuantLinear]) -> None:
        self.modules = [m for m in modules if m.lora_down is not None]
        self.fused = False

    def __call__(self, fast: bool) -> None:
        for module in self.modules:
            module.lora_on = fast
        self.fused = fast
