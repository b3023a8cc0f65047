"""``vae-2d``: still images decoded with 2D convolutions.

The VAE's causal 3D convolutions see zero padding in two of their three temporal taps for a
single frame: same result, a third of the decoder's convolution work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from engine.diffusers_types import Vae

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d


def _single_frame_forward(conv: QwenImageCausalConv3d) -> Callable[..., torch.Tensor]:
    """A causal 3D convolution on one frame with no cached frames sees zeros in all but its
    last temporal tap, so it is exactly a 2D convolution with that tap: a third of the work."""
    stock = conv.forward

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is not None or x.shape[2] != 1 or conv.stride[0] != 1:
            return stock(x, cache_x)
        # Numbers: nn.Conv3d's padding may be a string only as an argument.
        pad_w0, pad_w1, pad_h0, pad_h1, pad_t0, pad_t1 = (int(p) for p in conv._padding)
        if pad_t1 != 0 or pad_t0 != conv.kernel_size[0] - 1:
            return stock(x, cache_x)
        frame = torch.nn.functional.pad(x[:, :, 0], (pad_w0, pad_w1, pad_h0, pad_h1))
        out = torch.nn.functional.conv2d(
            frame, conv.weight[:, :, -1], conv.bias, conv.stride[1:], 0, conv.dilation[1:]
        )
        return out.unsqueeze(2)

    return forward


def install_vae_single_frame(vae: Vae) -> int:
    """Decode still images with 2D convolutions (returns how many layers were switched)."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    count = 0
    for module in vae.modules():
        if isinstance(module, QwenImageCausalConv3d) and module.kernel_size[0] > 1:
            if not hasattr(module, "_stock_forward"):
                # Patched on this instance: the stock forward is kept (it also marks the layer
                # as switched) though nn.Module types its attributes as tensors and modules.
                module._stock_forward = module.forward  # type: ignore[assignment]
                module.forward = _single_frame_forward(module)  # type: ignore[method-assign]
            count += 1
    return count
