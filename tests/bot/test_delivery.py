"""Files that fit Discord's upload limit, and how a job key dates its interaction."""

from __future__ import annotations

import datetime as dt
import io
import random

import discord
import pytest
from PIL import Image

from bot.delivery import fit_to_limit, interaction_time, token_is_dead


def noise_png(width: int, height: int) -> bytes:
    rng = random.Random(1)
    image = Image.frombytes(
        "RGB", (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_within_the_limit_is_sent_as_is() -> None:
    png = noise_png(32, 32)
    data, name, note = fit_to_limit(png, len(png), "imagine-1")
    assert (data, name, note) == (png, "imagine-1.png", None)


def test_png_over_the_limit_becomes_webp_then_jpeg_then_smaller() -> None:
    png = noise_png(256, 256)  # ~197 KB of noise
    data, name, note = fit_to_limit(png, len(png) - 1, "imagine-2")
    assert name == "imagine-2.webp" and len(data) < len(png)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP" and image.size == (256, 256)
    assert note is not None and "quality 90" in note and "reproducible" in note

    tight = 20_000  # forces lower quality and finally a smaller image
    data, name, note = fit_to_limit(png, tight, "imagine-2")
    assert len(data) <= tight
    with Image.open(io.BytesIO(data)) as image:
        assert image.format in ("WEBP", "JPEG")
    assert note is not None and "upload limit" in note


def test_an_impossible_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        fit_to_limit(noise_png(64, 64), 10, "x")


def test_job_keys_date_their_interaction() -> None:
    when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    snowflake = discord.utils.time_snowflake(when)
    assert interaction_time(str(snowflake)) == when
    assert interaction_time(f"{snowflake}:2") == when
    assert interaction_time("not-a-key") is None


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "x"


@pytest.mark.parametrize(
    ("status", "code", "dead"),
    [
        (401, 50027, True),
        (404, 10015, True),
        (404, 10062, True),
        (404, 10008, False),
        (500, 0, False),
    ],
)
def test_dead_token_errors(status: int, code: int, dead: bool) -> None:
    error = discord.HTTPException(_Response(status), {"code": code, "message": "m"})  # type: ignore[arg-type]
    assert token_is_dead(error) is dead
