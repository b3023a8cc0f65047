"""CFG-parallel: the two true-CFG forwards of a step on two ranks (see ``engine.parallel``)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.diffusers_types import Forward, Transformer, TransformerOutput

# The transformer attribute that holds its split, found by ``installed_split``
# (``engine.edit.swap`` looks for it too).
SPLIT_ATTRIBUTE = "_imagine_cfg_split"


class CfgSplit:
    """Replaces the transformer's forward so that the two CFG forwards of a step run on two
    ranks.

    The pipeline calls the transformer for the prompt, then for the negative prompt. Rank 0
    computes the first and hands it back at once; rank 1 hands back an empty tensor of the same
    shape. At the second call rank 1 computes, rank 0 hands back an empty tensor, and two
    broadcasts fill both empty tensors in place, before the pipeline reads either of them.
    Outside ``begin()``/``end()`` the stock forward runs untouched.
    """

    def __init__(
        self, transformer: Transformer, rank: int, group: dist.ProcessGroup | None = None
    ) -> None:
        if rank > 1:
            raise ValueError("CFG-parallel uses ranks 0 and 1")
        self.transformer = transformer
        self.rank = rank
        self.group = group
        self.active = False
        self.calls = 0
        self._pending: torch.Tensor | None = None
        self._stock: Forward = transformer.forward
        transformer.forward = self.forward
        setattr(transformer, SPLIT_ATTRIBUTE, self)

    def begin(self) -> None:
        self.active, self.calls, self._pending = True, 0, None

    def end(self) -> None:
        self.active, self._pending = False, None

    def _shape(
        self, kwargs: dict[str, object]
    ) -> tuple[tuple[int, ...], torch.dtype, torch.device]:
        hidden = kwargs["hidden_states"]
        if not isinstance(hidden, torch.Tensor):
            raise TypeError("CFG-parallel: the transformer was called without hidden_states")
        proj = self.transformer.proj_out
        return (*hidden.shape[:-1], proj.out_features), proj.weight.dtype, hidden.device

    def _compute(self, args: tuple[object, ...], kwargs: dict[str, object]) -> torch.Tensor:
        out: torch.Tensor = self._stock(*args, **{**kwargs, "return_dict": False})[0]
        out = out.contiguous()
        shape, _dtype, _device = self._shape(kwargs)
        if tuple(out.shape) != tuple(shape):  # the peer's buffer must match exactly
            raise RuntimeError(f"transformer output {tuple(out.shape)}, expected {shape}")
        return out

    def _empty(self, kwargs: dict[str, object]) -> torch.Tensor:
        shape, dtype, device = self._shape(kwargs)
        return torch.empty(shape, dtype=dtype, device=device)

    def forward(self, *args: object, **kwargs: object) -> TransformerOutput:
        if not self.active:
            return self._stock(*args, **kwargs)
        branch = self.calls % 2  # 0: the prompt, 1: the negative prompt
        self.calls += 1
        out = self._compute(args, kwargs) if branch == self.rank else self._empty(kwargs)
        if branch == 0:
            self._pending = out
        else:
            cond, self._pending = self._pending, None
            if cond is None:
                raise RuntimeError("CFG-parallel: negative-prompt forward without a prompt one")
            dist.broadcast(cond, src=self._global(0), group=self.group)
            dist.broadcast(out, src=self._global(1), group=self.group)
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)


def installed_split(transformer: Transformer) -> CfgSplit | None:
    """The split installed on ``transformer``, if any."""
    split = getattr(transformer, SPLIT_ATTRIBUTE, None)
    return split if isinstance(split, CfgSplit) else None
