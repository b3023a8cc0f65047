"""Checks an uploaded image (``/edit``) before anything is charged or queued.

An attachment is untrusted input: its declared content type comes from the file name, its bytes
from anyone. ``validate_upload`` accepts PNG, JPEG, WebP and GIF (first frame) when the declared
type and the file's magic bytes agree, within a byte cap (below Discord's upload limit), a pixel
cap checked on the header before any pixel is decoded (a small file claiming 100000×100000
pixels costs nothing), and a minimum size. What comes out is what the model gets: EXIF rotation
applied, alpha composited on white, at most ``MAX_OUTPUT_PIXELS`` (the model reads ~1 MP of it),
colours converted to sRGB from an embedded ICC profile, re-encoded as an RGB PNG without
metadata (no GPS or camera data, no profile: one of over 1 MB made the PNG unreadable to Pillow
itself), with its SHA-256 (the image store's key and the name the result's PNG chunks give it).

Every refusal raises ``UploadRefused`` whose ``user_message`` is short and safe to show.
Pure PIL and stdlib: no discord, no torch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import logging
import math
import warnings

from PIL import Image, ImageCms, ImageOps

from engine.contract import MAX_INPUT_ASPECT_RATIO

logger = logging.getLogger(__name__)

# Discord lets anyone upload 10 MiB; the bot's setting may lower the cap, never raise it.
MAX_UPLOAD_BYTES = 10 * 2**20
# 4096×4096: any photo a phone takes; far below PIL's own bomb threshold (89 MP).
MAX_UPLOAD_PIXELS = 4096 * 4096
MIN_SIDE = 64
# A JPEG's start-of-scan marker, and how many scans an upload may have: libjpeg's progressive
# default has 10, mozjpeg's up to about 12; baseline JPEGs have one per colour component or one.
# 0xFF 0xDA never occurs inside entropy-coded data (every 0xFF there is followed by 0x00 or a
# restart marker), so counting it counts the scans, plus one per embedded EXIF thumbnail.
SOS = b"\xff\xda"
MAX_JPEG_SCANS = 32
# What is kept of a large upload: the edit model reads ~1 MP (1024² VAE, 384² vision), so 2 MP
# loses nothing and keeps the PNG well under the job contract's per-image cap.
MAX_OUTPUT_PIXELS = 2 * 1024 * 1024

# PIL format name -> the content types that may declare it
FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": ("image/png", "image/apng"),
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "WEBP": ("image/webp",),
    "GIF": ("image/gif",),
}
_ACCEPTED = "PNG, JPEG, WebP or GIF"


class UploadRefused(ValueError):
    """An upload that will not be used; ``user_message`` says why in plain words."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


@dataclasses.dataclass(frozen=True, slots=True)
class ValidatedImage:
    """An upload made safe: RGB PNG bytes, their SHA-256 and what the user sent."""

    png: bytes
    sha256: str
    width: int
    height: int
    source_format: str
    filename: str


def sniff_format(data: bytes) -> str | None:
    """The image format the magic bytes name, whatever the file is called."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _declared_format(declared_type: str | None) -> str | None:
    """The format a content type declares; None when none was given. Refuses other types."""
    if not declared_type:
        return None
    mime = declared_type.split(";", 1)[0].strip().lower()
    for name, types in FORMATS.items():
        if mime in types:
            return name
    raise UploadRefused(f"That file is not an image I can edit. Send a {_ACCEPTED} image.")


def size_text(size: int) -> str:
    """A byte count as members read it: "10 MB", "2.5 MB", "512 kB"."""
    if size >= 2**20:
        return f"{size / 2**20:.1f}".removesuffix(".0") + " MB"
    return f"{size // 1024} kB"


_size = size_text


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f}"


def _open(data: bytes, fmt: str, name: str, max_pixels: int) -> Image.Image:
    """Open, check the header's size, then decode (GIF: the first frame)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width * height > max_pixels:
                raise UploadRefused(
                    f"{name} is too large ({width}×{height}); the limit is "
                    f"{_megapixels(max_pixels)} megapixels."
                )
            if min(width, height) < MIN_SIDE:
                raise UploadRefused(
                    f"{name} is too small ({width}×{height}); send at least "
                    f"{MIN_SIDE}×{MIN_SIDE} pixels."
                )
            if max(width, height) > MAX_INPUT_ASPECT_RATIO * min(width, height):
                raise UploadRefused(
                    f"{name} is {width}×{height}, longer than {MAX_INPUT_ASPECT_RATIO}:1; "
                    "crop it closer to the part to edit."
                )
            if fmt == "JPEG" and data.count(SOS) > MAX_JPEG_SCANS:
                # Each scan of a progressive JPEG is decoded over the whole image: thousands
                # of tiny ones make a small file pin a CPU for minutes (issue 20 item 1).
                raise UploadRefused(
                    f"{name} is a JPEG of {data.count(SOS):,} scans; the limit is "
                    f"{MAX_JPEG_SCANS}. Save it again as a plain JPEG or PNG."
                )
            if fmt == "GIF":
                image.seek(0)  # an animation edits its first frame
            image.load()
    except UploadRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRefused(
            f"{name} is too large; the limit is {_megapixels(max_pixels)} megapixels."
        ) from None
    except Exception as exc:  # PIL raises many types for damaged files
        logger.info("upload %r refused: %s", name, exc.__class__.__name__)
        raise UploadRefused(
            f"{name} could not be read: the file is damaged or incomplete."
        ) from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (the model sees no alpha)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _in_srgb(rgb: Image.Image, profile: object) -> Image.Image:
    """The pixels as sRGB would show them, when the upload names an RGB colour profile.

    The model and the stored PNG read plain sRGB; a Display P3 photo kept as stored would lose
    saturation. A profile lcms cannot read, or one for another colour space, leaves the pixels as
    stored: the image still works, only its colours may be a little off."""
    if not isinstance(profile, bytes) or not profile:
        return rgb
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if source.profile.xcolor_space.strip() != "RGB":
            return rgb
        converted = ImageCms.profileToProfile(rgb, source, _SRGB, outputMode="RGB")
    except Exception as exc:  # lcms raises PyCMSError, OSError or ValueError for bad profiles
        logger.info("upload colour profile ignored: %s", exc.__class__.__name__)
        return rgb
    return converted if isinstance(converted, Image.Image) else rgb


def validate_upload(
    data: bytes,
    declared_type: str | None,
    filename: str,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
) -> ValidatedImage:
    """The upload as a safe RGB PNG, or ``UploadRefused`` with the reason.

    ``declared_type`` is the attachment's content type (None when Discord gave none: then the
    magic bytes alone decide). ``max_bytes`` and ``max_pixels`` come from the bot's settings.
    """
    name = (filename or "The image").strip()[:80] or "The image"
    if not data:
        raise UploadRefused(f"{name} is empty.")
    if len(data) > max_bytes:
        raise UploadRefused(f"{name} is {_size(len(data))}; the limit is {_size(max_bytes)}.")
    declared = _declared_format(declared_type)
    actual = sniff_format(data)
    if actual is None:
        raise UploadRefused(f"{name} is not a {_ACCEPTED} image.")
    if declared is not None and declared != actual:
        raise UploadRefused(
            f"{name} says it is {declared} but its contents are {actual}; "
            "re-save it as a plain image and try again."
        )
    image = _open(data, actual, name, max_pixels)
    profile = image.info.get("icc_profile")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: keep the pixels as stored
        logger.info("upload %r: unreadable EXIF orientation ignored", name)
    rgb = _in_srgb(_to_rgb(image), profile)
    rgb.info.pop("icc_profile", None)  # never written into the PNG (see the module docstring)
    if rgb.width * rgb.height > MAX_OUTPUT_PIXELS:
        scale = math.sqrt(MAX_OUTPUT_PIXELS / (rgb.width * rgb.height))
        size = (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", optimize=False, compress_level=6)
    png = buffer.getvalue()
    return ValidatedImage(
        png=png,
        sha256=hashlib.sha256(png).hexdigest(),
        width=rgb.width,
        height=rgb.height,
        source_format=actual,
        filename=name,
    )


def without_metadata(png: bytes) -> bytes:
    """A stored image re-encoded as a PNG without its text chunks (the prompt, the parameters).

    The Edit button edits a copy of the source of the editor's own: its bytes, and so its file
    in the content-addressed store, are then not the source's, and the source's owner deleting
    or erasing their image removes their file and their prompt with it. Our own stored images
    need none of an upload's checks; any pixel size is kept.
    """
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


# How long one upload's checks may take: a ~2 MP image decodes in well under a second; past
# this the member is told to send a plainer file (the thread finishes on its own meanwhile).
DECODE_TIMEOUT_S = 10.0
DECODE_WORKERS = 2


class UploadChecks:
    """``validate_upload`` on threads of its own: at most ``workers`` uploads are decoded at
    once, each answered within ``timeout_s``, so hostile files can occupy these threads and
    nothing else; deliveries (encoding, the image store) run on the default executor and never
    wait behind them."""

    def __init__(self, workers: int = DECODE_WORKERS, timeout_s: float = DECODE_TIMEOUT_S) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="imagine-upload"
        )
        self.timeout_s = timeout_s

    async def validate(
        self, data: bytes, declared_type: str | None, filename: str, *, max_bytes: int
    ) -> ValidatedImage:
        """``validate_upload`` in the pool; ``UploadRefused`` when it takes too long."""
        loop = asyncio.get_running_loop()
        check = functools.partial(
            validate_upload, data, declared_type, filename, max_bytes=max_bytes
        )
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, check), self.timeout_s)
        except TimeoutError:
            name = (filename or "The image").strip()[:80] or "The image"
            logger.warning("upload %r: its checks took over %.0f s", name, self.timeout_s)
            raise UploadRefused(
                f"{name} took too long to read; save it again as a plain PNG or JPEG."
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
