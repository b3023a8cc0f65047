"""One image on two GPUs against stock diffusers on one (project issue 14).

Started with one process per GPU; every rank builds the full-size models with the same random
weights (as ``bench/gpu.py`` does), rank 0 times, the others follow rank 0 through
``engine.parallel`` exactly as a deployment's follower ranks do:

    torchrun --nproc-per-node 2 bench/multi_gpu.py --out bench/results --compile-cache /tmp/cc
    torchrun --standalone --nproc-per-node 2 bench/multi_gpu.py --tiny   # the CPU (gloo)

Cases (``--cases``; rank 0 records one JSON line each, card and versions on every line):
``stock`` quality 1328² (50 steps, true CFG) and 8 steps on one GPU (``stock-fast``: 8 steps
only); ``one`` the engine (FP8 and compile unless told otherwise) on one GPU, quality and fast
at 1328² (``one-fast``: fast only); ``anomaly`` standard/quality/standard at 1024²;
``breakdown`` one forward's GPU time by kernel kind; ``cfg`` quality on two GPUs
(CFG-parallel) with the largest pixel difference to the one-GPU image; ``product`` what
``IMAGINE_GPUS=0,1`` runs (CFG-parallel, and fast mode as Ulysses in CUDA graphs), including
a prompt of a new length; the experiments ``graphs`` (whole-forward CUDA graphs) and
``sequence`` (every image Ulysses-split; not together with ``product``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench import gpu  # noqa: E402  (sets the offline environment first)

logger = logging.getLogger("bench.multi")

# "graphs" and "sequence" (every image Ulysses-split) are experiments of run 5 and 6; ask for
# them by name, without "product".
DEFAULT_CASES = "stock,one,anomaly,breakdown,cfg,product"


def card_info(device: torch.device, world: int) -> dict[str, Any]:
    info = gpu.environment(device)
    info["world"] = world
    if device.type == "cuda":
        info["nccl"] = ".".join(str(n) for n in torch.cuda.nccl.version())
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.split()[0]
    return info


def pixel_difference(a: bytes, b: bytes) -> dict[str, Any]:
    x, y = gpu.png_pixels(a), gpu.png_pixels(b)
    diff = abs(x - y)
    return {
        "max_pixel_diff": int(diff.max()),
        "pixels_differing": int((diff.max(axis=-1) > 0).sum()),
        "rel_err": round(gpu.image_error(a, b), 6),
    }


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "frames": int(counters["stats"].get("calls_captured", 0)),
        "recompiles": sum(int(v) for v in counters["recompiles"].values())
        if "recompiles" in counters
        else 0,
    }


def timed_image(
    record: gpu.Recorder,
    generator: Any,
    local: Any,
    device: torch.device,
    case: str,
    mode: str,
    side: int,
    warm_steps: int | None,
    prompt: str | None = None,
    **extra: Any,
) -> bytes:
    """A warm-up image (same mode and size; ``warm_steps`` 0: none) then the timed one,
    through ``generate``."""
    local.max_side = side  # IMAGINE_MAX_SIDE: 1:1 at exactly side x side
    request = gpu.engine_request(mode)
    if prompt is not None:
        request = dataclasses.replace(request, prompt=prompt)
    plan = generator.plan(request)
    if plan.width != side:
        raise RuntimeError(f"engine planned {plan.size} for {side}")
    before = dynamo_counts()
    if warm_steps != 0:
        generator.warm_once(request, warm_steps or plan.steps)
    out: dict[str, Any] = {}
    with gpu.peak_memory(device, out):
        result = generator.generate(request)
    after = dynamo_counts()
    if getattr(generator, "broken", None):  # the group was given up: rank 0 ran it alone
        extra["broken"] = generator.broken
    record(
        case,
        mode=mode,
        size=f"{side}x{side}",
        steps=result.steps,
        true_cfg=result.true_cfg_scale > 1,
        **out,
        run_s=round(result.run_s, 4),
        per_step_s=round(result.run_s / result.steps, 4),
        new_dynamo_graphs=after["graphs"] - before["graphs"],
        recompiles=after["recompiles"] - before["recompiles"],
        **extra,
    )
    return result.image.png


def timed_warmup(record: gpu.Recorder, engine: Any, device: torch.device) -> None:
    started = time.perf_counter()
    engine.warmup()
    gpu.sync(device)
    record("warmup_2gpu", seconds=round(time.perf_counter() - started, 2))


KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90")),
    ("fused elementwise (triton)", ("triton",)),
    ("communication", ("nccl",)),
)


def forward_breakdown(
    record: gpu.Recorder, local: Any, inputs: dict, device: torch.device, side: int
) -> None:
    """Where one compiled forward's GPU time goes, by kernel kind (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    local._set_mode(False)
    transformer = local.pipe.transformer
    with torch.inference_mode():
        transformer(**inputs)
        gpu.sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            transformer(**inputs)
            gpu.sync(device)
    kinds: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        micros = float(getattr(event, "self_device_time_total", 0) or 0)
        if micros <= 0:
            continue
        name = event.key.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(w in name for w in keys)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + micros / 1000
        kernels.append((micros / 1000, event.key[:90], event.count))
    kernels.sort(reverse=True)
    record(
        "forward_breakdown",
        size=f"{side}x{side}",
        gpu_ms=round(sum(kinds.values()), 2),
        ms_by_kind={k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        top_kernels=[[round(ms, 2), name, count] for ms, name, count in kernels[:15]],
    )


def load_tiny(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(path, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    gpu.add_common_arguments(parser, workdir_help="shared by the ranks of one host")
    parser.add_argument("--bf16", action="store_true", help="no FP8")
    parser.add_argument(
        "--cases",
        default=None,
        help="comma list of: stock, stock-fast, one, one-fast, anomaly, breakdown, cfg, "
        "graphs, product, sequence",
    )
    args = parser.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{rank} %(name)s: %(message)s",
        stream=sys.stdout,
    )
    selected = set((args.cases or DEFAULT_CASES).split(","))

    def want(name: str) -> bool:
        return name in selected

    from engine import parallel

    cuda = torch.cuda.is_available() and not args.tiny
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    parallel.init_group(rank, world, "env://", device)
    channel = parallel.GlooChannel()
    big, small = (64, 48) if args.tiny else (1328, 1024)
    env = card_info(device, world)
    env["run"] = os.environ.get("BENCH_RUN_ID") or env["run"]
    path = Path(args.out) / f"{env['run']}-{'tiny-' if args.tiny else ''}multi.jsonl"
    record = gpu.Recorder(
        path if rank == 0 else Path(tempfile.mkdtemp()) / "rank.jsonl",
        {**env, "rank": rank},
    )
    if rank == 0:
        record("env", argv=sys.argv[1:])
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "qwen-multi")
    rankdir = workdir / f"rank{rank}"
    rankdir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    if args.tiny:  # one copy on disk (transformers saves on rank 0 only), loaded by every rank
        if rank == 0:
            gpu.build_tiny(device, dtype, workdir)
        dist.barrier(group=channel.group)
        pipe = load_tiny(workdir / "tiny", device, dtype)
    else:
        pipe = gpu.build_full_pipeline(device, dtype, rankdir)
    gpu.sync(device)
    record("build", seconds=round(time.perf_counter() - started, 2))

    if rank == 0:  # stock diffusers on one GPU; the others wait
        guarded = gpu.guarded(record, "stock")
        if want("stock"):
            guarded(lambda: gpu.run_stock(record, pipe, device, "stock_quality", big, 50, cfg=True))
        if want("stock") or want("stock-fast"):
            guarded(lambda: gpu.run_stock(record, pipe, device, "stock_8steps", big, 8, cfg=False))
    dist.barrier(group=channel.group)

    # ---- the engine on every rank: one LoRA file (rank 0 writes it), same weights everywhere
    if args.tiny:
        lora_dir, lora_file = gpu.lora_for(record, pipe.transformer, workdir, True)
    else:
        if rank == 0:
            gpu.lora_for(record, pipe.transformer, workdir, False)
        dist.barrier(group=channel.group)
        lora_dir, lora_file = workdir / "lora", gpu.LORA_FILE
    settings = gpu.engine_settings(args, workdir, lora_dir, lora_file, fp8=cuda and not args.bf16)
    local = gpu.engine_generator(
        pipe, settings, device, dtype, max_side=big if args.tiny else None, tiny=args.tiny
    )
    started = time.perf_counter()
    local._apply_speedups()
    local.warmup()
    gpu.sync(device)
    record(
        "engine_start",
        seconds=round(time.perf_counter() - started, 2),
        optimizations=local.optimizations,
    )
    if rank != 0:
        parallel.follow(local, channel, rank)
        return finish(0)

    channel.send(("attention", parallel.attention_choice(local) or "native"))
    devices = [f"cuda:{r}" if cuda else "cpu" for r in range(world)]
    engine = parallel.ParallelGenerator(local, channel, devices=devices)
    one: dict[str, bytes] = {}
    try:
        run_cases(record, engine, local, device, big, small, one, want, args.tiny)
    finally:
        engine.close()
    gpu.summary(record.rows)
    return finish(0)


def finish(code: int) -> int:
    """Exit now, without the interpreter's finalization. In run 7 the ranks hung at shutdown
    after NCCL ran inside CUDA graphs (the results were all written; the call then sat until
    its time limit). On gloo a worker thread can still be dropping its last all_gather's
    tensors; if that lands during finalization the process aborts."""
    if not dist.is_initialized():
        return code
    if not torch.cuda.is_available():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def run_cases(
    record: gpu.Recorder,
    engine: Any,
    local: Any,
    device: torch.device,
    big: int,
    small: int,
    one: dict[str, bytes],
    want: Any,
    tiny: bool,
) -> None:
    guarded = gpu.guarded(record, "engine")
    inputs = gpu.forward_inputs(local.pipe.transformer, big, device)

    def forward(variant: str) -> None:
        local._set_mode(False)
        seconds, _ = gpu.time_forward(local.pipe.transformer, inputs, device, repeats=5)
        record("forward", variant=variant, size=f"{big}x{big}", seconds=round(seconds, 4))

    def one_gpu(case: str, mode: str, side: int, warm: int | None, key: str = "") -> None:
        png = timed_image(record, local, local, device, case, mode, side, warm, gpus=1)
        one[key or f"{mode}:{side}"] = png

    if want("one") or want("one-fast"):
        guarded(lambda: forward("engine-1gpu"))
    if want("one"):
        guarded(lambda: one_gpu("engine_1gpu", "quality", big, 2))
    if want("one") or want("one-fast"):
        guarded(lambda: one_gpu("engine_1gpu", "fast", big, None))
    if want("anomaly"):  # standard 1024² right after fast, then quality, then standard again
        guarded(lambda: one_gpu("engine_1gpu", "standard", small, 2, "standard-a"))
        guarded(lambda: one_gpu("engine_1gpu", "quality", small, 2))
        guarded(lambda: one_gpu("engine_1gpu", "standard", small, 2, "standard-b"))

    if want("breakdown") and device.type == "cuda":
        guarded(lambda: forward_breakdown(record, local, inputs, device, big))

    def two_gpu(
        case: str, mode: str, side: int, warm: int | None, prompt: str | None = None, **extra: Any
    ) -> None:
        png = timed_image(
            record, engine, local, device, case, mode, side, warm, prompt, gpus=2, **extra
        )
        reference = one.get(f"{mode}:{side}") if prompt is None else None
        if reference is not None:
            record(f"{case}_vs_1gpu", mode=mode, **pixel_difference(png, reference), **extra)

    if want("cfg"):
        guarded(lambda: two_gpu("engine_2gpu", "quality", big, 2, graphs=False))
    if want("graphs") and device.type == "cuda":
        guarded(lambda: engine.configure("graphs", True))
        guarded(lambda: forward("engine-1gpu-cudagraph"))
        guarded(lambda: one_gpu("engine_1gpu_graphs", "fast", big, None, "fast-graphs"))
        guarded(lambda: two_gpu("engine_2gpu", "quality", big, 2, graphs=True))
        guarded(lambda: engine.configure("graphs", False))
    product = want("product") and device.type == "cuda" and not tiny
    if product and guarded(lambda: engine.configure("fast-sequence")):
        # What IMAGINE_GPUS=0,1 runs: CFG-parallel for CFG modes, Ulysses in graphs for fast.
        case = "engine_2gpu_product"
        guarded(lambda: timed_warmup(record, engine, device))
        guarded(lambda: two_gpu(case, "quality", big, 2))
        guarded(lambda: two_gpu(case, "fast", big, None))
        longer = gpu.PROMPT + ", in the style of an old master, with a frozen lake behind"
        guarded(lambda: two_gpu(case, "fast", big, 0, prompt=longer, first_of_its_length=True))
        guarded(lambda: two_gpu(case, "fast", big, 0, prompt=longer, first_of_its_length=False))
        guarded(lambda: two_gpu(case, "quality", big, 0, after="fast"))
    sequence = want("sequence") and device.type == "cuda" and not tiny
    if sequence and guarded(lambda: engine.configure("sequence", False)):
        case = "engine_2gpu_ulysses"
        guarded(lambda: two_gpu(case, "fast", big, None, graphs=False, fullgraph=False))
        guarded(lambda: engine.configure("graphs", True))
        guarded(lambda: two_gpu(case, "fast", big, None, graphs=True, fullgraph=False))
        if not engine.broken and guarded(lambda: engine.configure("sequence", True)):
            guarded(lambda: engine.configure("graphs", True))
            guarded(lambda: two_gpu(case, "fast", big, None, graphs=True, fullgraph=True))


if __name__ == "__main__":
    raise SystemExit(main())
