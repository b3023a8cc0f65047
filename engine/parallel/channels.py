"""How rank 0 reaches its followers, and how the ranks join one process group."""

from __future__ import annotations

import datetime as dt
import os
from multiprocessing.connection import Connection
from typing import Protocol, TypeAlias

import torch
import torch.distributed as dist

# NVLink multicast stays off (a program using it can take a shared host's GPUs down).
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
    os.environ.setdefault(_name, _value)

# A follower waits for rank 0's tensors while rank 0 may still be compiling or decoding.
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=30)


# A tuple whose first item names it: ("generate", request, plan, how), ("stop", reason),
# ("setup", name, args), ("attention", backend) or ("exit",). Pickled as it is.
Message: TypeAlias = tuple[object, ...]


class Channel(Protocol):
    """Rank 0 -> every follower, in order: requests and each step's stop decision."""

    def send(self, message: Message) -> None: ...

    def recv(self) -> Message: ...

    def close(self) -> None: ...


class PipeChannel:
    """Pipes to follower processes this process started (``load``)."""

    def __init__(self, conns: list[Connection]) -> None:
        self.conns = conns

    def send(self, message: Message) -> None:
        for conn in self.conns:
            conn.send(message)

    def recv(self) -> Message:
        return _message(self.conns[0].recv())

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


class GlooChannel:
    """A gloo group over ranks that were started together (``torchrun``)."""

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)

    def send(self, message: Message) -> None:
        dist.broadcast_object_list([message], src=0, group=self.group)

    def recv(self) -> Message:
        box: list[object] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return _message(box[0])

    def close(self) -> None:
        pass


def _message(received: object) -> Message:
    if not isinstance(received, tuple):
        raise RuntimeError(f"expected a message tuple from rank 0, got {type(received).__name__}")
    return received


def init_group(rank: int, world: int, init_method: str, device: torch.device) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
