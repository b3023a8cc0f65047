"""Command line: ``python -m engine tiny DIR`` and ``python -m engine generate PROMPT ...``.

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
from engine.presets import ASPECTS, BUILTIN_STYLES, DEFAULT_ASPECT, DEFAULT_STYLE, MAX_SEED
from engine.terminal import StepBar

DESCRIPTION = (
    "Render an image with Qwen-Image without Discord (generate), or build a tiny random model "
    "for dry runs without a GPU or a download (tiny)."
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
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


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
