"""Replay the whole transformer forward as one CUDA graph per input shape (project issue 14).

Compiled, one Qwen-Image forward is still about a thousand kernel launches; on a single GPU the
host keeps ahead of them, but split over two GPUs (sequence parallelism) each GPU's share is
short enough that the launches, not the GPU, set the pace. A captured graph launches them all
at once. Each call copies its latents, text embeddings and timestep into fixed input buffers,
replays the graph of that shape and hands back a copy of the output.

A graph is kept per input shape (image size and prompt length), at most ``MAX_GRAPHS`` of them,
least recently used first out; a new shape costs ``WARM_CALLS`` ordinary forwards and one
captured one (``WARM_CALLS_FIRST`` for the very first shape). Calls the graphs don't cover (a
text mask, ControlNet, gradients, the CPU) run the ordinary forward.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING

import torch

from engine.diffusers_types import Forward, Transformer, TransformerOutput

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8
# Ordinary forwards before a capture: the first capture needs the lazy set-up (compiled
# kernels, library handles) done; later shapes only need their own compiled variant.
WARM_CALLS_FIRST = 2
WARM_CALLS = 1
_TENSORS = ("hidden_states", "encoder_hidden_states", "timestep")
_UNSUPPORTED = (
    "encoder_hidden_states_mask",
    "guidance",
    "controlnet_block_samples",
    "additional_t_cond",
)


class _Graph:
    def __init__(
        self, graph: torch.cuda.CUDAGraph, inputs: dict[str, torch.Tensor], out: torch.Tensor
    ) -> None:
        self.graph = graph
        self.inputs = inputs
        self.out = out


class GraphedForward:
    """A drop-in for ``transformer.forward`` that replays captured CUDA graphs."""

    def __init__(self, forward: Forward, max_graphs: int = MAX_GRAPHS) -> None:
        self.forward = forward
        self.max_graphs = max_graphs
        self.enabled = True
        self.graphs: OrderedDict[tuple[Hashable, ...], _Graph] = OrderedDict()
        self.pool: _POOL_HANDLE | None = None
        self.captures = 0
        self.replays = 0

    def _graph_inputs(
        self, kwargs: dict[str, object]
    ) -> tuple[tuple[Hashable, ...], list[torch.Tensor]] | None:
        """The graph's key for this call (shapes, dtypes, devices, image layout) and its input
        tensors in ``_TENSORS`` order; None when no graph covers the call."""
        if not self.enabled or torch.is_grad_enabled():
            return None
        if any(kwargs.get(name) is not None for name in _UNSUPPORTED):
            return None
        if kwargs.get("attention_kwargs"):
            return None
        tensors = [
            t for name in _TENSORS if isinstance(t := kwargs.get(name), torch.Tensor) and t.is_cuda
        ]
        if len(tensors) != len(_TENSORS):
            return None
        shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        return (*shapes, repr(kwargs.get("img_shapes"))), tensors

    def __call__(self, *args: object, **kwargs: object) -> TransformerOutput:
        found = None if args else self._graph_inputs(kwargs)
        if found is None:
            return self.forward(*args, **kwargs)
        key, tensors = found
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(kwargs, tensors)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        for name, tensor in zip(_TENSORS, tensors, strict=True):
            entry.inputs[name].copy_(tensor)
        entry.graph.replay()
        self.replays += 1
        out = entry.out.clone()
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)

    def _capture(self, kwargs: dict[str, object], tensors: list[torch.Tensor]) -> _Graph:
        started = time.perf_counter()
        inputs = {name: tensor.clone() for name, tensor in zip(_TENSORS, tensors, strict=True)}
        call = {**kwargs, **inputs, "return_dict": False}
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # unannotated in torch
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture needs
            for _ in range(WARM_CALLS if self.captures else WARM_CALLS_FIRST):
                self.forward(**call)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # One memory pool for every shape: replays never overlap and each output is copied
        # out at once, so no graph's memory is live while another one runs.
        with torch.cuda.graph(graph, pool=self.pool):
            out: torch.Tensor = self.forward(**call)[0]
        self.pool = graph.pool()
        self.captures += 1
        logger.info(
            "CUDA graph %d captured for %s in %.1fs",
            self.captures,
            tuple(inputs["hidden_states"].shape),
            time.perf_counter() - started,
        )
        return _Graph(graph, inputs, out)

    def clear(self) -> None:
        self.graphs.clear()
        self.pool = None


def install(transformer: Transformer) -> GraphedForward:
    """Wrap ``transformer.forward`` (whatever is installed there now) in graphs."""
    current = transformer.forward
    if isinstance(current, GraphedForward):
        return current
    graphed = GraphedForward(current)
    transformer.forward = graphed
    return graphed
