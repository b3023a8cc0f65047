"""Rank 0's ``ImageGenerator`` facade and the followers' loop (see ``engine.parallel``)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections.abc import Callable, Sequence

import torch.distributed as dist

from engine.contract import FailureKind, JobFailed, JobRequest, JobResult, Mode
from engine.generator import UNWATCHED, Generator, GeneratorInfo, JobControl, Plan
from engine.parallel.cfg import CfgSplit
from engine.parallel.channels import Channel, Message
from engine.parallel.sequence import SETUPS, fast_sequence
from engine.pipeline import ImageGenerator

logger = logging.getLogger(__name__)


class ParallelGenerator(Generator):
    """Rank 0: a ``Generator`` of text-to-image that runs each image on both GPUs (CFG images
    CFG-parallel, fast images sequence-parallel once ``fast-sequence`` is set up). ``local`` is
    rank 0's own ``ImageGenerator``; everything else is asked of it by name."""

    def __init__(
        self,
        local: ImageGenerator,
        channel: Channel,
        *,
        devices: list[str],
        processes: Sequence[multiprocessing.process.BaseProcess] | None = None,
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

    def configure(self, name: str, *args: object) -> None:
        """Run one of ``SETUPS`` on every rank (rank 0 last)."""
        self.channel.send(("setup", name, args))
        SETUPS[name](self.local, *args)
        if name == "sequence":
            self.sequence = True

    def tasks(self) -> tuple[str, ...]:
        return self.local.tasks()

    def plan(self, request: JobRequest) -> Plan:
        return self.local.plan(request)

    def resident_models(self) -> tuple[str, ...]:
        return self.local.resident_models()

    def info(self) -> GeneratorInfo:
        if self.broken:
            parallel = "none: " + self.broken
        else:
            fast = " + ulysses for fast" if fast_sequence(self.local) is not None else ""
            parallel = "cfg" + fast
        return dataclasses.replace(self.local.info(), gpus=tuple(self.devices), parallel=parallel)

    def free_memory(self) -> None:
        self.local.free_memory()

    def warmup(self) -> None:
        """One short image per path, the CFG one on every rank (each compiles its own); with
        Ulysses, fast mode at two more prompt lengths (see ``prompt_lengths``)."""
        for mode in [Mode.STANDARD] + ([Mode.FAST] if self.local.fast_available else []):
            steps = self.local.settings.lightning_steps if mode == Mode.FAST else 2
            self.warm_once(self._warmup_request(WARMUP_PROMPT, mode), steps)
        if self.local.fast_available and fast_sequence(self.local) is not None:
            for prompt in prompt_lengths(self._tokens, WARMUP_PROMPT):
                self.warm_once(self._warmup_request(prompt, Mode.FAST), 1)

    @staticmethod
    def _warmup_request(prompt: str, mode: Mode) -> JobRequest:
        request = JobRequest(job_id=f"warmup-{mode}", user_id=0, prompt=prompt, seed=0)
        return dataclasses.replace(request, mode=mode)

    def _tokens(self, prompt: str) -> int:
        """The length of ``prompt`` as the engine sends it (style, suffix) in tokens; the text
        encoder's template adds the same number to every prompt."""
        text = self.local.plan(self._warmup_request(prompt, Mode.FAST)).prompt
        return len(self.local.pipe.tokenizer(text)["input_ids"])

    def warm_once(self, request: JobRequest, steps: int) -> None:
        """One image of ``steps`` steps shared the way a job's would be (every rank compiles
        its own; warm-up and benchmarks)."""
        plan = dataclasses.replace(self.local.plan(request), steps=steps)
        self.generate(request, plan=plan)

    def generate(
        self, request: JobRequest, control: JobControl = UNWATCHED, plan: Plan | None = None
    ) -> JobResult:
        """Render one image; a CFG image on two GPUs. Bad input fails here, before any rank
        is told about it."""
        if plan is None:
            plan = self.local.plan(request)
        how = self._how(plan)
        if how is None:
            return self.local.generate(request, control, plan)
        try:
            self.channel.send(("generate", request, plan, how))
        except Exception as exc:
            self._give_up(f"followers unreachable ({exc.__class__.__name__})")
            return self.local.generate(request, control, plan)

        def agree(reason: FailureKind | None) -> FailureKind | None:
            self.channel.send(("stop", reason))
            return reason

        arrange(self.local, self.split, how)
        self.local.agree_stop = agree
        try:
            result = self.local.generate(request, control, plan)
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

    def _how(self, plan: Plan) -> str | None:
        """How the ranks share this image: "cfg" (one CFG branch each), "seq" (fast mode's
        forwards split along the sequence), "all" (every forward split: bench only), or None
        (rank 0 alone)."""
        if self.broken:
            return None
        if self.sequence:
            return "all"
        if plan.cfg:
            return "cfg"
        if fast_sequence(self.local) is not None:
            return "seq"
        return None

    def _give_up(self, why: str) -> None:
        logger.error("multi-GPU group given up (%s): rank 0 continues alone", why)
        self.broken = why
        sequence = fast_sequence(self.local)
        if sequence is not None:
            try:
                sequence.off()
            except Exception:
                logger.exception("could not switch sequence parallelism off")
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
        leave_group(self.local)


def leave_group(local: ImageGenerator) -> None:
    """Leave the process group at shutdown.

    Seen on two H200s (run 7): once NCCL collectives had been captured in CUDA graphs, the
    ranks did not get past shutdown. Then the graphs are dropped and the group is left to the
    process's exit instead of being destroyed.
    """
    if not dist.is_initialized():
        return
    sequence = fast_sequence(local)
    if sequence is not None and sequence.graphs.captures:
        sequence.graphs.clear()
        logger.info("process group left to the process's exit (CUDA graphs used it)")
        return
    dist.destroy_process_group()


WARMUP_PROMPT = "warm up"


def prompt_lengths(tokens: Callable[[str], int], base: str, tries: int = 16) -> list[str]:
    """Two prompts one and two tokens longer than ``base``, for the warm-up.

    With Ulysses the compiled code around the attention takes the text length as fixed until
    it has seen it change (then it compiles a dynamic variant), and diffusers' sharding guards
    on the length's parity (``size % 2``, to cut it unevenly). Two gloo ranks of the CPU, tiny
    model, text lengths in order (``TORCH_LOGS=recompiles`` names those guards): 15 compiled
    6 graphs, 16 1, 17 4, then 21, 33, 40 and 64 none. On two H200s the first fast image of a
    new length spent 4.0 s of its 5.3 s compiling and capturing (run12), so the warm-up runs
    three lengths in a row, and a user's new length only captures its CUDA graph.
    """
    wanted = {tokens(base) + 1: "", tokens(base) + 2: ""}
    for words in range(1, tries + 1):
        prompt = base + " a" * words
        length = tokens(prompt)
        if wanted.get(length) == "":
            wanted[length] = prompt
    found = [prompt for prompt in wanted.values() if prompt]
    if len(found) < len(wanted):
        logger.warning("warm-up: no prompt of every wanted length found; a new length may compile")
    return found


# ---------------------------------------------------------------------------- followers
def follow(local: ImageGenerator, channel: Channel, rank: int) -> None:
    """Ranks > 0: run rank 0's CFG images in lockstep until told to exit (or rank 0 is
    gone)."""
    split = CfgSplit(local.pipe.transformer, rank=rank)

    def agree(_own: FailureKind | None) -> FailureKind | None:
        match channel.recv():
            case ("stop", (FailureKind() | None) as reason):
                return reason
            case message:
                raise RuntimeError(f"follower expected a stop decision, got {_kind(message)!r}")

    while True:
        try:
            message = channel.recv()
        except (EOFError, OSError, RuntimeError):
            logger.info("rank %d: rank 0 is gone; exiting", rank)
            return
        match message:
            case ("exit", *_):
                return
            case ("attention", str() as backend):
                local.pipe.transformer.set_attention_backend(backend)
            case ("setup", str() as name, tuple() as args):
                SETUPS[name](local, *args)
            case ("generate", JobRequest() as request, Plan() as plan, str() as how):
                arrange(local, split, how)
                local.agree_stop = agree
                try:
                    local.generate(request, plan=plan)
                except JobFailed as exc:  # cancel or deadline, decided by rank 0 for every rank
                    logger.info("rank %d: job %s stopped (%s)", rank, request.job_id, exc.kind)
                finally:
                    split.end()
                    local.agree_stop = None
            case _:
                raise RuntimeError(f"rank {rank}: unknown message {_kind(message)!r}")


def _kind(message: Message) -> object:
    """What a message says it is (its first item), for an error."""
    return message[0] if message else None


def attention_choice(generator: ImageGenerator) -> str | None:
    for name in generator.optimizations:
        if name.startswith("attention:"):
            return name.split(":", 1)[1]
    return None


def arrange(local: ImageGenerator, split: CfgSplit, how: str) -> None:
    """Set this rank up for one image shared the ``how`` way (see ``ParallelGenerator._how``)."""
    sequence = fast_sequence(local)
    if sequence is not None:
        sequence.on() if how == "seq" else sequence.off()
    if how == "cfg":
        split.begin()
