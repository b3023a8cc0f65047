"""Every card from 16 GB up (issue 21): the engine's memory plan against stock diffusers' best
placement, under PyTorch memory caps standing in for smaller cards.

One process, random full-size weights (``bench/gpu.py`` builds them on the GPU in seconds). A
cap is ``torch.cuda.set_per_process_memory_fraction``: an allocation past it fails as it would on
a card of that size. A cap shows neither a consumer card's slower PCIe link nor its smaller
host RAM, so every row records the GiB copied from host to GPU per image and the RAM the plan
holds; ``engine.planning.expected_seconds`` turns those into seconds on another link.

Cases (``--cases``, comma-separated; ``--caps`` picks the capped sizes):

- ``uncapped``: one build on the whole card: stock diffusers resident; the engine in bf16
  without compile, the reference every format is compared with (one forward's relative error,
  the final image's pixels); then the same generator with FP8 + compile, the engine's fastest
  configuration and every ratio's denominator (a capped FP8 run is never compared with bf16).
- ``stock``: stock diffusers with its best placement that fits a 16-48 GiB cap
  (``enable_group_offload``, leaf level, ``use_stream=True``: 7.3 GiB peak in the issue, where
  ``enable_model_cpu_offload`` and sequential offload measured 5x and more slower), run under
  the smallest cap.
- ``plan``: for each cap, the plan ``engine.planning`` makes for it, carried out and run.
- ``edit``: for each cap in ``--edit-caps``, the engine's edit under the same plan, and stock
  diffusers' edit with group offloading.

Quality (50 steps with true CFG, 100 forwards) and stock images are timed from two short runs of
the same call (``--short``: 5 and 10 steps; stock 2 and 4): per step = the difference / 5 (2),
fixed = the rest; the full image = fixed + steps x per step. Fast (8 steps) is timed whole.

``--tiny`` runs every case's code on the CPU with the tiny model (the plans are the full-size
cards' plans, carried out on the tiny model), as ``tests/bench/test_memory_bench.py`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu import (
    PROMPT,
    Recorder,
    add_common_arguments,
    build_full_pipeline,
    build_tiny,
    engine_settings,
    environment,
    forward_inputs,
    guarded,
    image_error,
    lora_for,
    materialize,
    png_pixels,
    rel_error,
    sync,
)

GIB = 2**30
CAPS = (48, 32, 24, 16)


@dataclasses.dataclass
class Run:
    """What every case shares: where it runs, the output, the reference to compare with."""

    args: argparse.Namespace
    record: Recorder
    device: torch.device
    dtype: torch.dtype
    workdir: Path
    side: int
    edit_side: int
    lora: tuple[Path, str] | None = None
    reference_png: dict[str, bytes] = dataclasses.field(default_factory=dict)
    reference_forward: torch.Tensor | None = None
    total_gib: float = 0.0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ---------------------------------------------------------------------------- plumbing
def fresh_pipeline(run: Run, *, on_host: bool) -> Any:
    """A new random pipeline (same seed, so the same weights every time), on the GPU or moved
    to host memory, where a plan starts from (as after ``from_pretrained``)."""
    cap(run, None)
    # The last case's models, hooks and compiled code let go before 57 GB more arrive.
    torch._dynamo.reset()
    release()
    started = time.perf_counter()
    pipe = (build_tiny if run.args.tiny else build_full_pipeline)(run.device, run.dtype,
                                                                  run.workdir)  # fmt: skip
    if run.lora is None:
        run.lora = lora_for(run.record, pipe.transformer, run.workdir, run.args.tiny)
    if on_host and run.cuda:
        pipe.to("cpu")
        torch.cuda.empty_cache()
    sync(run.device)
    run.record("build", on_host=on_host, seconds=round(time.perf_counter() - started, 1))
    return pipe


def release(*objects: Any) -> None:
    """Drop a case's objects (the caller's names go with its frame) and return their memory."""
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        # Pinned host blocks cached by PyTorch (stock group offloading's) are not freed by
        # empty_cache; the next case needs that RAM.
        torch._C._host_emptyCache()


def cap(run: Run, gib: float | None) -> None:
    """Cap PyTorch's allocations at ``gib`` (None: the whole card)."""
    if not run.cuda:
        return
    fraction = 1.0 if gib is None else min(1.0, gib / run.total_gib)
    torch.cuda.set_per_process_memory_fraction(fraction, run.device)
    torch.cuda.empty_cache()


@contextlib.contextmanager
def measured(run: Run, out: dict[str, Any], moved: Callable[[], int] | None = None) -> Any:
    if run.cuda:
        sync(run.device)
        torch.cuda.reset_peak_memory_stats(run.device)
    before = moved() if moved else 0
    started = time.perf_counter()
    yield
    sync(run.device)
    out["seconds"] = round(time.perf_counter() - started, 3)
    if moved:
        out["moved_gib"] = round((moved() - before) / GIB, 2)
    if run.cuda:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(run.device) / GIB, 2)


def request(mode: str, seed: int = 1) -> Any:
    from engine.contract import JobRequest, Mode

    return JobRequest(job_id=f"mem-{mode}-{seed}", user_id=1, prompt=PROMPT, seed=seed,
                      mode=Mode(mode), aspect="1:1")  # fmt: skip


def engine_images(
    run: Run, generator: Any, label: str, moved: Callable[[], int], **extra: Any
) -> None:
    """Fast whole, quality from two short runs; each compared with the reference image."""
    from engine.contract import Mode

    generator.max_side = run.side
    fast = request("fast")
    generator.warm_once(fast, 8)
    out: dict[str, Any] = {}
    with measured(run, out, moved):
        result = generator.generate(fast)
    drift = {}
    if "fast" in run.reference_png:
        drift = pixel_drift(result.image.png, run.reference_png["fast"])
    else:
        run.reference_png["fast"] = result.image.png
    run.record(label, mode="fast", size=f"{run.side}x{run.side}", steps=result.steps, **out,
               **drift, optimizations=generator.optimizations, **extra)  # fmt: skip
    quality = request("quality")
    plan = generator.plan(quality)
    assert plan.mode == Mode.QUALITY and plan.cfg
    short_a, short_b = run.args.short
    generator.generate(quality, plan=dataclasses.replace(plan, steps=2))  # warm-up
    timings = []
    for steps in (short_a, short_b):
        out = {}
        with measured(run, out, moved):
            result = generator.generate(quality, plan=dataclasses.replace(plan, steps=steps))
        timings.append(out)
        key = f"quality{steps}"
        drift = {}
        if key in run.reference_png:
            drift = pixel_drift(result.image.png, run.reference_png[key])
        else:
            run.reference_png[key] = result.image.png
        run.record(f"{label}_short", mode="quality", steps=steps, **out, **drift, **extra)
    per_step = (timings[1]["seconds"] - timings[0]["seconds"]) / (short_b - short_a)
    fixed = timings[0]["seconds"] - short_a * per_step
    moved_step = (timings[1].get("moved_gib", 0) - timings[0].get("moved_gib", 0)) / (
        short_b - short_a
    )  # fmt: skip
    run.record(label, mode="quality", size=f"{run.side}x{run.side}", steps=plan.steps,
               seconds=round(fixed + plan.steps * per_step, 2), per_step_s=round(per_step, 4),
               fixed_s=round(fixed, 3), extrapolated=True,
               moved_gib=round(timings[0].get("moved_gib", 0) + (plan.steps - short_a)
                               * moved_step, 1),
               peak_gib=max(t.get("peak_gib", 0) for t in timings), **extra)  # fmt: skip


def pixel_drift(png: bytes, reference: bytes) -> dict[str, float]:
    import numpy as np

    a, b = png_pixels(png), png_pixels(reference)
    return {
        "pixel_max_diff": float(np.abs(a - b).max()),
        "pixel_mean_diff": round(float(np.abs(a - b).mean()), 3),
        "image_rel_error": round(image_error(png, reference), 5),
    }


def forward_drift(run: Run, transformer: Any, label: str, **extra: Any) -> None:
    """One transformer forward at the image size: seconds and relative error against bf16."""
    inputs = forward_inputs(transformer, run.side, run.device)
    with torch.inference_mode():
        transformer(**inputs)
        sync(run.device)
        started = time.perf_counter()
        output = transformer(**inputs)[0].float().cpu()
        sync(run.device)
    seconds = time.perf_counter() - started
    error = None
    if run.reference_forward is None:
        run.reference_forward = output
    else:
        error = round(rel_error(output, run.reference_forward), 5)
    run.record("forward", variant=label, seconds=round(seconds, 4), rel_error=error, **extra)


def generator_for(run: Run, pipe: Any, plan: Any, placed: Any, **settings: Any) -> Any:
    from engine.loader import mode_of
    from engine.pipeline import ImageGenerator

    lora_dir, lora_file = run.lora or (Path(), "")
    config = engine_settings(run.args, run.workdir, lora_dir, lora_file)
    config = config.model_copy(update=settings)
    generator = ImageGenerator(
        pipe, config, device=run.device, dtype=run.dtype, memory_mode=mode_of(plan),
        max_side=run.side, fast_available=True, model_name="random full-size Qwen-Image",
        memory_plan=plan,
    )  # fmt: skip
    generator.lora_switch = placed.lora_switch
    started = time.perf_counter()
    generator._apply_speedups()
    run.record("speedups", plan=plan.summary(), seconds=round(time.perf_counter() - started, 1),
               optimizations=generator.optimizations)  # fmt: skip
    return generator


def card_plan(run: Run, gib: float | None, link: float, weights: str = "auto") -> Any:
    """The plan for a card of ``gib`` (None: this card uncapped): on the tiny run, the
    full-size card's plan."""
    from engine.placing import probe_host
    from engine.planning import (
        QWEN_IMAGE,
        QWEN_IMAGE_WITH_EDIT,
        Card,
        Host,
        WeightsSetting,
        plan_memory,
    )

    capability = torch.cuda.get_device_capability(run.device) if run.cuda else (9, 0)
    usable = gib if gib is not None else (run.total_gib - 1.5 if run.cuda else 78.0)
    card = Card(f"{gib or 'uncapped'} GiB cap", usable, capability)
    edit = "edit" in run.args.cases or bool(run.args.edit_caps)
    models = QWEN_IMAGE_WITH_EDIT if edit else QWEN_IMAGE
    host = Host(run.args.host_gib) if run.args.host_gib else probe_host()
    return plan_memory(card, host, models, WeightsSetting(weights), link_gib_s=link)


# --------------------------------------------------------------------------------- cases
def engine_case(run: Run, label: str, gib: float | None, link: float, *, weights: str = "auto",
                fp8: bool = False) -> None:  # fmt: skip
    from engine.placing import carry_out

    plan = card_plan(run, gib, link, weights)
    pipe = fresh_pipeline(run, on_host=True)
    from engine.loader import load_lightning

    lora_dir, lora_file = run.lora or (Path(), "")
    load_lightning(pipe, str(lora_dir), lora_file)
    cap(run, gib)
    started = time.perf_counter()
    placed = carry_out(pipe, plan, run.device)
    run.record("plan", label=label, cap_gib=gib, summary=plan.summary(), weights=str(plan.weights),
               plan_gpu_gib=plan.gpu_gib, plan_host_gib=plan.host_gib,
               streamed_gib=round(sum(s.host_bytes for s in placed.streamers) / GIB, 2),
               moved_per_fast_image_gib=round(plan.moved_gib(True, 8), 2),
               seconds=round(time.perf_counter() - started, 1),
               allocated_gib=round(torch.cuda.memory_allocated() / GIB, 2) if run.cuda else None,
               reasons=list(plan.reasons))  # fmt: skip
    generator = generator_for(run, pipe, plan, placed, fp8=fp8)
    extra = {"cap_gib": gib, "weights": str(plan.weights), "plan": plan.summary()}
    guarded(run.record, f"{label}_forward")(
        lambda: forward_drift(run, pipe.transformer, label, **extra)
    )
    guarded(run.record, label)(
        lambda: engine_images(run, generator, label, lambda: placed.moved_bytes, **extra)
    )
    if label.startswith("plan") and gib is not None and gib in run.args.edit_caps:
        guarded(run.record, f"edit_{gib}")(lambda: engine_edit(run, generator, gib, extra))
    release(generator, pipe, placed)
    cap(run, None)


def uncapped_case(run: Run, link: float) -> None:
    """One build on the whole card: stock diffusers resident, then the engine in bf16 without
    compile (the reference every format is compared with), then the same generator made the
    fastest configuration (FP8 + compile), the denominator of every ratio."""
    from engine import optimize
    from engine.loader import load_lightning
    from engine.placing import carry_out

    plan = card_plan(run, None, link, "bf16")
    pipe = fresh_pipeline(run, on_host=False)
    guarded(run.record, "stock_resident")(lambda: stock_timings(run, pipe, "resident"))
    lora_dir, lora_file = run.lora or (Path(), "")
    load_lightning(pipe, str(lora_dir), lora_file)
    placed = carry_out(pipe, plan, run.device)
    generator = generator_for(run, pipe, plan, placed, compile=False, fp8=False)
    extra = {"cap_gib": None, "weights": "bf16", "plan": plan.summary()}
    forward_drift(run, pipe.transformer, "reference", **extra)
    engine_images(run, generator, "reference", lambda: 0, **extra)
    if run.args.save_reference:
        save_reference(run, Path(run.args.save_reference))
    started = time.perf_counter()
    applied = []
    if run.cuda and optimize.fp8_supported(run.device):
        optimize.enable_fp8(generator)
        applied.append("fp8-rowwise")
    backend = optimize.pick_attention_backend(pipe.transformer, run.device) if run.cuda else None
    if backend:
        applied.append(f"attention:{backend}")
    if not run.args.no_compile:
        optimize.configure_compile_cache(Path(run.args.compile_cache) if run.args.compile_cache
                                         else None)  # fmt: skip
        optimize.install_real_rotary()
        backend_name = "inductor" if run.cuda else "eager"
        if optimize.compile_and_check(pipe.transformer, run.device, backend_name):
            applied.append("compile")
    generator.optimizations = [*generator.optimizations, *applied]
    run.record("speedups", label="fastest", seconds=round(time.perf_counter() - started, 1),
               optimizations=generator.optimizations)  # fmt: skip
    forward_drift(run, pipe.transformer, "fastest", **extra)
    engine_images(run, generator, "fastest", lambda: 0, **{**extra, "weights": "bf16+fp8"})
    release(generator, pipe, placed)


def stock_case(run: Run, placement: str) -> None:
    """Stock diffusers with its best placement for a 16-48 GiB card: group offloading."""
    pipe = fresh_pipeline(run, on_host=True)
    started = time.perf_counter()
    pipe.enable_group_offload(onload_device=run.device, offload_type="leaf_level",
                              use_stream=run.cuda)  # fmt: skip
    run.record("stock_setup", placement=placement,
               seconds=round(time.perf_counter() - started, 1))  # fmt: skip
    cap(run, min(run.args.caps) if run.args.caps else None)  # it must fit the smallest cap
    stock_timings(run, pipe, placement)
    cap(run, None)
    release(pipe)


def stock_timings(run: Run, pipe: Any, placement: str) -> None:
    """Stock diffusers, no LoRA, default attention: 8 steps without CFG and quality (50 steps,
    true CFG 4), each from a 2-step and a 4-step call."""
    for cfg, mode, full in ((False, "8 steps", 8), (True, "quality", 50)):
        timings = []
        call(pipe, run.side, 2, cfg)  # warm-up (one step gives the scheduler no interval)
        for steps in (2, 4):
            out: dict[str, Any] = {}
            with measured(run, out):
                call(pipe, run.side, steps, cfg)
            timings.append(out)
        per_step = (timings[1]["seconds"] - timings[0]["seconds"]) / 2
        fixed = timings[0]["seconds"] - 2 * per_step
        run.record(f"stock_{placement}", mode=mode, steps=full, true_cfg=cfg,
                   seconds=round(fixed + full * per_step, 2), per_step_s=round(per_step, 4),
                   fixed_s=round(fixed, 3), extrapolated=True,
                   peak_gib=max(t.get("peak_gib", 0) for t in timings))  # fmt: skip


def call(pipe: Any, side: int, steps: int, cfg: bool) -> None:
    kwargs: dict[str, Any] = {
        "prompt": PROMPT, "width": side, "height": side, "num_inference_steps": steps,
        "generator": torch.Generator(device="cpu").manual_seed(0), "output_type": "pil",
    }  # fmt: skip
    if cfg:
        kwargs.update(negative_prompt=" ", true_cfg_scale=4.0)
    with torch.inference_mode():
        pipe(**kwargs)


def engine_edit(run: Run, generator: Any, gib: float, extra: dict[str, Any]) -> None:
    """The engine's edit under the same plan: the edit transformer built apart (uncapped, then
    moved to host), then placed by ``EditGenerator._place``."""
    from accelerate import init_empty_weights
    from diffusers import QwenImageEditPlusPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2VLImageProcessorPil

    from bench.edit import input_image, png_bytes
    from engine.contract import TASK_EDIT, JobRequest, Mode
    from engine.edit.generator import EditGenerator
    from engine.edit.processor import ImageOnlyQwen2VLProcessor

    cap(run, None)
    if run.args.tiny:
        from bench.edit import build_edit_tiny

        edit_pipe = build_edit_tiny(generator.pipe, run.device, run.dtype, run.workdir)
        edit_pipe.to("cpu")
    else:
        with init_empty_weights():
            transformer = QwenImageTransformer2DModel(zero_cond_t=True)
        materialize(transformer, run.device, run.dtype)
        transformer.to("cpu")
        processor = ImageOnlyQwen2VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(), tokenizer=generator.pipe.tokenizer
        )
        edit_pipe = QwenImageEditPlusPipeline(
            scheduler=generator.pipe.scheduler, vae=generator.pipe.vae,
            text_encoder=generator.pipe.text_encoder, tokenizer=generator.pipe.tokenizer,
            processor=processor, transformer=transformer,
        )  # fmt: skip
        edit_pipe.set_progress_bar_config(disable=True)
    torch.cuda.empty_cache() if run.cuda else None
    cap(run, gib)
    shared = {"text_encoder": generator.pipe.text_encoder, "vae": generator.pipe.vae}
    swap, switch = EditGenerator._place(edit_pipe, generator, "bench-edit", shared)
    editor = EditGenerator(edit_pipe, generator, settings=generator.settings,
                           model_name="bench-edit", shared={k: "shared" for k in shared},
                           swap=swap, fast_available=False)  # fmt: skip
    editor.lora_switch = switch
    image = png_bytes(input_image(run.edit_side))
    edit = JobRequest(job_id="mem-edit", user_id=1, prompt="make it look like winter", seed=3,
                      mode=Mode.STANDARD, task=TASK_EDIT, images=(image,))  # fmt: skip
    editor.max_side = run.edit_side
    plan = editor.plan(edit)
    editor.generate(edit, plan=dataclasses.replace(plan, steps=2))  # warm-up, swaps in
    timings = []
    short_a, short_b = run.args.short
    for steps in (short_a, short_b):
        out: dict[str, Any] = {}
        with measured(run, out):
            editor.generate(edit, plan=dataclasses.replace(plan, steps=steps))
        timings.append(out)
    per_step = (timings[1]["seconds"] - timings[0]["seconds"]) / (short_b - short_a)
    fixed = timings[0]["seconds"] - short_a * per_step
    run.record("engine_edit", mode="edit", steps=plan.steps, size=plan.size,
               seconds=round(fixed + plan.steps * per_step, 2), per_step_s=round(per_step, 4),
               fixed_s=round(fixed, 3), extrapolated=True,
               swap_s=round(swap.last_swap_s, 2) if swap else None,
               peak_gib=max(t.get("peak_gib", 0) for t in timings), **extra)  # fmt: skip
    if swap is not None:
        swap.activate(generator.model_name)
    release(editor, edit_pipe)


# ---------------------------------------------------------------------------------- main
def benchmark(args: argparse.Namespace) -> int:
    gpu = torch.cuda.is_available() and (not args.tiny or args.tiny_on_gpu)
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = environment(device)
    kind = "tiny" if args.tiny else "gpu"
    record = Recorder(Path(args.out) / f"{env['run']}-{kind}-memory.jsonl", env)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwen-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(args, record, device, dtype, workdir, side=64 if args.tiny else 1328,
              edit_side=48 if args.tiny else 1024)  # fmt: skip
    if run.cuda:
        run.total_gib = torch.cuda.get_device_properties(device).total_memory / GIB
    from engine.placing import measure_link
    from engine.planning import DEFAULT_LINK_GIB_S

    link = measure_link(device) or DEFAULT_LINK_GIB_S
    record("env", **{k: v for k, v in env.items() if k != "run"}, argv=sys.argv[1:],
           link_gib_s=round(link, 1))  # fmt: skip
    if args.reference:
        load_reference(run, Path(args.reference))
    cases = set(args.cases.split(","))
    if "uncapped" in cases:
        guarded(record, "uncapped")(lambda: uncapped_case(run, link))
    if "plan" in cases:
        for gib in args.caps:
            guarded(record, f"plan_{gib}")(
                lambda gib=gib: engine_case(run, f"plan_{gib}", gib, link)
            )
    for forced in args.forced:
        gib_text, _, weights = forced.partition(":")
        gib = float(gib_text)
        guarded(record, f"forced_{forced}")(
            lambda gib=gib, weights=weights: engine_case(run, f"forced_{weights}_{gib:g}", gib,
                                                         link, weights=weights)
        )  # fmt: skip
    # Last: the slowest case, and the one whose figure the issue's own table already has.
    if "stock" in cases:
        guarded(record, "stock_group_offload")(lambda: stock_case(run, "group_offload"))
    return 0


def save_reference(run: Run, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for key, png in run.reference_png.items():
        (path / f"{key}.png").write_bytes(png)
    if run.reference_forward is not None:
        torch.save(run.reference_forward.to(torch.bfloat16), path / "forward.pt")


def load_reference(run: Run, path: Path) -> None:
    for png in path.glob("*.png"):
        run.reference_png[png.stem] = png.read_bytes()
    forward = path / "forward.pt"
    if forward.exists():
        run.reference_forward = torch.load(forward).float()


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    add_common_arguments(parser)
    parser.add_argument("--cases", default="uncapped,stock,plan")
    parser.add_argument("--caps", default=",".join(map(str, CAPS)),
                        type=lambda v: [float(x) for x in v.split(",") if x])  # fmt: skip
    parser.add_argument(
        "--edit-caps", default="", type=lambda v: [float(x) for x in v.split(",") if x]
    )
    parser.add_argument(
        "--forced",
        default="",
        type=lambda v: [x for x in v.split(",") if x],
        help="CAP:FORMAT runs with IMAGINE_WEIGHTS pinned, e.g. 32:int8",
    )
    parser.add_argument(
        "--short", default="5,10", type=lambda v: tuple(int(x) for x in v.split(","))
    )
    parser.add_argument(
        "--host-gib",
        type=float,
        default=None,
        help="plan for this much free host RAM (default: this machine's)",
    )
    parser.add_argument(
        "--tiny-on-gpu",
        action="store_true",
        help="with --tiny: run on the GPU (a smoke test of streams and kernels)",
    )
    parser.add_argument("--reference", default=None, help="compare with a saved reference")
    parser.add_argument("--save-reference", default=None, help="save the reference here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
