"""``rope-real``: Qwen-Image's rotary embeddings in real arithmetic, which the compiler can
fuse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch

# ``apply_rotary_emb_qwen``'s shape: (x, freqs_cis, use_real, use_real_unbind_dim) -> x rotated.
Rotary = Callable[[torch.Tensor, torch.Tensor, bool, int], torch.Tensor]


class _RotaryModule(Protocol):
    """diffusers' ``transformer_qwenimage`` module as far as its rotary embeddings go."""

    apply_rotary_emb_qwen: Rotary
    _imagine_stock_rotary: Rotary  # set by install_real_rotary, read with getattr


def _qwen_module() -> _RotaryModule:
    from diffusers.models.transformers import transformer_qwenimage as module

    # diffusers annotates apply_rotary_emb_qwen as returning a (query, key) pair; it returns the
    # one rotated tensor it was given.
    return cast(_RotaryModule, module)


def rotary_real(
    x: torch.Tensor,
    freqs_cis: torch.Tensor,
    use_real: bool = True,
    use_real_unbind_dim: int = -1,
) -> torch.Tensor:
    """``apply_rotary_emb_qwen`` in real arithmetic (same products, same fp32 precision).

    Inductor cannot generate code for complex numbers: compiled, the stock complex multiply
    runs as a separate eager kernel with fp32 round trips through memory for q and k in every
    block. Written with real numbers it fuses into the kernel that already applies the
    query/key RMSNorm.
    """
    if use_real or not freqs_cis.is_complex():
        return _stock_rotary()(x, freqs_cis, use_real, use_real_unbind_dim)
    freqs = torch.view_as_real(freqs_cis)  # (S, D/2, 2): cos, sin
    cos = freqs[..., 0].unsqueeze(1)  # broadcast over heads, as the stock code does
    sin = freqs[..., 1].unsqueeze(1)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def _stock_rotary() -> Rotary:
    module = _qwen_module()
    stock: Rotary = getattr(module, "_imagine_stock_rotary", module.apply_rotary_emb_qwen)
    return stock


def install_real_rotary() -> bool:
    """Route Qwen-Image's attention processor to ``rotary_real`` (process-wide)."""
    module = _qwen_module()
    if module.apply_rotary_emb_qwen is not rotary_real:
        module._imagine_stock_rotary = module.apply_rotary_emb_qwen
        module.apply_rotary_emb_qwen = rotary_real
    return True
