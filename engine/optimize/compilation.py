"""``compile``: the 60 repeated transformer blocks compiled once (regional compilation, one
graph with dynamic sequence lengths, so every aspect and prompt length reuses it), with a
persistent on-disk cache so a restart does not pay the compile again."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from engine.diffusers_types import Transformer

logger = logging.getLogger(__name__)


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
    transformer: Transformer,
    *,
    backend: str = "inductor",
    dynamic: bool = True,
    fullgraph: bool = True,
) -> None:
    """Regional compilation of the repeated blocks: one graph for all 60, any sequence length."""
    transformer.compile_repeated_blocks(fullgraph=fullgraph, dynamic=dynamic, backend=backend)


def uncompile_transformer(transformer: Transformer) -> None:
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def smoke_forward(
    transformer: Transformer,
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


def compile_and_check(
    transformer: Transformer, device: torch.device, backend: str = "inductor"
) -> bool:
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
