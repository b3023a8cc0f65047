"""The engine reads only PNG from a job: the bot sends every image it validated, stored or
uploaded, as a PNG, and a job from Redis is untrusted. Any other format Pillow knows (TIFF in
float mode, DDS, SGI, PCX, TGA, ICO, QOI, PPM, ...) is refused as an invalid job before a pixel
is decoded. issue 20 item 6."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engine.contract import FailureKind, JobFailed
from engine.edit.images import decode_edit_image
from engine.img2img import load_init_image

OTHER_FORMATS = [
    ("TIFF", "F"),
    ("PPM", "RGB"),
    ("QOI", "RGB"),
    ("TGA", "RGB"),
    ("PCX", "RGB"),
    ("SGI", "RGB"),
    ("ICO", "RGB"),
    ("DDS", "RGB"),
    ("BMP", "RGB"),
    ("JPEG", "RGB"),
    ("WEBP", "RGB"),
    ("GIF", "RGB"),
]


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), OTHER_FORMATS, ids=[f for f, _ in OTHER_FORMATS])
def test_an_edit_image_in_another_format_is_an_invalid_job(fmt: str, mode: str) -> None:
    """issue 20 item 6: ``engine/edit/images.py`` opened any format Pillow knows."""
    with pytest.raises(JobFailed) as failed:
        decode_edit_image(encoded(fmt, mode))
    assert failed.value.kind == FailureKind.INVALID


@pytest.mark.parametrize(("fmt", "mode"), OTHER_FORMATS, ids=[f for f, _ in OTHER_FORMATS])
def test_a_variation_source_in_another_format_is_an_invalid_job(fmt: str, mode: str) -> None:
    """issue 20 item 6: ``engine/img2img.py`` opened any format Pillow knows."""
    with pytest.raises(JobFailed) as failed:
        load_init_image(encoded(fmt, mode), 64, 64)
    assert failed.value.kind == FailureKind.INVALID
    assert failed.value.user_message == "The source image could not be read as a PNG."


def test_a_png_is_still_read_by_both() -> None:
    """issue 20 item 6: what the bot sends keeps working."""
    png = encoded("PNG")
    assert decode_edit_image(png).size == (64, 64)
    assert load_init_image(png, 32, 32).size == (32, 32)
