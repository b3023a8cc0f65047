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
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Weights(Protocol):
    """A module as far as its weights go: an ``nn.Module``, or a pipeline's transformer as
    ``engine.diffusers_types`` sees it."""

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def buffers(self) -> Iterator[torch.Tensor]: ...


def module_bytes(module: Weights) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class HostArena:
    """One host buffer holding many tensors, page-locked as a whole.

    PyTorch's pinned-memory allocator rounds each allocation up to a power of two (a 75 MiB
    weight takes 128 MiB, a 130 MiB one 256 MiB), so pinning tensor by tensor holds 1.6-2x the
    RAM the memory plan counts. One plain buffer registered with ``cudaHostRegister`` (what
    PyTorch's own checkpoint stager does) holds exactly the bytes, and copies from it are still
    asynchronous DMA.
    """

    ALIGN = 256

    def __init__(self, tensors: Sequence[torch.Tensor], *, pin: bool) -> None:
        offsets, total = [], 0
        for tensor in tensors:
            offsets.append(total)
            size = tensor.numel() * tensor.element_size()
            total += -(-size // self.ALIGN) * self.ALIGN
        self.buffer = torch.empty(max(total, self.ALIGN), dtype=torch.uint8)
        self.nbytes = total
        self._registered = False
        if pin and total:
            _register(self.buffer)
            self._registered = True
        self.views: list[torch.Tensor] = []
        for tensor, offset in zip(tensors, offsets, strict=True):
            size = tensor.numel() * tensor.element_size()
            view = self.buffer[offset : offset + size].view(tensor.dtype).view(tensor.shape)
            self.views.append(view)

    def __del__(self) -> None:
        if self._registered:
            cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]  # unannotated in torch
            cudart.cudaHostUnregister(self.buffer.data_ptr())
            self._registered = False


def _register(buffer: torch.Tensor) -> None:
    cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]  # unannotated in torch
    code = int(cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0))
    if code != 0:
        raise RuntimeError(f"page-locking {buffer.numel() / 2**30:.1f} GiB of RAM failed ({code})")


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

    def __init__(
        self, blocks: Sequence[nn.Module], device: torch.device, *, wrap: bool = True
    ) -> None:
        self.device = device
        # After the last block, fetch the first for the next forward (a transformer's next
        # step follows at once); a text encoder runs once per prompt, so it does not.
        self.wrap = wrap
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None  # type: ignore[no-untyped-call]
        self.slots: list[list[_Slot]] = self._host_copies(blocks)
        self.block_bytes = [sum(s.host.numel() * s.host.element_size() for s in b)
                            for b in self.slots]  # fmt: skip
        self.pending: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        # When each block's compute finished on the GPU (recorded on the compute stream).
        self.done: dict[int, torch.cuda.Event] = {}
        self.moved_bytes = 0

    def _host_copies(self, blocks: Sequence[nn.Module]) -> list[list[_Slot]]:
        """Every block's tensors moved into one pinned arena; the blocks point at its views."""
        found: list[list[tuple[nn.Module, str, bool, torch.Tensor]]] = []
        for block in blocks:
            entries = []
            for module in block.modules():
                for name, param in module._parameters.items():
                    if param is not None:
                        entries.append((module, name, True, param.data))
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        entries.append((module, name, False, buffer))
            found.append(entries)
        tensors = [entry[3] for entries in found for entry in entries]
        self.arena = HostArena(tensors, pin=self.cuda)
        views = iter(self.arena.views)
        slots = []
        for entries in found:
            block_slots = []
            for module, name, parameter, tensor in entries:
                host = next(views)
                host.copy_(tensor.detach())
                slot = _Slot(module, name, parameter, host)
                slot.point(host)
                block_slots.append(slot)
            slots.append(block_slots)
        return slots

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
        # The CPU queues work far ahead of the GPU (a compiled forward is queued in
        # milliseconds): without this wait every streamed block's copy could be on the GPU at
        # once. Waiting until the block before this one has run keeps it to about three.
        finished = self.done.pop((index - 1) % len(self.slots), None)
        if finished is not None:
            finished.synchronize()
        following = index + 1
        if following < len(self.slots) or self.wrap:
            self.prefetch(following % len(self.slots))

    def leave(self, index: int) -> None:
        for slot in self.slots[index]:
            slot.point(slot.host)
        if self.cuda:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # unannotated
            event.record(torch.cuda.current_stream(self.device))
            self.done[index] = event

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
    streamer = BlockStreamer(layers, device, wrap=False)
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
