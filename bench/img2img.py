"""Images from images on the full-size model: variations (img2img) and live previews.

What a member pays for after the first image: Vary runs img2img from the stored PNG at a
strength s (about s × steps denoising steps), and every progress edit may carry a preview decoded
from the step's clean-image estimate. Random full-size weights (speed does not depend on their
values), built and run exactly as ``bench/gpu.py`` does, through the engine's own
``ImageGenerator`` (compile, optional FP8). One process, one GPU; JSON lines out.

    python bench/img2img.py --out bench/results --fp8        # on the GPU machine (~4 min)
    python bench/img2img.py --tiny                            # the same code on the CPU

Cases at 1328² (``--tiny``: 64²): text-to-image quality with previews off and on (the preview
cost is the difference, and the count and time of the previews made), img2img at strength 0.65
in quality and fast modes (twice each: the first includes building the img2img pipeline), and
fast text-to-image for reference. ``docs/PERFORMANCE.md`` states the results with the card.
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

logger = logging.getLogger("bench.img2img")

STRENGTH = 0.65


def _request(mode: str, seed: int, **extra: Any) -> Any:
    from engine.contract import JobRequest, Mode

    return JobRequest(
        job_id=f"i2i-{mode}-{seed}",
        user_id=1,
        prompt=PROMPT,
        seed=seed,
        mode=Mode(mode),
        aspect="1:1",
        **extra,
    )


class Followed:
    """A job's control as the bot's: progress followed, previews when asked for (counted)."""

    followed = True

    def __init__(self, previews: bool) -> None:
        self.previews = previews
        self.made: list[int] = []

    def step(self, step: int, total: int, elapsed_s: float, preview: bytes | None = None) -> None:
        if preview is not None:
            self.made.append(step)

    def stop_reason(self) -> None:
        return None


def run(args: argparse.Namespace) -> int:
    """Build the model, start the engine on it, time every case; one JSON line per result."""

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    side = 64 if args.tiny else 1328
    env = environment(device)
    record = Recorder(Path(args.out) / f"{env['run']}-img2img.jsonl", env)
    record("env", **{k: v for k, v in env.items() if k != "run"}, argv=sys.argv[1:])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwen-i2i-"))
    started = time.perf_counter()
    pipe = (build_tiny if args.tiny else build_full_pipeline)(device, dtype, workdir)
    sync(device)
    record("build", seconds=round(time.perf_counter() - started, 2))
    lora_dir, lora_file = lora_for(record, pipe.transformer, workdir, args.tiny)
    settings = engine_settings(
        args,
        workdir,
        lora_dir,
        lora_file,
        fp8=args.fp8,
        previews=True,
        preview_interval_s=args.preview_interval,
    )
    generator = engine_generator(pipe, settings, device, dtype, max_side=side, tiny=args.tiny)
    t0 = time.perf_counter()
    generator._apply_speedups()
    if args.tiny:
        tiny_compile(generator)
    generator.warmup()
    sync(device)
    record("engine_start", seconds=round(time.perf_counter() - t0, 2), fp8=args.fp8)

    def timed(case: str, request: Any, previews: bool = False, **fields: Any) -> bytes:
        # Followed as the bot follows a job: the engine syncs for progress now and then.
        control = Followed(previews)
        made = control.made
        out: dict[str, Any] = {}
        with peak_memory(device, out):
            result = generator.generate(request, control)
        record(
            case,
            mode=str(request.mode),
            size=f"{result.image.width}x{result.image.height}",
            steps=result.steps,
            run_s=round(result.run_s, 4),
            per_step_s=round(result.run_s / max(result.steps, 1), 4),
            previews=len(made),
            preview_steps=made,
            **out,
            **fields,
        )
        return result.image.png

    images: dict[str, bytes] = {}

    def text_to_image() -> None:
        generator.warm_once(_request("quality", 1), 2)
        # Off, on, off again: the preview cost is "on" against the mean of the two "off" runs.
        images["q"] = timed("t2i_quality_previews_off", _request("quality", 1), attempt=1)
        timed("t2i_quality_previews_on", _request("quality", 1), previews=True)
        if not args.short:
            timed("t2i_quality_previews_off", _request("quality", 1), attempt=2)
        timed("t2i_fast", _request("fast", 1))

    guarded(record, "t2i")(text_to_image)
    source = images.get("q")
    if source is None:
        return 1

    def variations() -> None:
        for mode in ("quality", "fast"):
            for attempt in (1,) if args.short and mode == "quality" else (1, 2):
                request = _request(
                    mode, 2 + attempt, images=(source,), strength=STRENGTH, parent_job_id="src"
                )
                timed(f"i2i_{mode}", request, strength=STRENGTH, attempt=attempt)
        # Previews on a variation too: what a member sees while Vary runs.
        request = _request("quality", 9, images=(source,), strength=STRENGTH)
        timed("i2i_quality_previews_on", request, previews=True, strength=STRENGTH)

    guarded(record, "i2i")(variations)
    return 0


def main(argv: list[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--preview-interval", type=float, default=1.5)
        parser.add_argument(
            "--short", action="store_true", help="one run of each slow case (a short device lease)"
        )

    return run_script(__doc__, run, argv, options=options)


if __name__ == "__main__":
    sys.exit(main())
