"""Make a resident Qwen-Image engine fast (project issue #5).

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

``encode_png`` (used by ``engine.pipeline.png_with_parameters``) takes PNG compression, about
half a second per 1328² image with Pillow, off the critical path by spreading it over threads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.settings import MemoryMode

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

# Attention backends in order of preference when timings tie; each is checked against
# PyTorch's default kernel before it may be used.
ATTENTION_CANDIDATES = ("_flash_3", "flash", "_native_cudnn", "_native_flash", "native")
ATTENTION_PROBE_TOKENS = 6889 + 64  # a 1328x1328 image plus a typical prompt
ATTENTION_MAX_REL_ERROR = 2e-2
# Switch away from PyTorch's own choice only for a clear gain: timings a few percent apart
# flip from one start to the next, and each flip is a different compiled graph (a compile
# cache miss). Seen on an H100: cuDNN 0.47 ms against the default 0.38 ms in one start and
# the other way round in the next.
ATTENTION_MIN_GAIN = 0.10

PROMPT_CACHE_SIZE = 32
LORA_ADAPTER = "lightning"


def apply(generator: Any) -> list[str]:
    """Apply every speed-up this machine supports to a freshly loaded ``ImageGenerator``."""
    applied: list[str] = []
    pipe = generator.pipe
    settings = generator.settings
    cuda = generator.device.type == "cuda"
    resident = generator.memory_mode == MemoryMode.RESIDENT

    _try(applied, "prompt-cache", lambda: install_prompt_cache(pipe))
    if generator.memory_mode != MemoryMode.SEQUENTIAL_OFFLOAD:  # its hooks wrap every layer
        _try(applied, "vae-2d", lambda: install_vae_single_frame(pipe.vae) > 0)
    if generator.fast_available and resident:
        _try(applied, "lora-fused", lambda: install_lora_fusion(generator))
    if not (cuda and resident):
        if settings.fp8 or settings.compile:
            logger.info("compile/FP8 skipped: they need the models resident on a CUDA GPU")
        return applied

    if settings.fp8:
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


# ----------------------------------------------------------------------------- prompt cache
class PromptCache:
    """Memoises ``pipe.encode_prompt`` for plain string prompts (least recently used first out).

    Encoding is deterministic and its outputs are never modified in place by the pipeline, so
    handing back the same tensors is exact. Pre-computed embeddings bypass the cache.
    """

    def __init__(self, encode: Callable[..., Any], size: int = PROMPT_CACHE_SIZE) -> None:
        self.encode = encode
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        max_sequence_length: int = 1024,
    ) -> Any:
        kwargs = {
            "prompt": prompt,
            "device": device,
            "num_images_per_prompt": num_images_per_prompt,
            "prompt_embeds": prompt_embeds,
            "prompt_embeds_mask": prompt_embeds_mask,
            "max_sequence_length": max_sequence_length,
        }
        if prompt_embeds is not None or prompt_embeds_mask is not None:
            return self.encode(**kwargs)
        texts = (prompt,) if isinstance(prompt, str) else tuple(prompt or ())
        if not texts or not all(isinstance(t, str) for t in texts):
            return self.encode(**kwargs)
        key = (texts, num_images_per_prompt, max_sequence_length, str(device))
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = self.encode(**kwargs)
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


def install_prompt_cache(pipe: Any) -> PromptCache:
    existing = pipe.__dict__.get("encode_prompt")
    if isinstance(existing, PromptCache):
        return existing
    cache = PromptCache(pipe.encode_prompt)
    pipe.encode_prompt = cache
    return cache


# ------------------------------------------------------------------------------ LoRA fusion
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
        if self.fix_index is not None:
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
def install_lora_fusion(generator: Any, adapter: str = LORA_ADAPTER) -> LoraFusion | bool:
    """Take the loaded LoRA out of PEFT's wrappers and let the generator merge it on demand."""
    from peft.tuners.lora import LoraLayer

    transformer = generator.pipe.transformer
    layers = [(n, m) for n, m in transformer.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        logger.info("no LoRA layers to fuse")
        return False
    for name, layer in layers:
        if adapter not in layer.lora_A:
            logger.info("LoRA fusion skipped: %s has no %r adapter", name, adapter)
            return False
        if layer.use_dora.get(adapter) or layer.lora_bias.get(adapter):
            logger.info("LoRA fusion skipped: %s uses DoRA or a LoRA bias", name)
            return False
        if not isinstance(layer.get_base_layer(), nn.Linear):
            logger.info("LoRA fusion skipped: %s is not a linear layer", name)
            return False
    deltas = []
    for name, layer in layers:
        weight = layer.get_base_layer().weight
        up = layer.lora_B[adapter].weight.detach().to(weight.device, weight.dtype)
        down = layer.lora_A[adapter].weight.detach().to(weight.device, weight.dtype)
        deltas.append(
            _Delta(name, weight, up.contiguous(), down.contiguous(), layer.scaling[adapter])
        )
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


# ------------------------------------------------------------------------------------- FP8
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
        if self.alt_weight is None:
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
def enable_fp8(generator: Any) -> int:
    """Replace the image stream's attention and MLP linears by ``FP8Linear`` (returns how
    many)."""
    transformer = generator.pipe.transformer
    shapes = {
        (m.in_features, m.out_features)
        for block in transformer.transformer_blocks
        for name, m in block.named_modules()
        if fp8_eligible(name, m)
    }
    rows = FP8_CHECK_ROWS if generator.device.type == "cuda" else (37,)
    check_fp8_kernel(generator.device, generator.dtype, shapes, rows)
    fusion = getattr(generator, "lora_switch", None)
    if not isinstance(fusion, LoraFusion):
        fusion = None
    if fusion is not None:
        fusion(False)  # quantise from the base weights
        if generator._lora_active:
            generator._lora_active = False
    converted = 0
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            if not fp8_eligible(name, module):
                continue
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


# ------------------------------------------------------------------------------- attention
def _available_attention_backends() -> list[str]:
    import importlib.util

    names = []
    for name in ATTENTION_CANDIDATES:
        if name == "_flash_3" and importlib.util.find_spec("flash_attn_interface") is None:
            continue
        if name == "flash" and importlib.util.find_spec("flash_attn") is None:
            continue
        names.append(name)
    return names


def time_attention(
    backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int = 5
) -> tuple[float, torch.Tensor]:
    """Median seconds of one call, and its output."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    out = dispatch_attention_fn(q, k, v, backend=backend)
    for _ in range(2):
        dispatch_attention_fn(q, k, v, backend=backend)
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        dispatch_attention_fn(q, k, v, backend=backend)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2], out


@torch.no_grad()
def pick_attention_backend(
    transformer: Any, device: torch.device, tokens: int = ATTENTION_PROBE_TOKENS
) -> str:
    """Time each installed exact attention kernel on this model's head shape; keep the fastest."""
    heads = transformer.config.num_attention_heads
    dim = transformer.config.attention_head_dim
    dtype = next(transformer.parameters()).dtype
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, tokens, heads, dim, device=device, dtype=dtype, generator=gen)
        for _ in range(3)
    )
    _, reference = time_attention("native", q, k, v, repeats=1)
    results: dict[str, float] = {}
    for name in _available_attention_backends():
        try:
            seconds, out = time_attention(name, q, k, v, repeats=9)
        except Exception as exc:
            logger.info("attention %s unavailable: %s", name, str(exc).splitlines()[0][:120])
            continue
        error = float((out.float() - reference.float()).norm() / reference.float().norm())
        if not error < ATTENTION_MAX_REL_ERROR:
            logger.warning("attention %s rejected: relative error %.2e", name, error)
            continue
        results[name] = seconds
    if not results:
        return "native"
    best = min(results, key=lambda n: results[n])
    if "native" in results and results[best] > (1 - ATTENTION_MIN_GAIN) * results["native"]:
        best = "native"
    logger.info(
        "attention backends (ms at %d tokens): %s -> %s",
        tokens,
        ", ".join(f"{n} {s * 1e3:.2f}" for n, s in results.items()),
        best,
    )
    if best != "native":
        transformer.set_attention_backend(best)
    return best


# ------------------------------------------------------------------------------------ RoPE
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


def _stock_rotary() -> Callable[..., torch.Tensor]:
    from diffusers.models.transformers import transformer_qwenimage as module

    return getattr(module, "_imagine_stock_rotary", module.apply_rotary_emb_qwen)


def install_real_rotary() -> bool:
    """Route Qwen-Image's attention processor to ``rotary_real`` (process-wide)."""
    from diffusers.models.transformers import transformer_qwenimage as module

    if module.apply_rotary_emb_qwen is not rotary_real:
        module._imagine_stock_rotary = module.apply_rotary_emb_qwen
        module.apply_rotary_emb_qwen = rotary_real
    return True


# ------------------------------------------------------------------------------------- VAE
def _single_frame_forward(conv: nn.Conv3d) -> Callable[..., torch.Tensor]:
    """A causal 3D convolution on one frame with no cached frames sees zeros in all but its
    last temporal tap, so it is exactly a 2D convolution with that tap: a third of the work."""
    stock = conv.forward

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is not None or x.shape[2] != 1 or conv.stride[0] != 1:
            return stock(x, cache_x)
        pad_w0, pad_w1, pad_h0, pad_h1, pad_t0, pad_t1 = conv._padding
        if pad_t1 != 0 or pad_t0 != conv.kernel_size[0] - 1:
            return stock(x, cache_x)
        frame = torch.nn.functional.pad(x[:, :, 0], (pad_w0, pad_w1, pad_h0, pad_h1))
        out = torch.nn.functional.conv2d(
            frame, conv.weight[:, :, -1], conv.bias, conv.stride[1:], 0, conv.dilation[1:]
        )
        return out.unsqueeze(2)

    return forward


def install_vae_single_frame(vae: Any) -> int:
    """Decode still images with 2D convolutions (returns how many layers were switched)."""
    count = 0
    for module in vae.modules():
        if type(module).__name__ == "QwenImageCausalConv3d" and module.kernel_size[0] > 1:
            if not hasattr(module, "_stock_forward"):
                module._stock_forward = module.forward
                module.forward = _single_frame_forward(module)
            count += 1
    return count


# ------------------------------------------------------------------------------------- PNG
PNG_WORKERS = 8
PNG_LEVEL = 6  # zlib level PIL used here before: same size class, now in parallel


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_filter_up(pixels: Any) -> Any:
    """PNG "Up" filtering (each byte minus the byte above it): one vectorised subtraction.

    Measured on a photo-like 1328x1328 image: files about 15% larger than Pillow's adaptive
    per-row filtering, for a few milliseconds instead of most of Pillow's half second.
    """
    import numpy as np

    rows = pixels.reshape(pixels.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = 2  # filter type Up (the first row's "above" is zeros)
    out[:, 1:] = rows
    out[1:, 1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as PNG specifies
    return out


def encode_png(image: Any, texts: list[tuple[str, str]], level: int = PNG_LEVEL) -> bytes:
    """PNG bytes with text chunks, the compression split across threads.

    Pieces of the filtered image are deflated independently (zlib releases the GIL) and joined
    with sync-flush boundaries into one valid zlib stream, so any PNG reader decodes it. For a
    1328x1328 image this takes tens of milliseconds on a many-core host instead of Pillow's
    0.47 s (measured on the benchmark machine).
    """
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    modes = {"RGB": (2, 3), "RGBA": (6, 4), "L": (0, 1)}
    if image.mode not in modes:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    color_type, channels = modes[image.mode]
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, channels)
    data = _png_filter_up(pixels).tobytes()
    pieces = max(1, min(PNG_WORKERS, len(data) // (256 * 1024)))
    step = -(-len(data) // pieces)
    parts = [data[i : i + step] for i in range(0, len(data), step)]

    def deflate(index: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        last = index == len(parts) - 1
        return compressor.compress(parts[index]) + compressor.flush(
            zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
        )

    if len(parts) == 1:
        deflated = [deflate(0)]
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            deflated = list(pool.map(deflate, range(len(parts))))
    stream = b"\x78\x9c" + b"".join(deflated) + struct.pack(">I", zlib.adler32(data))
    out = [b"\x89PNG\r\n\x1a\n"]
    out.append(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", image.width, image.height, 8,
                                               color_type, 0, 0, 0)))  # fmt: skip
    for key, value in texts:
        name = key.encode("latin-1", "replace")[:79]
        try:
            out.append(_png_chunk(b"tEXt", name + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:  # iTXt: uncompressed UTF-8, no language tag
            out.append(_png_chunk(b"iTXt", name + b"\0\0\0\0\0" + value.encode("utf-8")))
    out.append(_png_chunk(b"IDAT", stream))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


# --------------------------------------------------------------------------------- compile
def default_compile_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qwen-imagine-bot" / "torch-compile"


def configure_compile_cache(path: Path | None) -> Path:
    """Point inductor's on-disk caches (FX graphs, AOT graphs, Triton kernels) at ``path``.

    With no setting, an explicit ``TORCHINDUCTOR_CACHE_DIR`` wins, else a per-user cache
    directory that (unlike inductor's default under /tmp) survives reboots.
    """
    if path is None:
        env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        path = Path(env) if env else default_compile_cache_dir()
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):  # older torch: FX graph cache alone
        pass
    return path


def compile_transformer(
    transformer: Any, *, backend: str = "inductor", dynamic: bool = True, fullgraph: bool = True
) -> None:
    """Regional compilation of the repeated blocks: one graph for all 60, any sequence length."""
    transformer.compile_repeated_blocks(fullgraph=fullgraph, dynamic=dynamic, backend=backend)


def uncompile_transformer(transformer: Any) -> None:
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def smoke_forward(
    transformer: Any,
    device: torch.device,
    *,
    grid: tuple[int, int] = (24, 22),
    text_tokens: int = 13,
) -> torch.Tensor:
    """One small transformer forward (odd sizes, so no size gets specialised by accident)."""
    config = transformer.config
    dtype = next(transformer.parameters()).dtype
    h, w = grid
    latents = torch.randn(1, h * w, config.in_channels, device=device, dtype=dtype)
    text = torch.randn(1, text_tokens, config.joint_attention_dim, device=device, dtype=dtype)
    timestep = torch.full((1,), 0.5, device=device, dtype=dtype)
    with torch.inference_mode():
        return transformer(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=text,
            encoder_hidden_states_mask=None,
            img_shapes=[[(1, h, w)]],
            attention_kwargs={},  # what the pipeline passes: None would compile a second graph
            return_dict=False,
        )[0]


def compile_and_check(transformer: Any, device: torch.device, backend: str = "inductor") -> bool:
    """Compile now (not on the first user's image) and fall back to eager if it breaks."""
    compile_transformer(transformer, backend=backend)
    started = time.perf_counter()
    try:
        out = smoke_forward(transformer, device)
        if not torch.isfinite(out).all():
            logger.warning("compiled smoke forward produced non-finite values")
    except Exception:
        logger.exception("compiling the transformer blocks failed; running them eagerly")
        uncompile_transformer(transformer)
        return False
    logger.info("transformer blocks compiled in %.1fs", time.perf_counter() - started)
    return True
