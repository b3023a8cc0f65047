"""Streaming part of a model from pinned host memory: the memory plan's answer for a card that
cannot hold a component whole (``engine.planning``).

The plan keeps as many blocks resident as fit and streams only the rest: with 54 of 60 4-bit
blocks resident a forward copies six blocks, not the model. Each streamed block's weights live in
pinned host memory; just before the block runs they are on the GPU, copied on a side CUDA stream
while the block before it computes (one block ahead, so at most two streamed blocks occupy the
GPU), and after it ran the block points at its host copies again and the GPU copies go back to the
allocator.

Two ways to attach, one mechanism:

- ``StreamedBlock`` wraps a transformer block in its ``ModuleList``. The wrapped block is the one
  regional compilation compiles, so the copies stay outside the compiled graph (a forward hook on
  the block itself would be traced into it).
- ``hook_layers`` uses forward hooks, for the text encoder, which is not compiled and whose model
  code reads attributes of its layers (a wrapper would hide them).

On a CPU the same bookkeeping runs and the "copies" are clones, so the tests exercise it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _Slot:
    """One tensor of a streamed block: where it is registered and its host copy."""

    __slots__ = ("host", "module", "name", "parameter")

    def __init__(self, module: nn.Module, name: str, parameter: bool, host: torch.Tensor) -> None:
        self.module = module
        self.name = name
        self.parameter = parameter
        self.host = host

    def point(self, tensor: torch.Tensor) -> None:
        if self.parameter:
            param = self.module._parameters[self.name]
            if param is not None:
                param.data = tensor
        else:
            self.module._buffers[self.name] = tensor


class BlockStreamer:
    """Copies streamed blocks in just before they run, one block ahead, and counts the bytes."""

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None  # type: ignore[no-untyped-call]
        self.slots: list[list[_Slot]] = [self._host_copies(block) for block in blocks]
        self.block_bytes = [sum(s.host.numel() * s.host.element_size() for s in b)
                            for b in self.slots]  # fmt: skip
        self.pending: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self.moved_bytes = 0

    def _host_copies(self, block: nn.Module) -> list[_Slot]:
        slots = []
        for module in block.modules():
            for name, param in module._parameters.items():
                if param is not None:
                    host = self._pinned(param.data)
                    param.data = host
                    slots.append(_Slot(module, name, True, host))
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    host = self._pinned(buffer)
                    module._buffers[name] = host
                    slots.append(_Slot(module, name, False, host))
        return slots

    def _pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor.detach().to("cpu")
        return host.pin_memory() if self.cuda else host

    def prefetch(self, index: int) -> None:
        """Start copying block ``index`` to the device (on the side stream on a GPU)."""
        if index in self.pending:
            return
        slots = self.slots[index]
        if self.stream is not None:
            with torch.cuda.stream(self.stream):
                copies = [s.host.to(self.device, non_blocking=True) for s in slots]
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # unannotated
                event.record(self.stream)
            self.pending[index] = (copies, event)
        else:
            self.pending[index] = ([s.host.clone() for s in slots], None)
        self.moved_bytes += self.block_bytes[index]

    def enter(self, index: int) -> None:
        """Block ``index`` is about to run: its weights on the device, the next one on its way."""
        self.prefetch(index)
        copies, event = self.pending.pop(index)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in copies:
                # The copies were made on the side stream; the allocator must not hand their
                # memory out again before the compute stream is done with them.
                tensor.record_stream(current)
        for slot, tensor in zip(self.slots[index], copies, strict=True):
            slot.point(tensor)
        self.prefetch((index + 1) % len(self.slots))

    def leave(self, index: int) -> None:
        for slot in self.slots[index]:
            slot.point(slot.host)

    @property
    def host_bytes(self) -> int:
        return sum(self.block_bytes)


class StreamedBlock(nn.Module):
    """A transformer block that is streamed: the copies around the call, the block untouched
    (regional compilation compiles the inner block)."""

    def __init__(self, block: nn.Module, streamer: BlockStreamer, index: int) -> None:
        super().__init__()
        self.block = block
        # Not a submodule: the streamer is shared by every wrapped block.
        self._streamer = (streamer,)
        self.index = index

    def forward(self, *args: object, **kwargs: object) -> object:
        streamer = self._streamer[0]
        streamer.enter(self.index)
        try:
            return self.block(*args, **kwargs)
        finally:
            streamer.leave(self.index)


def stream_blocks(
    blocks: nn.ModuleList, indices: Sequence[int], device: torch.device
) -> BlockStreamer | None:
    """Stream ``blocks[i]`` for each ``i`` in ``indices`` (ascending: the order they run in),
    wrapped in place; the caller moves the other blocks to ``device``."""
    if not indices:
        return None
    streamer = BlockStreamer([blocks[i] for i in indices], device)
    for position, index in enumerate(indices):
        blocks[index] = StreamedBlock(blocks[index], streamer, position)
    return streamer


def hook_layers(layers: Sequence[nn.Module], device: torch.device) -> BlockStreamer | None:
    """Stream ``layers`` through forward hooks (a text encoder's layers)."""
    if not layers:
        return None
    streamer = BlockStreamer(layers, device)
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(_enter_hook(streamer, index))
        layer.register_forward_hook(_leave_hook(streamer, index))
    return streamer


def _enter_hook(streamer: BlockStreamer, index: int) -> Callable[[nn.Module, object], None]:
    def hook(_module: nn.Module, _args: object) -> None:
        streamer.enter(index)

    return hook


def _leave_hook(streamer: BlockStreamer, index: int) -> Callable[[nn.Module, object, object], None]:
    def hook(_module: nn.Module, _args: object, _output: object) -> None:
        streamer.leave(index)

    return hook
