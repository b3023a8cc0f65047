"""Command line: ``python -m engine tiny DIR``, ``python -m engine generate PROMPT ...`` and
``python -m engine plan``.

Outside harnesses drive the project through these two commands; keep their flags stable.
(``--help`` shows ``DESCRIPTION``, not this note.)
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path

from PIL import Image

from engine.contract import JobFailed, JobRequest, Mode
from engine.planning import WeightsSetting
from engine.presets import ASPECTS, BUILTIN_STYLES, DEFAULT_ASPECT, DEFAULT_STYLE, MAX_SEED
from engine.terminal import StepBar

DESCRIPTION = (
    "Render an image with Qwen-Image without Discord (generate), build a tiny random model "
    "for dry runs without a GPU or a download (tiny), or show where the models would live on "
    "this card or a named one (plan)."
)
# --out: the file's extension picks the format; PNG keeps the parameters in its text chunks.
OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _out(value: str) -> Path:
    path = Path(value)
    if path.suffix.lower() not in OUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"--out must end in .png, .jpg, .jpeg or .webp (got {path.name!r})"
        )
    return path


def write_image(path: Path, png: bytes) -> str | None:
    """Write the result in the format ``path``'s extension names; returns a note when the
    generation parameters are not kept (only PNG carries them)."""
    fmt = OUT_FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "PNG":
        path.write_bytes(png)
        return None
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").save(path, format=fmt, quality=95)
    return f"{path.suffix.lower()[1:]} files keep no generation parameters; .png does"


def _seed(value: str) -> int:
    seed = int(value)
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be between 0 and {MAX_SEED}")
    return seed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="write a tiny random Qwen-Image pipeline (no download)")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--edit",
        action="store_true",
        help="write the tiny QwenImageEditPlusPipeline (for IMAGINE_EDIT_MODEL) instead; its "
        "text encoder and VAE are the text-to-image build's of the same seed",
    )

    gen = sub.add_parser("generate", help="render one image")
    gen.add_argument("prompt")
    gen.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(BUILTIN_STYLES))
    gen.add_argument("--aspect", default=DEFAULT_ASPECT, choices=list(ASPECTS))
    gen.add_argument("--negative", default=None)
    gen.add_argument("--seed", type=_seed, default=None)
    gen.add_argument("--mode", type=Mode, default=None, choices=list(Mode))
    gen.add_argument("--model", default=None, help="Hugging Face id or local path")
    gen.add_argument(
        "--out",
        type=_out,
        required=True,
        help="the image file: .png (with the parameters), .jpg or .webp",
    )
    plan = sub.add_parser(
        "plan",
        help="print the memory plan for this GPU, or for a card of --gpu-memory GiB",
    )
    plan.add_argument("--gpu-memory", type=_gib, default=None, metavar="GIB",
                      help="plan for this many GiB instead of this card's free memory")  # fmt: skip
    plan.add_argument("--capability", type=_capability, default=None, metavar="X.Y",
                      help="the card's compute capability (8.6 Ampere, 8.9 Ada, 9.0 Hopper); "
                      "default: this card's, else 8.9")  # fmt: skip
    plan.add_argument("--host-memory", type=_gib, default=None, metavar="GIB",
                      help="free host RAM to plan for (default: this machine's)")  # fmt: skip
    plan.add_argument("--weights", default=None, choices=[w.value for w in WeightsSetting])
    plan.add_argument("--no-edit", action="store_true", help="plan without the edit model")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _gib(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of GiB") from None
    if not 1 <= number <= 4096:
        raise argparse.ArgumentTypeError("give the GiB as a number from 1 to 4096")
    return number


def _capability(value: str) -> tuple[int, int]:
    major, _, minor = value.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r}: write the compute capability as 8.6")
    return int(major), int(minor)


def show_plan(args: argparse.Namespace) -> int:
    """``plan``: what the loader would decide, without loading anything."""
    import dataclasses

    from engine.placing import probe_card, probe_host
    from engine.planning import (
        QWEN_IMAGE,
        QWEN_IMAGE_WITH_EDIT,
        Card,
        PlanError,
        describe,
        plan_memory,
    )
    from engine.settings import EngineSettings, load_settings

    try:
        settings = load_settings(EngineSettings)
    except SystemExit as exc:
        return int(exc.code or 2)
    import torch

    device = torch.device("cuda") if torch.cuda.is_available() else None
    card = probe_card(device, settings.gpu_memory_gib) if device is not None else None
    size, source = args.gpu_memory, "--gpu-memory"
    if size is None and card is None and settings.gpu_memory_gib is not None:
        size, source = settings.gpu_memory_gib, "IMAGINE_GPU_MEMORY_GIB"
    if size is not None:
        capability = args.capability or (card.capability if card else None) or (8, 9)
        name = f"a {size:g} GiB card" if card is None else card.name
        card = Card(name, size, capability, source=source)
    elif card is None:
        print(
            "error: no CUDA GPU here; name a card's size with --gpu-memory GIB "
            "(or IMAGINE_GPU_MEMORY_GIB)",
            file=sys.stderr,
        )
        return 2
    elif args.capability is not None:
        card = dataclasses.replace(card, capability=args.capability)
    host = probe_host()
    if args.host_memory is not None:
        host = dataclasses.replace(host, available_gib=args.host_memory)
    edit = settings.edit_model.strip() and not args.no_edit
    weights = WeightsSetting(args.weights) if args.weights else settings.weights
    try:
        plan = plan_memory(card, host, QWEN_IMAGE_WITH_EDIT if edit else QWEN_IMAGE, weights)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(plan, card, host))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "tiny":
        from engine.tiny import build_tiny_edit_pipeline, build_tiny_pipeline

        if args.edit:
            path = build_tiny_edit_pipeline(args.dir, seed=args.seed)
            print(f"wrote a tiny random Qwen-Image-Edit pipeline to {path}")
            return 0
        path = build_tiny_pipeline(args.dir, seed=args.seed)
        print(f"wrote a tiny random Qwen-Image pipeline to {path}")
        return 0
    if args.command == "plan":
        return show_plan(args)

    from engine.settings import EngineSettings, load_settings

    overrides: dict[str, object] = {"warmup": False}
    if args.model:
        overrides["model"] = args.model
    try:  # before torch is imported: a typo in .env answers at once
        settings = load_settings(EngineSettings, **overrides)
    except SystemExit as exc:  # the error is printed, by variable, without any value
        return int(exc.code or 2)

    from engine.devices import EngineUnavailable
    from engine.pipeline import ImageGenerator

    started = time.perf_counter()
    try:
        generator = ImageGenerator.load(settings)
    except EngineUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loaded = time.perf_counter()
    request = JobRequest(
        job_id="cli",
        user_id=0,
        prompt=args.prompt,
        style=BUILTIN_STYLES[args.style],
        negative_prompt=args.negative,
        aspect=args.aspect,
        seed=args.seed,
        mode=args.mode or settings.default_mode,
    )
    bar = StepBar(sys.stderr)  # a progress line on a terminal, nothing when piped
    try:
        result = generator.generate(request, bar)
    except JobFailed as exc:
        bar.close()
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 1
    bar.close()
    image = result.image
    format_note = write_image(args.out, image.png)
    print(
        f"wrote {args.out} ({image.width}x{image.height}, seed {image.seed}, "
        f"{result.mode} mode, {result.steps} steps) in {result.run_s:.2f}s "
        f"(model load {loaded - started:.2f}s)"
    )
    for note in (result.note, format_note):
        if note:
            print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
