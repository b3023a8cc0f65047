"""``load(settings)``: start one process per GPU and return rank 0's facade."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import socket
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from engine.devices import EngineUnavailable
from engine.parallel.channels import PipeChannel, init_group
from engine.parallel.group import ParallelGenerator, attention_choice, follow, leave_group
from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

# Loading the pipeline (download, compile) on a follower may take this long.
FOLLOWER_START_TIMEOUT_S = 3600.0


def parse_gpus(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; empty -> ``[]`` (one GPU, no parallelism)."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    try:
        gpus = [int(p) for p in parts]
    except ValueError:
        raise EngineUnavailable(
            f"IMAGINE_GPUS must list GPU numbers like 0,1; got {text!r}"
        ) from None
    if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
        raise EngineUnavailable(f"IMAGINE_GPUS lists a GPU twice or a negative one: {text!r}")
    return gpus


def rank_devices(settings: EngineSettings, gpus: list[int]) -> list[str]:
    """The device of each rank: ``cuda:N`` per listed GPU, or ``cpu`` for a CPU dry run."""
    if settings.device.startswith("cpu"):
        return ["cpu"] * len(gpus)
    return [f"cuda:{g}" for g in gpus]


def _follower_main(
    rank: int,
    world: int,
    init_method: str,
    devices: list[str],
    settings: EngineSettings,
    conn: Connection,
) -> None:
    """A child process: join the group, load the pipeline on its GPU, follow rank 0."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s"
    )
    device = torch.device(devices[rank])
    init_group(rank, world, init_method, device)
    try:
        local = ImageGenerator.load(settings.model_copy(update={"device": str(device)}))
    except Exception as exc:
        logger.exception("rank %d could not load the pipeline", rank)
        conn.send(("failed", f"{exc.__class__.__name__}: {exc}"[:500]))
        return
    conn.send(("ready", attention_choice(local)))
    try:
        follow(local, PipeChannel([conn]), rank)
    except Exception:
        logger.exception("rank %d failed; leaving the group", rank)
        os._exit(1)  # rank 0 notices the closed pipe and continues alone
    leave_group(local)
    logging.shutdown()
    os._exit(0)  # nothing left to flush; NCCL's teardown is not waited for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(settings: EngineSettings, gpus: list[int] | None = None) -> ParallelGenerator:
    """Start one rank per GPU (this process is rank 0) and load the pipeline on each."""
    gpus = parse_gpus(settings.gpus) if gpus is None else gpus
    if len(gpus) != 2:
        raise EngineUnavailable(
            f"IMAGINE_GPUS lists {len(gpus)} GPUs; one image runs on exactly 2 (CFG-parallel). "
            "Run more GPUs as separate workers (docs/SCALE_OUT.md)."
        )
    devices = rank_devices(settings, gpus)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = []
    conns: list[Connection] = []
    for rank in range(1, len(devices)):
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_follower_main,
            args=(rank, len(devices), init_method, devices, settings, theirs),
            name=f"imagine-rank{rank}",
        )
        process.start()
        theirs.close()
        processes.append(process)
        conns.append(ours)
    atexit.register(_terminate, processes)
    try:
        init_group(0, len(devices), init_method, torch.device(devices[0]))
        local = ImageGenerator.load(settings.model_copy(update={"device": devices[0]}))
        channel = PipeChannel(conns)
        _await_followers(conns, processes, attention_choice(local))
    except BaseException:
        _terminate(processes)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    generator = ParallelGenerator(local, channel, devices=devices, processes=processes)
    if devices[0].startswith("cuda") and local.fast_available:
        try:  # fast mode has no CFG to split: Ulysses in CUDA graphs instead
            generator.configure("fast-sequence")
        except BaseException:
            generator.close()
            raise
    logger.info("one image across %s: %s", ", ".join(devices), generator.info().parallel)
    return generator


def _await_followers(
    conns: list[Connection],
    processes: list[multiprocessing.process.BaseProcess],
    attention: str | None,
) -> None:
    for rank, (conn, process) in enumerate(zip(conns, processes, strict=True), start=1):
        if not conn.poll(FOLLOWER_START_TIMEOUT_S):
            raise EngineUnavailable(f"GPU rank {rank} did not finish loading in time")
        try:
            status, detail = conn.recv()
        except EOFError:
            raise EngineUnavailable(
                f"GPU rank {rank} exited while loading (exit code {process.exitcode})"
            ) from None
        if status != "ready":
            raise EngineUnavailable(f"GPU rank {rank} could not load the model: {detail}")
        if attention is not None and detail != attention:
            # Every rank uses rank 0's kernel, so the image matches the one-GPU image.
            logger.info("rank %d timed attention %s; using rank 0's %s", rank, detail, attention)
            conn.send(("attention", attention))


def _terminate(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(10)
