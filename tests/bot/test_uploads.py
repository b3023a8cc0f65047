"""Uploaded images for /edit: every refusal has a clear message; what passes comes out as an
upright RGB PNG on white, with the hash it is stored under."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

from bench import uploads as bench_uploads
from bot import uploads
from bot.uploads import (
    MAX_OUTPUT_PIXELS,
    MAX_UPLOAD_BYTES,
    UploadRefused,
    ValidatedImage,
    validate_upload,
)
from engine.contract import MAX_EDIT_IMAGE_BYTES


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def refusal(data: bytes, declared: str | None = "image/png", name: str = "cat.png") -> str:
    with pytest.raises(UploadRefused) as refused:
        validate_upload(data, declared, name)
    return refused.value.user_message


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width``×``height`` (a decompression bomb's
    shape: the pixels would only exist once decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def decoded(result: ValidatedImage) -> Image.Image:
    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG" and image.mode == "RGB"
    assert hashlib.sha256(result.png).hexdigest() == result.sha256
    return image


# ------------------------------------------------------------------- refusals
def test_a_truncated_png_is_refused_as_damaged() -> None:
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "PNG")
    message = refusal(data[: len(data) // 2])
    assert message == "cat.png could not be read: the file is damaged or incomplete."


def test_a_text_file_named_png_is_refused() -> None:
    assert refusal(b"hello, this is not a picture\n") == (
        "cat.png is not a PNG, JPEG, WebP or GIF image."
    )


def test_a_declared_type_that_is_not_an_image_is_refused() -> None:
    data = encode(Image.new("RGB", (80, 80)), "PNG")
    assert "not an image I can edit" in refusal(data, declared="application/pdf")


def test_a_jpeg_declared_as_png_is_refused() -> None:
    data = encode(Image.new("RGB", (80, 80)), "JPEG")
    assert refusal(data, declared="image/png") == (
        "cat.png says it is PNG but its contents are JPEG; re-save it as a plain image and "
        "try again."
    )


def test_a_one_pixel_image_is_refused_as_too_small() -> None:
    message = refusal(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert message == "cat.png is too small (1×1); send at least 64×64 pixels."


def test_a_file_over_the_byte_cap_is_refused_before_it_is_read() -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_UPLOAD_BYTES
    assert refusal(data) == "cat.png is 10 MB; the limit is 10 MB."
    noise = encode(Image.effect_noise((300, 300), 80).convert("RGB"), "PNG")
    with pytest.raises(UploadRefused) as refused:  # a server's lower setting
        validate_upload(noise, "image/png", "cat.png", max_bytes=50 * 1024)
    assert refused.value.user_message.endswith("; the limit is 50 kB.")


def test_an_image_over_the_pixel_cap_is_refused() -> None:
    data = encode(Image.new("1", (4100, 4100)), "PNG")  # 16.8 MP, a few kB
    assert refusal(data) == "cat.png is too large (4100×4100); the limit is 16.8 megapixels."


def test_a_decompression_bomb_is_refused_without_decoding_it() -> None:
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    assert refusal(bomb) == "cat.png is too large; the limit is 16.8 megapixels."
    # Below PIL's own bomb threshold the header check refuses it before any pixel exists.
    assert "too large (5000×5000)" in refusal(png_header_only(5000, 5000))


def test_an_empty_file_is_refused() -> None:
    assert refusal(b"") == "cat.png is empty."


# ------------------------------------------------------------------- accepted uploads
def test_a_jpeg_with_exif_orientation_6_comes_out_upright() -> None:
    stored = Image.new("RGB", (120, 80), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 60, 80))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    result = validate_upload(data, "image/jpeg", "phone.jpg")
    image = decoded(result)
    assert (result.width, result.height) == image.size == (80, 120)
    red, _, blue = image.getpixel((40, 10))  # the stored left half is now on top
    assert red > 200 and blue < 60
    red, _, blue = image.getpixel((40, 110))
    assert blue > 200 and red < 60
    assert result.source_format == "JPEG"


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 40, 80))
    image = decoded(validate_upload(encode(rgba, "PNG"), "image/png", "logo.png"))
    assert image.getpixel((60, 40)) == (255, 255, 255)
    assert image.getpixel((10, 40)) == (255, 0, 0)


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (80, 80), (255, 0, 0)), Image.new("RGB", (80, 80), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    result = validate_upload(buffer.getvalue(), "image/gif", "anim.gif")
    red, _, blue = decoded(result).getpixel((40, 40))
    assert red > 200 and blue < 60
    assert result.source_format == "GIF"


def test_a_webp_is_accepted_without_a_declared_type() -> None:
    data = encode(Image.new("RGB", (96, 64), (0, 128, 0)), "WEBP", lossless=True)
    result = validate_upload(data, None, "leaf.webp")
    assert decoded(result).getpixel((10, 10)) == (0, 128, 0)
    assert (result.width, result.height, result.source_format) == (96, 64, "WEBP")


def test_a_large_photo_is_scaled_to_the_working_size_within_the_job_cap() -> None:
    # Three independent noise bands: the worst case for PNG's compression.
    noise = Image.merge("RGB", [Image.effect_noise((2400, 1600), 80) for _ in range(3)])
    result = validate_upload(encode(noise, "JPEG", quality=90), "image/jpeg", "big.jpg")
    assert result.width * result.height <= MAX_OUTPUT_PIXELS
    assert abs(result.width / result.height - 1.5) < 0.01
    assert len(result.png) <= MAX_EDIT_IMAGE_BYTES


# ------------------------------------------------------------------- colour profiles
def _srgb_profile(size: int | None = None) -> bytes:
    """The sRGB profile, padded to ``size`` bytes (the header's length follows): a valid profile
    as large as an attacker (or a print shop) likes."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    if size is not None:
        profile += b"\x00" * (size - len(profile))
        profile[0:4] = struct.pack(">I", len(profile))
    return bytes(profile)


@pytest.mark.parametrize(
    "profile",
    [_srgb_profile(1_200_000), b"not a colour profile " * 60_000],
    ids=["a valid 1.2 MB profile", "1.2 MB of garbage"],
)
def test_a_large_icc_profile_does_not_travel_into_the_stored_png(profile: bytes) -> None:
    """issue 20 item 3: ``convert("RGB")`` kept ``info["icc_profile"]``; PNG re-encoding wrote it
    as an iCCP chunk past Pillow's 1 MB text limit, so the image store's thumbnail (and the
    engine) could not open the validated upload."""
    from bot.store import make_thumbnail

    data = encode(
        Image.new("RGB", (100, 80), (200, 30, 40)), "JPEG", quality=95, icc_profile=profile
    )
    result = validate_upload(data, "image/jpeg", "print.jpg")
    image = decoded(result)
    assert "icc_profile" not in image.info
    red, green, blue = image.getpixel((50, 40))
    assert abs(red - 200) <= 6 and green <= 40 and blue <= 50
    _, width, height = make_thumbnail(result.png)
    assert (width, height) == (100, 80)


def test_an_srgb_profile_leaves_the_colours_as_they_were() -> None:
    """issue 20 item 3: converting to sRGB first (so a Display P3 photo keeps its colours) is
    the identity for an sRGB upload; the profile itself is dropped."""
    source = Image.new("RGB", (80, 80), (12, 140, 230))
    data = encode(source, "PNG", icc_profile=_srgb_profile())
    image = decoded(validate_upload(data, "image/png", "srgb.png"))
    assert "icc_profile" not in image.info
    assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((5, 5)), (12, 140, 230), strict=True))


# ---------------------------------------------------------------------- issue 20 items 1, 2
def many_scans(extra: int, side: int = 2048) -> bytes:
    """A progressive JPEG with ``extra`` more, empty scans (35 bytes or so each): small, and a
    decoder processes every scan over the whole image (issue 20 item 1: 20,000 of them decoded
    for 21 s, 716 KB). ``bench/uploads.py`` measures it."""
    return bench_uploads.many_scans(extra, side)


def test_a_jpeg_of_thousands_of_scans_is_refused_before_it_is_decoded() -> None:
    """issue 20 item 1: refused at once by counting its scans; nothing is decoded."""
    crafted = many_scans(2_000)
    assert len(crafted) < 200_000 and crafted.count(b"\xff\xda") > 2_000
    started = time.process_time()
    message = refusal(crafted, "image/jpeg", "scans.jpg")
    assert time.process_time() - started < 1.0
    assert "2,010 scans" in message and "limit is 32" in message


@pytest.mark.parametrize("scans", [1, 10, 12])
def test_ordinary_jpegs_of_a_few_scans_are_accepted(scans: int) -> None:
    """Baseline JPEGs, libjpeg's progressive default (10 scans) and mozjpeg's (up to ~12)."""
    image = Image.effect_noise((128, 96), 30).convert("RGB")
    data = encode(image, "JPEG") if scans == 1 else many_scans(scans - 10, side=128)
    assert data.count(b"\xff\xda") <= 32
    checked = validate_upload(data, "image/jpeg", "photo.jpg")
    assert checked.source_format == "JPEG"


@pytest.mark.parametrize("size", [(64, 2000), (3000, 100), (64, 262144)])
def test_an_extreme_aspect_ratio_is_refused(size: tuple[int, int]) -> None:
    """issue 20 item 2: 64×262144 passed (as 22×92681) and crashed the edit pipeline."""
    width, height = size
    data = (
        png_header_only(width, height)
        if width * height > 4096**2
        else encode(Image.new("RGB", size, (9, 9, 9)), "PNG")
    )
    message = refusal(data, "image/png", "strip.png")
    assert "longer than 20:1" in message or "too large" in message
    assert validate_upload(encode(Image.new("RGB", (64, 1280)), "PNG"), None, "ok.png")


async def test_hostile_uploads_never_hold_up_a_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 20 item 1: uploads were checked on the default thread pool, the one every delivery
    uses (encoding, the image store); a dozen slow files would have held deliveries up. Now at
    most two are decoded at once, on threads of their own, each answered within its timeout."""
    release = threading.Event()

    def slow(*args: object, **kwargs: object) -> ValidatedImage:
        release.wait(5)  # a decode that takes minutes, as the crafted JPEG did
        raise UploadRefused("never reached")

    monkeypatch.setattr(uploads, "validate_upload", slow)
    checks = uploads.UploadChecks(workers=2, timeout_s=0.5)
    try:
        hostile = [
            asyncio.ensure_future(checks.validate(b"x", None, f"{n}.jpg", max_bytes=2**20))
            for n in range(12)
        ]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await asyncio.to_thread(time.sleep, 0.01)  # a delivery's work on the default pool
        assert time.perf_counter() - started < 1.0
        answers = await asyncio.wait_for(asyncio.gather(*hostile, return_exceptions=True), 2.0)
        assert all(isinstance(a, UploadRefused) and "too long" in a.user_message for a in answers)
    finally:
        release.set()
        checks.close()
