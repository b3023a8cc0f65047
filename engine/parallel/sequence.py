"""Sequence parallelism and CUDA-graph setups, run on every rank (see ``engine.parallel``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from engine.diffusers_types import Forward, TransformerOutput
from engine.parallel.cfg import installed_split
from engine.pipeline import ImageGenerator

logger = logging.getLogger(__name__)


def set_graphs(generator: ImageGenerator, enabled: bool) -> None:
    """Whole-forward CUDA graphs on or off (``engine.cudagraph``), beneath the CFG split."""
    from engine import cudagraph

    transformer = generator.pipe.transformer
    split = installed_split(transformer)
    if split is not None:  # wrap the forward the split calls
        if not isinstance(split._stock, cudagraph.GraphedForward):
            split._stock = cudagraph.GraphedForward(split._stock)
        graphed = split._stock
    else:
        graphed = cudagraph.install(transformer)
    graphed.clear()  # graphs captured before a change of setup would replay the old one
    graphed.enabled = enabled


def split_sizes(total: int, world: int) -> list[int]:
    """Each rank's share of ``total`` tokens as ``tensor_split`` cuts them (first ones longer)."""
    base, extra = divmod(total, world)
    return [base + (1 if rank < extra else 0) for rank in range(world)]


class LocalSizes:
    """Every rank's share of the sequence, worked out from the shapes of the call.

    diffusers' "anything" Ulysses asks the other ranks for their local lengths at every
    attention (an all_gather, then ``.item()``): a host sync per layer, which CUDA graph capture
    refuses and which breaks the compiled graph. Every rank can compute the answer itself: the
    image and the text tokens are each cut with ``tensor_split``, and the joint attention sees
    a rank's text share plus its image share. diffusers asks two questions: the joint
    attention's shares (for q, k, v and the output) and the image's (gathering the output).
    This wraps the transformer's forward to note the shapes and answers both from them.

    Every rank must then answer, or every rank ask: a collective that one rank enters alone
    hangs or returns garbage (seen on two H200s: a rank whose text share equalled its image
    share asked while the other answered). So when the two questions could be confused on
    any rank (a text share of 0), no rank answers for that forward.

    ``gather`` runs inside compiled code, so it must change no Python state that dynamo
    would guard on: counting the answers there made every forward fail the guard
    (``_ACTIVE[0].answered == 10``), recompile until the limit, and then compile inside a
    CUDA graph capture, which the capture refused (seen on two H200s). The counters count
    eager calls only, and the table is replaced only when the shares change.
    """

    def __init__(self, forward: Forward, rank: int, world: int) -> None:
        self.forward = forward
        self.rank = rank
        self.world = world
        self.table: dict[int, list[int]] = {}
        self.answered = 0
        self.asked_peers = 0

    def __call__(self, *args: object, **kwargs: object) -> TransformerOutput:
        hidden, text = kwargs.get("hidden_states"), kwargs.get("encoder_hidden_states")
        table: dict[int, list[int]] = {}
        if isinstance(hidden, torch.Tensor) and isinstance(text, torch.Tensor):
            image = split_sizes(hidden.shape[1], self.world)
            words = split_sizes(text.shape[1], self.world)
            joint = [a + b for a, b in zip(image, words, strict=True)]
            # Worked out for every rank alike, so all ranks take the same decision.
            if not any(joint[r] == image[r] for r in range(self.world)):
                table = {joint[self.rank]: joint, image[self.rank]: image}
        if table != self.table:
            self.table = table
        return self.forward(*args, **kwargs)

    def gather(self, size: int, group: dist.ProcessGroup | None) -> list[int]:
        sizes = self.table.get(size)
        counting = not torch.compiler.is_compiling()  # traced code leaves the counters out
        if sizes is None or dist.get_world_size(group=group) != self.world:
            if counting:
                self.asked_peers += 1
            return _STOCK_GATHER[0](size, group)
        if counting:
            self.answered += 1
        return list(sizes)


_ACTIVE: list[LocalSizes] = []
_STOCK_GATHER: list[Callable[[int, dist.ProcessGroup | None], list[int]]] = []
# The function diffusers asks (in every module that imported it).
_GATHER_NAME = "gather_size_by_comm"


def _gather_size(size: int, group: dist.ProcessGroup | None) -> list[int]:
    if _ACTIVE:
        return _ACTIVE[0].gather(size, group)
    return _STOCK_GATHER[0](size, group)


def _install_size_answers(sizes: LocalSizes) -> None:
    """Route diffusers' size all_gather (every module that imported it) to ``sizes``."""
    import importlib

    names = (
        "diffusers.models._modeling_parallel",
        "diffusers.models.attention_dispatch",
        "diffusers.hooks.context_parallel",
    )
    for name in names:
        module = importlib.import_module(name)
        current = getattr(module, _GATHER_NAME, None)
        if current is None:
            continue
        if current is not _gather_size:
            if not _STOCK_GATHER:
                _STOCK_GATHER.append(current)
            setattr(module, _GATHER_NAME, _gather_size)
    _ACTIVE[:] = [sizes]


def run_ulysses_glue_eagerly() -> None:
    """Keep diffusers' context-parallel attention (the Ulysses all-to-alls, the reshapes around
    them and the attention call) out of the compiler; the blocks around it stay compiled.

    Inside a CUDA graph the glue's launch cost is gone, so compiling it gains little, while
    compiled glue specialises on each rank's share of the sequence: every new prompt length
    compiled it again. Two H200s, fast 1328²: compiled glue 1.28-1.30 s per image and 6.3 s for
    the first image of a new prompt length (run11); in run7 the glue had fallen back to eager
    (the compiler hit its recompile limit) and took 1.157 s and 3.0 s.

    The patch is process-wide and stays: ``enable_sequence_parallel(fullgraph=True)`` (a
    benchmark experiment, not a product path) cannot compile across it in the same process.
    """
    from diffusers.models import attention_dispatch

    glue = attention_dispatch._templated_context_parallel_attention
    if not getattr(glue, "_imagine_eager", False):
        # torch leaves disable() unannotated.
        eager = torch._dynamo.disable(glue, recursive=True)  # type: ignore[no-untyped-call]
        eager._imagine_eager = True
        attention_dispatch._templated_context_parallel_attention = eager


def enable_sequence_parallel(generator: ImageGenerator, fullgraph: bool = False) -> None:
    """Ulysses sequence parallelism over every rank (diffusers' context parallelism).

    The image at 1328² has 6889 tokens, which does not split evenly, hence diffusers'
    ``ulysses_anything``, with the local sizes answered by ``LocalSizes`` instead of a host
    sync. The blocks are compiled again (``fullgraph`` if asked) since the attention changed.
    Calling it again only recompiles.
    """
    # The defining module: to a type checker ``diffusers.ContextParallelConfig`` is diffusers'
    # untyped placeholder (engine.diffusers_types says why).
    from diffusers.models._modeling_parallel import ContextParallelConfig

    from engine import optimize

    transformer = generator.pipe.transformer
    compiled = "compile" in generator.optimizations
    if compiled:
        optimize.uncompile_transformer(transformer)
        torch._dynamo.reset()
    if getattr(transformer, "_parallel_config", None) is None:
        world = dist.get_world_size()
        config = ContextParallelConfig(ulysses_degree=world, ulysses_anything=True)
        transformer.enable_parallelism(config=config)
        sizes = LocalSizes(transformer.forward, dist.get_rank(), world)
        split = installed_split(transformer)
        if split is not None:  # under the CFG split (inactive in this mode), over the rest
            sizes.forward = split._stock
            split._stock = sizes
        else:
            transformer.forward = sizes
        _install_size_answers(sizes)
    if compiled:
        optimize.compile_transformer(transformer, fullgraph=fullgraph)
    logger.info("Ulysses sequence parallelism over %d ranks", dist.get_world_size())


# The transformer attribute that holds its ``FastSequence`` (``fast_sequence`` finds it).
_FAST_SEQUENCE_ATTRIBUTE = "_imagine_fast_sequence"


class _HookFunctions(Protocol):
    """diffusers' ``HookFunctionReference``: the functions a hooked forward calls around it."""

    pre_forward: Callable[..., tuple[tuple[object, ...], dict[str, object]]]
    post_forward: Callable[[nn.Module, object], object]


@runtime_checkable
class _ParallelProcessor(Protocol):
    """An attention processor that runs context-parallel while it holds a config."""

    _parallel_config: object


class FastSequence:
    """Ulysses for fast mode only, CFG-parallel for the rest: sequence parallelism and the CUDA
    graphs are switched on for each fast image and off for each CFG image.

    Fast mode has no second forward to give the other GPU, so each forward is split along the
    sequence instead; split over two GPUs a forward is too short for the host to keep both GPUs
    fed, so it runs as a CUDA graph (one per image size and prompt length, captured on first
    use). diffusers' context-parallel hooks stay registered (registering them again would hand
    the compiler new functions, hence a recompile, at every switch); they and the attention
    processors consult ``active``, so the compiler keeps one variant per setting. The blocks
    are compiled without ``fullgraph``: the Ulysses attention breaks the graph.
    """

    def __init__(self, generator: ImageGenerator) -> None:
        from diffusers.hooks.context_parallel import (
            ContextParallelGatherHook,
            ContextParallelSplitHook,
        )
        from diffusers.models._modeling_parallel import ContextParallelConfig

        from engine import cudagraph, optimize

        transformer = generator.pipe.transformer
        compiled = "compile" in generator.optimizations
        if compiled:
            optimize.uncompile_transformer(transformer)
            torch._dynamo.reset()
        world = dist.get_world_size()
        transformer.enable_parallelism(
            config=ContextParallelConfig(ulysses_degree=world, ulysses_anything=True)
        )
        self.active = True
        self.config = transformer._parallel_config
        self.processors = [
            processor
            for m in transformer.modules()
            if isinstance(processor := getattr(m, "processor", None), _ParallelProcessor)
            and processor._parallel_config is self.config
        ]
        hooks = (ContextParallelSplitHook, ContextParallelGatherHook)
        for module in transformer.modules():
            registry = module.__dict__.get("_diffusers_hook")
            for hook in registry.hooks.values() if registry is not None else ():
                if isinstance(hook, hooks):
                    # diffusers infers HookFunctionReference's functions as None (its __init__).
                    self._gate(hook.fn_ref)  # type: ignore[arg-type]
        self.sizes = LocalSizes(transformer.forward, dist.get_rank(), world)
        self.graphs = cudagraph.GraphedForward(self.sizes)
        split = installed_split(transformer)
        if split is not None:  # beneath the CFG split, which is inactive for fast images
            self.sizes.forward = split._stock
            split._stock = self.graphs
        else:
            transformer.forward = self.graphs
        _install_size_answers(self.sizes)
        run_ulysses_glue_eagerly()
        self.off()
        if compiled:
            optimize.compile_transformer(transformer, fullgraph=False)
        setattr(transformer, _FAST_SEQUENCE_ATTRIBUTE, self)

    def _gate(self, fn_ref: _HookFunctions) -> None:
        pre, post = fn_ref.pre_forward, fn_ref.post_forward

        def pre_forward(
            module: nn.Module, *args: object, **kwargs: object
        ) -> tuple[tuple[object, ...], dict[str, object]]:
            return pre(module, *args, **kwargs) if self.active else (args, kwargs)

        def post_forward(module: nn.Module, output: object) -> object:
            return post(module, output) if self.active else output

        fn_ref.pre_forward, fn_ref.post_forward = pre_forward, post_forward

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def _set(self, active: bool) -> None:
        if active == self.active:
            return
        for processor in self.processors:
            processor._parallel_config = self.config if active else None
        self.graphs.enabled = active
        self.active = active


def enable_fast_sequence(generator: ImageGenerator) -> None:
    """Set up ``FastSequence`` on this rank (every rank runs it, rank 0 last)."""
    FastSequence(generator)
    logger.info("fast mode: Ulysses over %d ranks in CUDA graphs", dist.get_world_size())


def fast_sequence(generator: ImageGenerator) -> FastSequence | None:
    found = getattr(generator.pipe.transformer, _FAST_SEQUENCE_ATTRIBUTE, None)
    return found if isinstance(found, FastSequence) else None


SETUPS: dict[str, Callable[..., None]] = {
    "graphs": set_graphs,
    "sequence": enable_sequence_parallel,
    "fast-sequence": enable_fast_sequence,
}
