"""Two 20B transformers, one accelerator: keep both resident when they fit, else swap.

The text-to-image and the edit pipeline share their text encoder and VAE (``engine.edit.sharing``)
but each has its own ~41 GB bf16 transformer. On a card with room for both (an H200) both stay on
the GPU and nothing ever moves. Otherwise the idle transformer waits in pinned host memory and
``activate`` swaps it in when a job needs it: pinned buffers make the copies asynchronous DMA at
full PCIe / NVLink-C2C speed instead of pageable copies, and they are allocated once and reused,
so a swap allocates no host memory. The queue groups jobs by model so swaps stay rare.

On a CPU there is nothing to move (host and device are the same memory): ``TransformerSwap`` then
only keeps the bookkeeping, which is what the CPU tests can check; pinning needs CUDA.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from engine.streaming import HostArena, StreamedBlock, Weights

logger = logging.getLogger(__name__)

# What a 1024² edit with three input images needs beyond the weights (activations, VAE tiles).
EDIT_ACTIVATIONS_GIB = 8.0


def choose_residency(
    device: torch.device, free_bytes: int | None, extra_bytes: int
) -> tuple[bool, str]:
    """Whether a second transformer of ``extra_bytes`` can stay resident next to the first.

    ``free_bytes`` is the GPU's free memory with the text-to-image pipeline already loaded.
    """
    if device.type != "cuda" or free_bytes is None:
        return True, f"{device.type}: both transformers stay in main memory"
    need = extra_bytes + EDIT_ACTIVATIONS_GIB * 2**30
    free_gib, need_gib = free_bytes / 2**30, need / 2**30
    if free_bytes >= need:
        return True, f"{free_gib:.0f} GiB free >= {need_gib:.0f} GiB: both transformers resident"
    return False, (
        f"{free_gib:.0f} GiB free < {need_gib:.0f} GiB: the idle transformer waits in pinned "
        "host memory and is swapped in on demand"
    )


def forget_captured_graphs(transformer: Weights) -> int:
    """Drop the CUDA graphs captured on ``transformer`` (``engine.cudagraph``); returns how
    many graph wrappers were cleared.

    A captured graph replays the kernels on the *addresses* its weights had at capture. A swap
    moves the weights to host and back into new device memory, so a graph captured before it
    would read freed memory: after every swap the graphs are dropped and recaptured on the next
    forward (a few forwards' cost, far below the swap itself). Guarded: this module does not own
    ``engine.cudagraph`` and works whatever is (or is not) installed on the forward.
    """
    try:
        from engine.cudagraph import GraphedForward
    except ImportError:
        return 0
    wrappers = [getattr(transformer, "forward", None)]
    split = getattr(transformer, "_imagine_cfg_split", None)  # engine.parallel's CFG split
    if split is not None:
        wrappers.append(getattr(split, "_stock", None))
    cleared = 0
    for wrapper in wrappers:
        if isinstance(wrapper, GraphedForward):
            wrapper.clear()
            cleared += 1
    return cleared


class TransformerSwap:
    """Which of several transformers is on the accelerator, and the moves between them.

    Not thread-safe across generators by design: the GPU thread that runs jobs is the only
    caller of ``activate`` (each generator activates its own transformer before its job);
    ``resident()`` may be read from anywhere (``/status``).
    """

    def __init__(self, device: torch.device, *, keep_all: bool) -> None:
        self.device = device
        self.keep_all = keep_all
        self.host = torch.device("cpu")
        self._pin = device.type == "cuda" and torch.cuda.is_available()
        self._modules: dict[str, Weights] = {}
        self._on_device: set[str] = set()
        # One host tensor per parameter/buffer, allocated (pinned) once and reused by every swap.
        self._host_copies: dict[str, dict[str, torch.Tensor]] = {}
        self._arenas: dict[str, HostArena] = {}
        self._lock = threading.Lock()
        self.swaps = 0
        self.last_swap_s = 0.0

    def add(self, name: str, module: Weights, *, on_device: bool) -> None:
        """Register a transformer; ``on_device`` says where it is now (it is not moved).

        Every host copy is allocated here, at start-up: pinning is slow (38 GiB took ~41 s on
        an H200 host, against 0.75 s for the copy itself), and the first edit must not pay it.
        """
        self._modules[name] = module
        if on_device:
            self._on_device.add(name)
            if self._pin and not self.keep_all:
                started = time.perf_counter()
                self._reserve_host(name)
                logger.info("pinned host memory for %s in %.1fs", name,
                            time.perf_counter() - started)  # fmt: skip
        else:
            self._to_host(name)  # pin it now: the first swap then copies at full speed

    def resident(self) -> tuple[str, ...]:
        """The names of the transformers on the accelerator now, in registration order."""
        with self._lock:
            return tuple(name for name in self._modules if name in self._on_device)

    def is_resident(self, name: str) -> bool:
        with self._lock:
            return name in self._on_device

    def activate(self, name: str) -> float:
        """Make ``name``'s transformer resident, moving the others to host when they can't
        stay; returns the seconds the swap took (0.0 when nothing moved)."""
        if name not in self._modules:
            raise KeyError(name)
        if name in self._on_device:
            return 0.0
        started = time.perf_counter()
        if not self.keep_all:
            for other in [n for n in self._modules if n in self._on_device and n != name]:
                self._to_host(other)
        self._to_device(name)
        if self._pin:
            torch.cuda.synchronize(self.device)
        for module in self._modules.values():  # graphs captured before the move are stale
            forget_captured_graphs(module)
        elapsed = time.perf_counter() - started
        self.swaps += 1
        self.last_swap_s = elapsed
        logger.info("transformer %s swapped in (%.2fs); resident: %s", name, elapsed,
                    ", ".join(self.resident()))  # fmt: skip
        return elapsed

    # ----------------------------------------------------------------- moves
    def _tensors(self, module: Weights) -> dict[str, tuple[torch.nn.Module, str, bool]]:
        """Every parameter and buffer as (owner module, attribute name, is_parameter), except
        those of streamed blocks (``engine.streaming``): they stay on the host and stream."""
        found: dict[str, tuple[torch.nn.Module, str, bool]] = {}
        streamed = {
            id(inner)
            for _, sub in module.named_modules()
            if isinstance(sub, StreamedBlock)
            for inner in sub.modules()
        }
        for prefix, sub in module.named_modules():
            if id(sub) in streamed:
                continue
            for key, parameter in sub._parameters.items():
                if parameter is not None:
                    found[f"{prefix}.{key}"] = (sub, key, True)
            for key, buffer in sub._buffers.items():
                if buffer is not None:
                    found[f"{prefix}.{key}"] = (sub, key, False)
        return found

    def _reserve_host(self, name: str) -> dict[str, torch.Tensor]:
        """A host tensor for each of ``name``'s tensors, matching shape and dtype; nothing is
        copied. All of them are views of one page-locked arena (``engine.streaming.HostArena``:
        pinning tensor by tensor would hold up to twice the RAM), made again only when the
        module's tensors changed (linears replaced by FP8 ones)."""
        copies = self._host_copies.setdefault(name, {})
        current: dict[str, torch.Tensor] = {}
        for key, (owner, attr, is_param) in self._tensors(self._modules[name]).items():
            tensor = owner._parameters[attr] if is_param else owner._buffers[attr]
            assert tensor is not None
            current[key] = tensor
        if copies.keys() == current.keys() and all(
            copies[k].shape == t.shape and copies[k].dtype == t.dtype for k, t in current.items()
        ):
            return copies
        arena = HostArena(list(current.values()), pin=self._pin)
        self._arenas[name] = arena
        copies.clear()
        copies.update(zip(current.keys(), arena.views, strict=True))
        return copies

    def _to_host(self, name: str) -> None:
        copies = self._reserve_host(name)
        for key, (owner, attr, is_param) in self._tensors(self._modules[name]).items():
            tensor = owner._parameters[attr] if is_param else owner._buffers[attr]
            assert tensor is not None
            host = copies[key]
            if host.data_ptr() != tensor.data_ptr():
                # Weights may have changed in place since the last swap (a merged LoRA), so
                # every swap copies; the copy is asynchronous from pinned memory.
                host.copy_(tensor.detach(), non_blocking=self._pin)
            self._assign(owner, attr, is_param, host)
        if self._pin:
            torch.cuda.synchronize(self.device)
        with self._lock:
            self._on_device.discard(name)

    def _to_device(self, name: str) -> None:
        module = self._modules[name]
        for owner, attr, is_param in self._tensors(module).values():
            tensor = owner._parameters[attr] if is_param else owner._buffers[attr]
            assert tensor is not None
            self._assign(owner, attr, is_param, tensor.to(self.device, non_blocking=self._pin))
        with self._lock:
            self._on_device.add(name)

    @staticmethod
    def _assign(owner: torch.nn.Module, attr: str, is_param: bool, value: torch.Tensor) -> None:
        if is_param:
            param = owner._parameters[attr]
            assert param is not None
            param.data = value  # the Parameter object stays: optimizers/hooks keep their refs
        else:
            owner._buffers[attr] = value

    def host_tensors(self, name: str) -> list[torch.Tensor]:
        """The host copies of ``name``'s tensors (tests check they are pinned on CUDA)."""
        return list(self._host_copies.get(name, {}).values())
