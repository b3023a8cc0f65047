"""Image editing on the full-size model (issue 12): stock ``QwenImageEditPlusPipeline`` against
the engine's ``EditGenerator`` with its speed-ups, and the transformer swap.

Random full-size weights (speed does not depend on their values), built as ``bench/gpu.py``
builds text-to-image: the real Qwen-Image transformer shapes twice (text-to-image, and the edit
one with ``zero_cond_t`` as Qwen-Image-Edit-2511 has it), the Qwen2.5-VL-7B text encoder WITH
its vision tower (the edit prompt runs it over the input image), the VAE, and the engine's
``ImageOnlyQwen2VLProcessor`` (stock ``Qwen2VLProcessor`` wants torchvision). One process, one
GPU; JSON lines out.

    python bench/edit.py --out bench/results            # on nvidia-h200 (bf16 + compile)
    python bench/edit.py --out bench/results --fp8      # the same with FP8 linears
    python bench/edit.py --tiny                          # the same code on the CPU

Cases at 1024² (``--tiny``: 64², 2 steps), in this order: ``stock_edit`` (the model card's
call: one image, ``negative_prompt=" "``, ``true_cfg_scale=4.0``, 40 steps; a 2-step warm-up),
``engine_edit`` (the same edit through ``EditGenerator`` after ``engine.edit.speedups``; one
warm-up), then ``swap_pin`` and ``swap_to_edit`` / ``swap_to_t2i`` (``TransformerSwap.activate``
with the pinned-host strategy, both ways, twice, on the weights the engine now has: FP8 image
stream with ``--fp8``), each with peak memory. The target: engine ≤ 0.7× stock.
"""

from __future__ import annotations

import argparse
import io
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
from PIL import Image  # noqa: E402

from bench.gpu import (  # noqa: E402  (after the path set-up above)
    Recorder,
    build_full_pipeline,
    build_tiny,
    environment,
    guarded,
    materialize,
    peak_memory,
    run_script,
    sync,
)

logger = logging.getLogger("bench.edit")

EDIT_PROMPT = "Make the fox's fur blue and add a red scarf, keep the background unchanged"
STEPS = 40  # the model card's Quick Start
TRUE_CFG = 4.0
FULL_SIDE = 1024
TINY_SIDE, TINY_STEPS = 64, 2
T2I_NAME, EDIT_NAME = "bench-random-t2i", "bench-random-edit"


def input_image(side: int) -> Image.Image:
    """A smooth colour ramp (the VAE and the vision tower see a real image, not noise)."""
    ramp = torch.linspace(0, 255, side).to(torch.uint8)
    pixels = torch.stack(
        [ramp.expand(side, side), ramp.expand(side, side).T, ramp.flip(0).expand(side, side)], -1
    )
    return Image.fromarray(pixels.numpy(), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_edit_full(t2i: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """The edit pipeline on text-to-image's text encoder, tokenizer and VAE (shared, as the
    engine shares them) with its own 20B transformer (``zero_cond_t``, as in 2511)."""
    from accelerate import init_empty_weights
    from diffusers import QwenImageEditPlusPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2VLImageProcessorPil

    from engine.edit.processor import ImageOnlyQwen2VLProcessor

    with init_empty_weights():
        transformer = QwenImageTransformer2DModel(zero_cond_t=True)
    materialize(transformer, device, dtype)
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(), tokenizer=t2i.tokenizer
    )
    pipe = QwenImageEditPlusPipeline(
        scheduler=t2i.scheduler,
        vae=t2i.vae,
        text_encoder=t2i.text_encoder,
        tokenizer=t2i.tokenizer,
        processor=processor,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_edit_tiny(t2i: Any, device: torch.device, dtype: torch.dtype, workdir: Path) -> Any:
    from diffusers import QwenImageEditPlusPipeline

    from engine.edit.processor import load_processor
    from engine.tiny import build_tiny_edit_pipeline

    path = build_tiny_edit_pipeline(workdir / "tiny-edit")
    pipe = QwenImageEditPlusPipeline.from_pretrained(
        path,
        dtype=dtype,
        processor=load_processor(str(path)),
        text_encoder=t2i.text_encoder,
        vae=t2i.vae,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(args: argparse.Namespace) -> int:
    """Build both models, time every case; one JSON line per result."""
    from engine.contract import TASK_EDIT, JobRequest, Mode
    from engine.edit import EditGenerator, TransformerSwap
    from engine.edit import generator as edit_module
    from engine.edit.processor import edit_image_sizes
    from engine.edit.speedups import apply_edit_speedups
    from engine.edit.swap import forget_captured_graphs
    from engine.pipeline import ImageGenerator
    from engine.settings import EngineSettings, MemoryMode
    from engine.streaming import module_bytes
    from engine.tiny import tiny_defaults

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    side, steps = (TINY_SIDE, TINY_STEPS) if args.tiny else (FULL_SIDE, STEPS)
    env = environment(device)
    record = Recorder(Path(args.out) / f"{env['run']}-edit.jsonl", env)
    record("env", **{k: v for k, v in env.items() if k != "run"}, argv=sys.argv[1:])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwen-edit-"))
    started = time.perf_counter()
    t2i = (build_tiny if args.tiny else build_full_pipeline)(device, dtype, workdir)
    if args.tiny:
        edit_pipe = build_edit_tiny(t2i, device, dtype, workdir)
        areas = tiny_defaults(workdir / "tiny-edit") or {}
    else:
        edit_pipe = build_edit_full(t2i, device, dtype)
        areas = {}
    condition_area, vae_area = areas.get("edit_condition_area"), areas.get("edit_vae_area")
    sync(device)
    record("build", seconds=round(time.perf_counter() - started, 2))
    image = input_image(side)

    def stock() -> None:
        for attempt in ("warmup", "timed"):
            out: dict[str, Any] = {}
            with (
                peak_memory(device, out),
                edit_image_sizes(condition_area, vae_area),
                torch.inference_mode(),
            ):
                result = edit_pipe(
                    image=[image],
                    prompt=EDIT_PROMPT,
                    negative_prompt=" ",
                    true_cfg_scale=TRUE_CFG,
                    num_inference_steps=steps if attempt == "timed" else 2,
                    height=side,
                    width=side,
                    generator=torch.Generator(device=device).manual_seed(1),
                )
            made = result.images[0]
            if attempt == "timed":
                per_step = round(out["seconds"] / steps, 4)
                record("stock_edit", size=f"{made.width}x{made.height}", steps=steps,
                       per_step_s=per_step, **out)  # fmt: skip

    guarded(record, "stock_edit")(stock)

    def swapping(weights: str) -> None:
        """Both ways twice with the idle transformer pinned on the host."""
        swap = TransformerSwap(device, keep_all=False)
        out: dict[str, Any] = {}
        with peak_memory(device, out):
            swap.add(T2I_NAME, t2i.transformer, on_device=True)
            swap.add(EDIT_NAME, edit_pipe.transformer, on_device=False)  # pinned now
        record("swap_pin", weights=weights, **out)
        for attempt in (1, 2):
            for name, case in ((EDIT_NAME, "swap_to_edit"), (T2I_NAME, "swap_to_t2i")):
                out = {}
                with peak_memory(device, out):
                    seconds = swap.activate(name)
                    for transformer in (t2i.transformer, edit_pipe.transformer):
                        forget_captured_graphs(transformer)
                gib = module_bytes(t2i.transformer if name == T2I_NAME else edit_pipe.transformer)
                record(case, attempt=attempt, weights=weights, activate_s=round(seconds, 4),
                       moved_gib=round(gib / 2**30, 2), resident=list(swap.resident()),
                       **out)  # fmt: skip

    settings = EngineSettings(
        model=T2I_NAME,
        edit_model=EDIT_NAME,
        compile=not args.no_compile,
        fp8=args.fp8,
        compile_cache_dir=Path(args.compile_cache) if args.compile_cache else None,
    )
    base = ImageGenerator(
        t2i,
        settings,
        device=device,
        dtype=dtype,
        memory_mode=MemoryMode.RESIDENT,
        max_side=side if args.tiny else 1328,
        fast_available=False,
        model_name=T2I_NAME,
    )
    resident = TransformerSwap(device, keep_all=True)  # an H200 holds both transformers
    resident.add(T2I_NAME, t2i.transformer, on_device=True)
    resident.add(EDIT_NAME, edit_pipe.transformer, on_device=True)
    editor = EditGenerator(
        edit_pipe,
        base,
        settings=settings,
        model_name=EDIT_NAME,
        shared={"text_encoder": "shared: bench", "vae": "shared: bench"},
        swap=resident,
        fast_available=False,
        condition_area=condition_area,
        vae_area=vae_area,
    )
    edit_module.EDIT_STEPS[Mode.STANDARD] = steps

    def engine() -> None:
        t0 = time.perf_counter()
        base._apply_speedups()  # the engine's start: text-to-image first (attention choice)
        cpu_backend = "eager" if args.tiny else None  # the CPU traces the blocks, no codegen
        editor.optimizations = apply_edit_speedups(editor, cpu_compile_backend=cpu_backend)
        sync(device)
        record("engine_start", seconds=round(time.perf_counter() - t0, 2),
               t2i=base.optimizations, edit=editor.optimizations, fp8=args.fp8)  # fmt: skip
        source = png_bytes(image)
        for attempt in ("warmup", "timed"):
            request = JobRequest(
                job_id=f"edit-{attempt}", user_id=1, prompt=EDIT_PROMPT, seed=1,
                mode=Mode.STANDARD, task=TASK_EDIT, images=(source,),
            )  # fmt: skip
            out: dict[str, Any] = {}
            with peak_memory(device, out):
                result = editor.generate(request)
            if attempt == "timed":
                made = result.image
                record("engine_edit", size=f"{made.width}x{made.height}", steps=result.steps,
                       run_s=round(result.run_s, 4),
                       per_step_s=round(result.run_s / max(result.steps, 1), 4),
                       optimizations=editor.optimizations, **out)  # fmt: skip

    guarded(record, "engine_edit")(engine)
    # The swap last: what this engine would move (FP8 image-stream weights with ``--fp8``).
    guarded(record, "swap")(lambda: swapping("fp8" if args.fp8 else "bf16"))

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
