"""Uploads /edit refuses, in SimCord: each gets a clear private answer, nothing is charged,
queued or kept, and the bot goes on working (an /imagine and an /edit after them succeed)."""

from __future__ import annotations

import io
import struct
import time
import zlib
from typing import Any

import pytest
from PIL import Image

from bot import metrics
from tests.bot.edit.test_edit import local_engine  # noqa: F401 - this module's engine edits too
from tests.bot.harness import Harness
from tests.bot.test_uploads import many_scans

CAP_KIB = 64  # IMAGINE_MAX_UPLOAD_MB here: 1/16 MB


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_upload_mb": CAP_KIB / 1024}


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A well-formed PNG of a few dozen bytes whose header claims ``width``×``height``: a
    decompression bomb's shape (the pixels would only exist once decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def noise(side: int) -> bytes:
    return encode(Image.effect_noise((side, side), 64).convert("RGB"))


def refused_uploads() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, what the member reads) for every kind of bad upload."""
    whole = noise(128)
    big = noise(256)
    assert len(whole) < CAP_KIB * 1024 < len(big)
    return [
        (
            "beach.png",
            whole[: len(whole) // 2],
            "beach.png could not be read: the file is damaged or incomplete.",
        ),
        (
            "notes.png",
            b"shopping list: eggs, milk\n" * 4,
            "notes.png is not a PNG, JPEG, WebP or GIF image.",
        ),
        (
            "dot.png",
            encode(Image.new("RGB", (1, 1), (255, 0, 0))),
            "dot.png is too small (1×1); send at least 64×64 pixels.",
        ),
        ("huge.png", big, f"huge.png is larger than {CAP_KIB} kB, the limit for /edit."),
        (
            "bomb.png",
            header_only_png(100_000, 100_000),
            "bomb.png is too large; the limit is 16.8 megapixels.",
        ),
    ]


async def test_every_bad_upload_is_refused_privately_and_charges_nothing(
    harness: Harness,
) -> None:
    alice = harness.member("alice")
    refused_before = metrics.JOBS.labels("refused")._value.get()
    cases = refused_uploads()
    for name, data, answer in cases:
        result = await alice.slash(
            harness.channel, "edit", image=(name, data), instruction="make it pop"
        )
        assert result.ephemeral, name
        assert result.response.content == answer
    # A bad second image is refused like a bad first one.
    good = encode(Image.new("RGB", (64, 64), (0, 90, 200)))
    name, data, answer = cases[0]
    result = await alice.slash(
        harness.channel,
        "edit",
        image=("good.png", good),
        image2=(name, data),
        instruction="make it pop",
    )
    assert result.ephemeral and result.response.content == answer

    assert await harness.rows() == []  # no job row, nothing charged, nothing queued
    assert (await harness.quota(alice)).used == 0
    assert harness.engine.submitted == []
    assert metrics.JOBS.labels("refused")._value.get() == refused_before + len(cases) + 1
    assert (await harness.bot.images.report()).images == 0  # nothing of them was kept

    # The bot keeps working: an image and an edit right after.
    made = await alice.slash(harness.channel, "imagine", prompt="a calm lake")
    edited = await alice.slash(
        harness.channel, "edit", image=("good.png", good), instruction="add a swan"
    )
    await harness.wait_jobs()
    rows = await harness.rows()
    assert [(r.kind, r.status) for r in rows] == [("imagine", "done"), ("edit", "done")]
    for result in (made, edited):
        assert not result.ephemeral
        assert harness.message(result.response.id).attachments
    assert (await harness.quota(alice)).used == 2


async def test_an_empty_instruction_is_refused_in_edit_words(harness: Harness) -> None:
    alice = harness.member("alice")
    good = encode(Image.new("RGB", (64, 64), (0, 90, 200)))
    result = await alice.slash(
        harness.channel, "edit", image=("good.png", good), instruction="\u200b \u200b"
    )
    assert result.ephemeral
    assert result.response.content.startswith("Your instruction is empty.")
    assert await harness.rows() == []


async def test_a_blocked_word_in_an_instruction_is_refused_like_a_prompt(
    harness: Harness,
) -> None:
    await harness.admin.slash(harness.channel, "blocked add", word="gore")
    alice = harness.member("alice")
    good = encode(Image.new("RGB", (64, 64), (0, 90, 200)))
    result = await alice.slash(
        harness.channel, "edit", image=("good.png", good), instruction="add some gore"
    )
    assert result.ephemeral and "doesn't allow" in result.response.content
    assert await harness.rows() == []


async def test_a_jpeg_of_thousands_of_scans_is_refused_at_once_and_charges_nothing(
    harness: Harness,
) -> None:
    """issue 20 item 1: a small progressive JPEG of 2,000 empty scans took seconds of a CPU per
    image (minutes at 300,000) before it was accepted; it is refused on its scan count."""
    alice = harness.member("alice")
    crafted = many_scans(2_000, side=1024)
    assert len(crafted) < CAP_KIB * 1024
    started = time.perf_counter()
    result = await alice.slash(
        harness.channel, "edit", image=("scans.jpg", crafted), instruction="make it pop"
    )
    assert time.perf_counter() - started < 1.0
    assert result.ephemeral and "scans; the limit is 32" in result.response.content
    assert await harness.rows() == [] and (await harness.quota(alice)).used == 0
    assert harness.engine.submitted == []


@pytest.mark.parametrize("settings_overrides", [{"max_upload_mb": CAP_KIB / 1024}])
async def test_quota_and_queue_are_checked_before_any_upload_is_read(
    harness: Harness, settings_overrides: dict[str, Any]
) -> None:
    """issue 20 item 1: a member with no quota left (or a full queue) is answered before their
    uploads are downloaded or decoded: the answer is the quota's, although the upload is one
    that would have been refused as unreadable."""
    await harness.admin.slash(harness.channel, "limits set", daily_quota=1)
    alice = harness.member("alice")
    made = await alice.slash(harness.channel, "imagine", prompt="a calm lake")
    await harness.wait_jobs()
    assert not made.ephemeral and (await harness.quota(alice, limit=1)).used == 1
    result = await alice.slash(
        harness.channel, "edit", image=("junk.png", b"not an image at all"), instruction="x"
    )
    assert result.ephemeral and "used all 1 images of today's quota" in result.response.content
    assert len(await harness.rows()) == 1
