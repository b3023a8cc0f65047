"""Would batching queued jobs raise throughput? (issue 14: adopt it only for >= 5 % more images
per hour at saturation, with no slower lone job.)

Every mode renders at the model's native area (~1.7 M pixels: 1328², 1664x928), so each
transformer forward already carries 6000-7000 image tokens. This script measures what a batch of
B jobs with the same mode and size would cost on the engine's own transformer (the same
speed-ups as ``ImageGenerator.load``: compile, FP8 with ``--fp8``, fused Lightning LoRA):

- ``forward``: one transformer forward at batch 1, 2 and 4 for each size; ``per_image_s`` is
  seconds / B, ``gain`` is how many more images per hour that is than batch 1. Every image
  step of every mode is forwards like these (two per step with true CFG), so a batch that does
  not gain here cannot gain 5 % end to end.
- ``forward_lone_after``: batch 1 again after the batched shapes were compiled (a compiled
  graph may turn dynamic in the batch dimension, which could slow a lone job).
- ``fast_images``: whole fast-mode calls (8 steps, LoRA fused, VAE decode) with B prompts and
  B seeds, warm-up first; ``images_per_hour`` at that batch.

    python bench/batching.py --out bench/results --fp8 --compile-cache /tmp/cc   # nvidia-h200
    python bench/batching.py --tiny                                              # CPU check
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.gpu import (  # noqa: E402  (after the path set-up above)
    PROMPT,
    TEXT_TOKENS,
    Recorder,
    build_full_pipeline,
    build_tiny,
    engine_generator,
    engine_settings,
    environment,
    guarded,
    lora_for,
    peak_memory,
    run_script,
    sync,
    tiny_compile,
)

logger = logging.getLogger("bench.batching")

FULL_SIZES = ((1328, 1328), (1664, 928))
TINY_SIZES = ((64, 64), (80, 48))
BATCHES = (1, 2, 4)
FAST_STEPS = 8


def batched_inputs(
    transformer: Any, width: int, height: int, batch: int, device: torch.device
) -> dict[str, Any]:
    """One denoising forward's inputs for ``batch`` images of one size and text length."""
    config = transformer.config
    dtype = next(transformer.parameters()).dtype
    rows, cols = height // 16, width // 16
    gen = torch.Generator(device=device).manual_seed(batch)
    return {
        "hidden_states": torch.randn(
            batch, rows * cols, config.in_channels, device=device, dtype=dtype, generator=gen
        ),
        "encoder_hidden_states": torch.randn(
            batch,
            TEXT_TOKENS,
            config.joint_attention_dim,
            device=device,
            dtype=dtype,
            generator=gen,
        ),
        "encoder_hidden_states_mask": None,
        "timestep": torch.full((batch,), 0.7, device=device, dtype=dtype),
        "img_shapes": [[(1, rows, cols)]] * batch,
        "attention_kwargs": {},
        "return_dict": False,
    }


def time_forward(transformer: Any, inputs: dict[str, Any], device: torch.device) -> float:
    """Median of 5 forwards after two untimed ones (the first may compile)."""
    with torch.inference_mode():
        for _ in range(2):
            transformer(**inputs)
        times = []
        for _ in range(5):
            sync(device)
            started = time.perf_counter()
            transformer(**inputs)
            sync(device)
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def fast_call(pipe: Any, width: int, height: int, batch: int, steps: int) -> list[Any]:
    """What a batched fast-mode job would run: B prompts, B seeds, one pipeline call."""
    prompts = [f"{PROMPT}, variant {i}" for i in range(batch)]
    return pipe(
        prompt=prompts,
        negative_prompt=None,
        true_cfg_scale=1.0,
        width=width,
        height=height,
        num_inference_steps=steps,
        generator=[torch.Generator(device="cpu").manual_seed(i) for i in range(batch)],
        output_type="pil",
    ).images


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = TINY_SIZES if args.tiny else FULL_SIZES
    env = environment(device)
    record = Recorder(Path(args.out) / f"{env['run']}-batching.jsonl", env)
    record("env", **{k: v for k, v in env.items() if k != "run"}, argv=sys.argv[1:])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwen-batch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe = (build_tiny if args.tiny else build_full_pipeline)(device, dtype, workdir)
    lora_dir, lora_file = lora_for(record, pipe.transformer, workdir, args.tiny)
    settings = engine_settings(args, workdir, lora_dir, lora_file, fp8=args.fp8)
    generator = engine_generator(
        pipe, settings, device, dtype, max_side=64 if args.tiny else None, tiny=args.tiny
    )
    generator._apply_speedups()  # exactly what ImageGenerator.load runs
    if args.tiny:
        tiny_compile(generator)
    generator.warmup()
    sync(device)
    record("engine_start", seconds=round(time.perf_counter() - started, 2),
           optimizations=generator.optimizations, fp8=args.fp8)  # fmt: skip
    transformer = pipe.transformer

    def forwards() -> None:
        generator._set_mode(False)  # base weights, as the CFG modes run
        for width, height in sizes:
            lone = None
            for batch in BATCHES:
                inputs = batched_inputs(transformer, width, height, batch, device)
                seconds = time_forward(transformer, inputs, device)
                lone = lone or seconds
                record("forward", size=f"{width}x{height}", batch=batch,
                       seconds=round(seconds, 4), per_image_s=round(seconds / batch, 4),
                       gain=round(lone * batch / seconds - 1, 4))  # fmt: skip
            inputs = batched_inputs(transformer, width, height, 1, device)
            seconds = time_forward(transformer, inputs, device)
            record("forward_lone_after", size=f"{width}x{height}", batch=1,
                   seconds=round(seconds, 4), vs_first=round(seconds / lone, 4))  # fmt: skip

    guarded(record, "forward")(forwards)

    def fast_images() -> None:
        generator._set_mode(True)  # the fused Lightning LoRA
        width, height = sizes[0]
        steps = FAST_STEPS if not args.tiny else 2
        lone = None
        for batch in BATCHES:
            fast_call(pipe, width, height, batch, steps)  # warm-up (and any recompile)
            out: dict[str, Any] = {}
            with peak_memory(device, out), torch.inference_mode():
                images = fast_call(pipe, width, height, batch, steps)
            assert len(images) == batch
            lone = lone or out["seconds"]
            record("fast_images", size=f"{width}x{height}", batch=batch, steps=steps,
                   per_image_s=round(out["seconds"] / batch, 4),
                   images_per_hour=round(3600 * batch / out["seconds"]),
                   gain=round(lone * batch / out["seconds"] - 1, 4), **out)  # fmt: skip

    guarded(record, "fast_images")(fast_images)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
