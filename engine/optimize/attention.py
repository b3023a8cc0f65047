"""``attention:<backend>``: the fastest exact attention kernel this card offers, picked by
timing the candidates at start-up on the model's own head shape."""

from __future__ import annotations

import logging

import torch

from engine.diffusers_types import Transformer

logger = logging.getLogger(__name__)

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
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    name = AttentionBackendName(backend)  # what dispatch_attention_fn makes of the string
    out = dispatch_attention_fn(q, k, v, backend=name)
    for _ in range(2):
        dispatch_attention_fn(q, k, v, backend=name)
    times = []
    for _ in range(repeats):
        start, end = _timing_event(), _timing_event()
        start.record()
        dispatch_attention_fn(q, k, v, backend=name)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2], out


def _timing_event() -> torch.cuda.Event:
    # torch leaves Event.__new__ unannotated.
    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


@torch.no_grad()
def pick_attention_backend(
    transformer: Transformer, device: torch.device, tokens: int = ATTENTION_PROBE_TOKENS
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
