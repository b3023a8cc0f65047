"""One image across the GPUs of one host: CFG-parallel (project issue 14).

With true CFG every denoising step runs the transformer twice, on the prompt and on the
negative prompt, and the two forwards are independent. With ``IMAGINE_GPUS=0,1`` the engine
runs them at the same time on two GPUs: rank 0 computes the conditional prediction, rank 1 the
unconditional one, and the two exchange their outputs once per step (two broadcasts of the
predicted velocity, under a megabyte at 1328²). Both ranks then run the same combination and
scheduler step on the same numbers, so their latents stay identical, and the image is the one a
single GPU makes with the same seed (bit for bit in eager mode; see docs/PERFORMANCE.md).

The rest of the system sees one engine: ``load(settings)`` returns a ``ParallelGenerator`` on
rank 0 with the interface of ``engine.pipeline.ImageGenerator`` (``generate``, ``warmup``,
``info``, ``free_memory``, ``plan``). It starts the other ranks itself, as child processes
that each load the pipeline on their own GPU and then follow rank 0's requests in lockstep.
Modes without CFG (fast) run on rank 0 alone. Tensors travel through torch.distributed (NCCL on
GPUs, gloo on the CPU); requests and each step's stop decision travel through a ``Channel``
(pipes to the child processes, or a gloo group when the ranks were started by ``torchrun``, as
``bench/multi_gpu.py`` does).

If a rank fails in the middle of an image the others cannot know where it stopped, so the group
is given up: the followers are ended and rank 0 goes on alone on its own GPU (logged, and shown
in ``info()``).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import torch
import torch.distributed as dist

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult
from engine.pipeline import EngineUnavailable, ImageGenerator, StepCallback, StopCheck
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

# NVLink multicast stays off (a program using it can take a shared host's GPUs down).
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
    os.environ.setdefault(_name, _value)

# A follower waits for rank 0's tensors while rank 0 may still be compiling or decoding.
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=30)
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


# ----------------------------------------------------------------------------- CFG split
class CfgSplit:
    """Replaces the transformer's forward so that the two CFG forwards of a step run on two
    ranks.

    The pipeline calls the transformer for the prompt, then for the negative prompt. Rank 0
    computes the first and hands it back at once; rank 1 hands back an empty tensor of the same
    shape. At the second call rank 1 computes, rank 0 hands back an empty tensor, and two
    broadcasts fill both empty tensors in place, before the pipeline reads either of them.
    Outside ``begin()``/``end()`` the stock forward runs untouched.
    """

    def __init__(self, transformer: Any, rank: int, group: Any = None) -> None:
        if rank > 1:
            raise ValueError("CFG-parallel uses ranks 0 and 1")
        self.transformer = transformer
        self.rank = rank
        self.group = group
        self.active = False
        self.calls = 0
        self._pending: torch.Tensor | None = None
        self._stock = transformer.forward
        transformer.forward = self.forward
        transformer._imagine_cfg_split = self

    def begin(self) -> None:
        self.active, self.calls, self._pending = True, 0, None

    def end(self) -> None:
        self.active, self._pending = False, None

    def _shape(self, kwargs: dict[str, Any]) -> tuple[torch.Size, torch.dtype, torch.device]:
        hidden = kwargs["hidden_states"]
        proj = self.transformer.proj_out
        return (*hidden.shape[:-1], proj.out_features), proj.weight.dtype, hidden.device

    def _compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        out = self._stock(*args, **{**kwargs, "return_dict": False})[0].contiguous()
        shape, _dtype, _device = self._shape(kwargs)
        if tuple(out.shape) != tuple(shape):  # the peer's buffer must match exactly
            raise RuntimeError(f"transformer output {tuple(out.shape)}, expected {shape}")
        return out

    def _empty(self, kwargs: dict[str, Any]) -> torch.Tensor:
        shape, dtype, device = self._shape(kwargs)
        return torch.empty(shape, dtype=dtype, device=device)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
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


# ------------------------------------------------------------------------------ channels
class Channel(Protocol):
    """Rank 0 -> every follower, in order: requests and each step's stop decision."""

    def send(self, message: Any) -> None: ...

    def recv(self) -> Any: ...

    def close(self) -> None: ...


class PipeChannel:
    """Pipes to follower processes this process started (``load``)."""

    def __init__(self, conns: list[Connection]) -> None:
        self.conns = conns

    def send(self, message: Any) -> None:
        for conn in self.conns:
            conn.send(message)

    def recv(self) -> Any:
        return self.conns[0].recv()

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


class GlooChannel:
    """A gloo group over ranks that were started together (``torchrun``)."""

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)

    def send(self, message: Any) -> None:
        dist.broadcast_object_list([message], src=0, group=self.group)

    def recv(self) -> Any:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------- rank 0's facade
class ParallelGenerator:
    """Rank 0: the ``ImageGenerator`` interface, running CFG images on two GPUs."""

    def __init__(
        self,
        local: ImageGenerator,
        channel: Channel,
        *,
        devices: list[str],
        processes: list[multiprocessing.process.BaseProcess] | None = None,
    ) -> None:
        self.local = local
        self.channel = channel
        self.devices = devices
        self.processes = processes or []
        self.split = CfgSplit(local.pipe.transformer, rank=0)
        self.broken: str | None = None
        self.parallel_images = 0
        # Sequence parallelism (bench/multi_gpu.py): every image on every rank, the sequence
        # split inside each forward.
        self.sequence = False

    def configure(self, name: str, *args: Any) -> None:
        """Run one of ``SETUPS`` on every rank (rank 0 last)."""
        self.channel.send(("setup", name, args))
        SETUPS[name](self.local, *args)
        if name == "sequence":
            self.sequence = True

    def __getattr__(self, name: str) -> Any:  # device, settings, pipe, fast_available, ...
        if name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)

    def plan(self, request: JobRequest) -> dict[str, Any]:
        return self.local.plan(request)

    def info(self) -> dict[str, object]:
        info = dict(self.local.info())
        info["gpus"] = list(self.devices)
        info["parallel"] = "none: " + self.broken if self.broken else "cfg"
        return info

    def free_memory(self) -> None:
        self.local.free_memory()

    def warmup(self) -> None:
        """One short image per path, the CFG one on every rank (each compiles its own)."""
        from engine.contract import Mode

        for mode in [Mode.STANDARD] + ([Mode.FAST] if self.local.fast_available else []):
            request = JobRequest(job_id=f"warmup-{mode}", user_id=0, prompt="warm up", seed=0)
            request = dataclasses.replace(request, mode=mode)
            steps = self.local.settings.lightning_steps if mode == Mode.FAST else 2
            self._warm_once(request, steps)

    def _warm_once(self, request: JobRequest, steps: int) -> None:
        plan = {**self.local.plan(request), "steps": steps}
        self.generate(request, plan=plan)

    def generate(
        self,
        request: JobRequest,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        plan: dict[str, Any] | None = None,
        **extra: Any,
    ) -> JobResult:
        """Render one image; a CFG image on two GPUs. Bad input fails here, before any rank
        is told about it."""
        if plan is None:
            plan = self.local.plan(request)
        cfg = plan["true_cfg_scale"] > 1 and bool(plan["negative_prompt"])
        if self.broken or not (cfg or self.sequence):
            return self.local.generate(request, on_step, should_stop, plan=plan, **extra)
        split = cfg and not self.sequence
        try:
            self.channel.send(("generate", request, plan, split))
        except Exception as exc:
            self._give_up(f"followers unreachable ({exc.__class__.__name__})")
            return self.local.generate(request, on_step, should_stop, plan=plan, **extra)

        def agree(reason: FailureKind | None) -> FailureKind | None:
            self.channel.send(("stop", reason))
            return reason

        if split:
            self.split.begin()
        self.local.agree_stop = agree
        try:
            result = self.local.generate(request, on_step, should_stop, plan=plan, **extra)
        except JobFailed as exc:
            if exc.kind == FailureKind.OOM:  # raised mid-step: the ranks are out of step
                self._give_up("out of memory during a parallel image")
            raise
        except Exception as exc:
            self._give_up(f"{exc.__class__.__name__} during a parallel image")
            raise
        finally:
            self.split.end()
            self.local.agree_stop = None
        self.parallel_images += 1
        return result

    def _give_up(self, why: str) -> None:
        logger.error("multi-GPU group given up (%s): rank 0 continues alone", why)
        self.broken = why
        self._end_followers()

    def _end_followers(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
            process.join(10)
        self.channel.close()

    def close(self) -> None:
        """Tell the followers to exit and wait for them."""
        if not self.broken:
            try:
                self.channel.send(("exit",))
            except Exception:  # already gone
                logger.info("followers already gone at close")
        for process in self.processes:
            process.join(30)
        self._end_followers()
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- followers
def follow(local: ImageGenerator, channel: Channel, rank: int) -> None:
    """Ranks > 0: run rank 0's CFG images in lockstep until told to exit (or rank 0 is
    gone)."""
    split = CfgSplit(local.pipe.transformer, rank=rank)

    def agree(_own: FailureKind | None) -> FailureKind | None:
        kind, reason = channel.recv()
        if kind != "stop":
            raise RuntimeError(f"follower expected a stop decision, got {kind!r}")
        return reason

    while True:
        try:
            message = channel.recv()
        except (EOFError, OSError, RuntimeError):
            logger.info("rank %d: rank 0 is gone; exiting", rank)
            return
        kind = message[0]
        if kind == "exit":
            return
        if kind == "attention":
            local.pipe.transformer.set_attention_backend(message[1])
            continue
        if kind == "setup":
            SETUPS[message[1]](local, *message[2])
            continue
        if kind != "generate":
            raise RuntimeError(f"rank {rank}: unknown message {kind!r}")
        _, request, plan, split_cfg = message
        if split_cfg:
            split.begin()
        local.agree_stop = agree
        try:
            local.generate(request, plan=plan)
        except JobFailed as exc:  # cancel or deadline, decided by rank 0 for every rank
            logger.info("rank %d: job %s stopped (%s)", rank, request.job_id, exc.kind)
        finally:
            split.end()
            local.agree_stop = None


def attention_choice(generator: ImageGenerator) -> str | None:
    for name in generator.optimizations:
        if name.startswith("attention:"):
            return name.split(":", 1)[1]
    return None


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
    if dist.is_initialized():
        dist.destroy_process_group()


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
    processes, conns = [], []
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
    logger.info("one image across %s (CFG-parallel)", ", ".join(devices))
    return ParallelGenerator(local, channel, devices=devices, processes=processes)


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


# ------------------------------------------------------------------------- setups
def set_graphs(generator: ImageGenerator, enabled: bool) -> None:
    """Whole-forward CUDA graphs on or off (``engine.cudagraph``), beneath the CFG split."""
    from engine import cudagraph

    transformer = generator.pipe.transformer
    split = getattr(transformer, "_imagine_cfg_split", None)
    if split is not None:  # wrap the forward the split calls
        if not isinstance(split._stock, cudagraph.GraphedForward):
            split._stock = cudagraph.GraphedForward(split._stock)
        graphed = split._stock
    else:
        graphed = cudagraph.install(transformer)
    graphed.clear()  # graphs captured before a change of setup would replay the old one
    graphed.enabled = enabled


def enable_sequence_parallel(generator: ImageGenerator, ulysses_anything: bool = True) -> None:
    """Ulysses sequence parallelism over every rank (diffusers' context parallelism).

    The image at 1328² has 6889 tokens, which does not split evenly, hence diffusers'
    ``ulysses_anything``; it breaks the compiled graph into pieces, so the blocks are compiled
    again without ``fullgraph``.
    """
    from diffusers import ContextParallelConfig

    from engine import optimize

    transformer = generator.pipe.transformer
    compiled = "compile" in generator.optimizations
    if compiled:
        optimize.uncompile_transformer(transformer)
        torch._dynamo.reset()
    config = ContextParallelConfig(
        ulysses_degree=dist.get_world_size(), ulysses_anything=ulysses_anything
    )
    transformer.enable_parallelism(config=config)
    if compiled:
        optimize.compile_transformer(transformer, fullgraph=False)


SETUPS: dict[str, Callable[..., None]] = {
    "graphs": set_graphs,
    "sequence": enable_sequence_parallel,
}
