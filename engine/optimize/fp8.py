"""``fp8-rowwise`` (``IMAGINE_FP8``, Hopper/Ada only): the image stream's attention and MLP
linears as FP8 matmuls with one scale per activation row and per weight channel.

This changes the output slightly (measured error in docs/PERFORMANCE.md), so it is opt-in.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.optimize.lora import LoraFusion, Switchable

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Fast accumulation keeps the FP8 matmul on the tensor cores' fast path; its extra error is
# measured by the benchmark next to the quantisation error itself.
FP8_FAST_ACCUM = True
# The block linears that run in FP8: the image stream's, whose thousands of rows make the
# matmuls compute-bound. The text stream (tens of rows) and the modulation linears (one row)
# are bound by reading their weights, so FP8 would buy little there, and the FP8 matmul
# kernels are the least robust on few rows (seen on an H100: cuBLASLt refused one such shape).
FP8_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
)


def fp8_supported(device: torch.device) -> bool:
    """Rowwise-scaled FP8 matmuls exist on compute capability 8.9 (Ada) and 9.0+ (Hopper)."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 values and one fp32 scale per row (scale = row amax / 448)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """y = x @ W.T + b with x quantised per row here (compiled, this fuses into the producer)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    q, scale = quantize_rows(rows)
    out = torch._scaled_mm(
        q,
        weight.t(),
        scale_a=scale,
        scale_b=weight_scale,
        out_dtype=x.dtype,
        use_fast_accum=FP8_FAST_ACCUM,
    )
    # The bias is added outside the matmul: compiled, it fuses into the next elementwise op,
    # and not every FP8 kernel takes a bias with row-wise scales.
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], weight.shape[0])


class FP8Linear(nn.Module):
    """A linear layer whose weight is stored as FP8 with one scale per output channel.

    An optional second weight set (the same layer with fast mode's LoRA merged) is swapped in
    by ``swap()``: both sets are buffers of identical shape, so a compiled graph serves both.
    """

    # The buffers registered below (nn.Module's own attribute lookup knows no types).
    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None
    alt_weight: torch.Tensor | None
    alt_weight_scale: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        alt_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w, s = quantize_rows(weight)
        self.register_buffer("weight", w)
        self.register_buffer("weight_scale", s.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("alt_weight", None)
        self.register_buffer("alt_weight_scale", None)
        if alt_weight is not None:
            aw, asc = quantize_rows(alt_weight)
            self.alt_weight = aw
            self.alt_weight_scale = asc.reshape(1, -1).contiguous()

    @classmethod
    def from_linear(cls, linear: nn.Linear, alt_weight: torch.Tensor | None = None) -> FP8Linear:
        return cls(linear.weight.detach(), linear.bias, alt_weight)

    def swap(self) -> None:
        if self.alt_weight is None or self.alt_weight_scale is None:  # no second set (both or none)
            return
        self.weight, self.alt_weight = self.alt_weight, self.weight
        self.weight_scale, self.alt_weight_scale = self.alt_weight_scale, self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        fast = self.alt_weight is not None
        return f"in={self.in_features}, out={self.out_features}, fast_set={fast}"


def fp8_eligible(name: str, module: nn.Module) -> bool:
    if not isinstance(module, nn.Linear) or name not in FP8_TARGETS:
        return False
    # FP8 matmuls need both dimensions to be multiples of 16.
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def _fp8_targets(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears of one block that become FP8, listed before any is replaced."""
    return [
        (name, module)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and fp8_eligible(name, module)
    ]


def check_fp8_kernel(
    device: torch.device, dtype: torch.dtype, shapes: set[tuple[int, int]], rows: tuple[int, ...]
) -> None:
    """Run every (in, out) shape that will be converted, at odd row counts, before any weight
    changes: an FP8 kernel this build lacks fails here instead of in the first image."""
    for in_features, out_features in sorted(shapes):
        layer = nn.Linear(in_features, out_features, device=device, dtype=dtype)
        for count in rows:
            x = torch.randn(count, in_features, device=device, dtype=dtype)
            with torch.no_grad():
                expected = layer(x).float()
                got = FP8Linear.from_linear(layer)(x).float()
            error = float((got - expected).norm() / expected.norm())
            if not error < 0.1:
                raise RuntimeError(
                    f"FP8 self-test error {error:.3f} at {count}x{in_features}->{out_features}"
                )


FP8_CHECK_ROWS = (257, 4099)  # odd row counts, like real token counts


@torch.no_grad()
def enable_fp8(generator: Switchable) -> int:
    """Replace the image stream's attention and MLP linears by ``FP8Linear`` (returns how
    many)."""
    transformer = generator.pipe.transformer
    shapes = {
        (m.in_features, m.out_features)
        for block in transformer.transformer_blocks
        for _name, m in _fp8_targets(block)
    }
    rows = FP8_CHECK_ROWS if generator.device.type == "cuda" else (37,)
    check_fp8_kernel(generator.device, generator.dtype, shapes, rows)
    switch = generator.lora_switch
    fusion = switch if isinstance(switch, LoraFusion) else None
    if fusion is not None:
        fusion(False)  # quantise from the base weights
        if generator._lora_active:
            generator._lora_active = False
    converted = 0
    for block in transformer.transformer_blocks:
        for name, module in _fp8_targets(block):
            delta = fusion.take(module.weight) if fusion is not None else None
            alt = None
            if delta is not None:
                alt = torch.addmm(module.weight, delta.up, delta.down, alpha=delta.scale)
            replacement = FP8Linear.from_linear(module, alt)
            del alt
            block.set_submodule(name, replacement)
            if delta is not None and fusion is not None:
                fusion.swaps.append(replacement)
            converted += 1
    if generator.device.type == "cuda":
        torch.cuda.empty_cache()
    logger.info("FP8: %d linears converted", converted)
    return converted
