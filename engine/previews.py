"""Live previews: a small JPEG of the image while it forms, from the denoising step callback.

Qwen-Image is a flow-matching model: at noise level sigma the transformer predicts a velocity
v, and the clean-image estimate is ``x0 = x_t - sigma_t * v``. diffusers 0.42.1's Qwen-Image
pipelines hand ``callback_on_step_end`` only ``latents`` and ``prompt_embeds``
(``_callback_tensor_inputs``); the guided ``noise_pred`` is not exposed. So v comes from two
consecutive latents: the scheduler's Euler step is ``x_next = x_t + (sigma_next - sigma_t) * v``,
hence ``v = (x_next - x_t) / (sigma_next - sigma_t)`` and

    x0 = x_next - sigma_next * v = (sigma_next * x_t - sigma_t * x_next) / (sigma_next - sigma_t)

exactly (it includes true CFG, since v is the guided prediction the step used). It needs the
latents of the step before, so the first step of a run never has a preview. In bf16 the latents'
rounding (~0.2%) is divided by the small sigma difference, which leaves a few percent of noise in
x0; the area downscale below averages most of it away. Stochastic sampling adds fresh noise per
step, which breaks the identity: previews are skipped then.

The estimate is downscaled in latent space to at most ``PREVIEW_MAX_SIDE / 8`` latents on its
long side and decoded with the pipeline's own VAE (no extra weights). Measured on a 2-core CPU:
the tiny model's VAE takes 6 ms for a 64 px preview and 107 ms for a 256 px one; the full-size
Qwen-Image VAE (random weights) 1.5 s for 256 px, which is why CPU dry runs use the tiny model.
On a GPU the full decode of a 1328² image takes about 0.1 s (docs/PERFORMANCE.md); 32x32
latents have 27x fewer pixels, so a preview costs milliseconds against 0.3-0.6 s per denoising
step, at most once per ``interval_s`` (an estimate, not measured on a GPU). A cheaper
latent-to-RGB projection is therefore not needed.

Previews start at ``PREVIEW_START_FRACTION`` of the steps (before that x0 is a blur), come at
most every ``interval_s`` seconds, and never on the last step: the final image must not wait.
A preview that fails is logged once and previews stop for that job; the image itself is never
affected.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from engine.diffusers_types import Pipeline, Scheduler

logger = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 256
PREVIEW_START_FRACTION = 0.3
PREVIEW_JPEG_QUALITY = 70


def estimate_x0(
    previous: torch.Tensor, current: torch.Tensor, sigma_t: float, sigma_next: float
) -> torch.Tensor:
    """The clean-latent estimate of the step that turned ``previous`` into ``current``."""
    denominator = sigma_next - sigma_t
    return (sigma_next * previous.float() - sigma_t * current.float()) / denominator


def decode_preview(pipe: Pipeline, packed_x0: torch.Tensor, width: int, height: int) -> bytes:
    """A JPEG of at most ``PREVIEW_MAX_SIDE`` px on its long side from packed latents."""
    factor = int(pipe.vae_scale_factor)
    latents = pipe._unpack_latents(packed_x0, height, width, factor)[:, :, 0]  # B, C, h, w
    h, w = latents.shape[-2:]
    limit = max(1, PREVIEW_MAX_SIDE // factor)
    if max(h, w) > limit:
        scale = limit / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        latents = F.interpolate(latents, size=size, mode="area")
    vae = pipe.vae
    channels = latents.shape[1]
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, channels, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, channels, 1, 1)
    latents = latents * std.to(latents.device) + mean.to(latents.device)
    decoded = vae.decode(latents.unsqueeze(2).to(vae.dtype), return_dict=False)[0][:, :, 0]
    pixels = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    image = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return buffer.getvalue()


class PreviewMaker:
    """Decides when a step gets a preview and makes it; one instance per job."""

    def __init__(
        self,
        *,
        width: int,
        height: int,
        total: int,
        interval_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.width = width
        self.height = height
        self.total = total
        self.interval_s = interval_s
        self.clock = clock
        self.made = 0
        self._previous: torch.Tensor | None = None
        self._last_at: float | None = None
        self._broken = False

    def due(self, step: int) -> bool:
        """Whether ``step`` (1..total, completed steps) may carry a preview."""
        if self._broken or step >= self.total or step < PREVIEW_START_FRACTION * self.total:
            return False
        return self._last_at is None or self.clock() - self._last_at >= self.interval_s

    def observe(self, pipe: Pipeline, step: int, latents: torch.Tensor) -> bytes | None:
        """Called from ``callback_on_step_end`` with the latents after ``step``; returns a JPEG
        when this step gets a preview. Never raises."""
        previous, self._previous = self._previous, latents  # a reference: the step made a copy
        if previous is None or not self.due(step):
            return None
        try:
            sigmas = _step_sigmas(pipe.scheduler)
            if sigmas is None:
                return None
            x0 = estimate_x0(previous, latents, *sigmas)
            preview = decode_preview(pipe, x0, self.width, self.height)
        except Exception:
            logger.warning("preview failed; no more previews for this job", exc_info=True)
            self._broken = True
            return None
        self._last_at = self.clock()
        self.made += 1
        return preview


def _step_sigmas(scheduler: Scheduler) -> tuple[float, float] | None:
    """(sigma_t, sigma_next) of the step the scheduler just took, or None if unusable."""
    if getattr(scheduler.config, "stochastic_sampling", False):
        return None
    index = scheduler.step_index
    sigmas = scheduler.sigmas
    if index is None or not 1 <= index < len(sigmas):
        return None
    sigma_t, sigma_next = float(sigmas[index - 1]), float(sigmas[index])
    if sigma_t == sigma_next:
        return None
    return sigma_t, sigma_next
