"""The edit's input images as the engine reads them, and the output size they imply."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps

from engine.contract import MAX_INPUT_IMAGE_PIXELS, FailureKind, JobFailed
from engine.inputs import check_aspect

# diffusers' target area for the output (``calculate_dimensions(1024 * 1024, ratio)``).
EDIT_TARGET_AREA = 1024 * 1024
MAX_EDIT_RATIO = 3.0


def edit_output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The output size for a first input image of ``width``×``height``.

    diffusers' own rule (``calculate_dimensions(1024², ratio)``, sides multiples of 32), with
    the ratio kept within 1:3..3:1 (a 40:1 strip would ask for a 6464×160 image); a ``max_side``
    (tests, CPU dry runs) then shrinks it with the same ratio, sides multiples of 16.
    """
    ratio = min(max(width / height, 1 / MAX_EDIT_RATIO), MAX_EDIT_RATIO)
    out_w = round(math.sqrt(EDIT_TARGET_AREA * ratio) / 32) * 32
    out_h = round(math.sqrt(EDIT_TARGET_AREA / ratio) / 32) * 32
    out_w, out_h = max(out_w, 32), max(out_h, 32)
    if max_side is not None and max(out_w, out_h) > max_side:
        scale = max_side / max(out_w, out_h)
        out_w = max(16, round(out_w * scale / 16) * 16)
        out_h = max(16, round(out_h * scale / 16) * 16)
    return out_w, out_h


def decode_edit_image(data: bytes) -> Image.Image:
    """An input image as RGB (EXIF rotation applied, alpha on white), with a pixel cap checked
    on the header before any pixel is decoded. The bot validated it already; a job from Redis
    is checked again here, since the engine trusts no input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=["PNG"])  # PNG only
            if image.width * image.height > MAX_INPUT_IMAGE_PIXELS:
                raise JobFailed(FailureKind.INVALID, "An edit image is too large.")
            check_aspect(image.width, image.height, "An edit image")
            image.load()
            image = ImageOps.exif_transpose(image)
    except JobFailed:
        raise
    except Exception as exc:  # PIL raises many types for bad input
        raise JobFailed(FailureKind.INVALID, "An edit image could not be read.") from exc
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")
