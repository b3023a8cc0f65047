"""``encode_png`` (used by ``engine.generation.png_with_parameters``): PNG compression, about
half a second per 1328² image with Pillow, taken off the critical path by spreading it over
threads."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL import Image

PNG_WORKERS = 8
PNG_LEVEL = 6  # zlib level PIL used here before: same size class, now in parallel


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_filter_up(pixels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """PNG "Up" filtering (each byte minus the byte above it): one vectorised subtraction.

    Measured on a photo-like 1328x1328 image: files about 15% larger than Pillow's adaptive
    per-row filtering, for a few milliseconds instead of most of Pillow's half second.
    """
    import numpy as np

    rows = pixels.reshape(pixels.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = 2  # filter type Up (the first row's "above" is zeros)
    out[:, 1:] = rows
    out[1:, 1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as PNG specifies
    return out


def encode_png(image: Image.Image, texts: list[tuple[str, str]], level: int = PNG_LEVEL) -> bytes:
    """PNG bytes with text chunks, the compression split across threads.

    Pieces of the filtered image are deflated independently (zlib releases the GIL) and joined
    with sync-flush boundaries into one valid zlib stream, so any PNG reader decodes it. For a
    1328x1328 image this takes tens of milliseconds on a many-core host instead of Pillow's
    0.47 s (measured on the benchmark machine).
    """
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    modes = {"RGB": (2, 3), "RGBA": (6, 4), "L": (0, 1)}
    if image.mode not in modes:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    color_type, channels = modes[image.mode]
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, channels)
    data = _png_filter_up(pixels).tobytes()
    pieces = max(1, min(PNG_WORKERS, len(data) // (256 * 1024)))
    step = -(-len(data) // pieces)
    parts = [data[i : i + step] for i in range(0, len(data), step)]

    def deflate(index: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        last = index == len(parts) - 1
        return compressor.compress(parts[index]) + compressor.flush(
            zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
        )

    if len(parts) == 1:
        deflated = [deflate(0)]
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            deflated = list(pool.map(deflate, range(len(parts))))
    stream = b"\x78\x9c" + b"".join(deflated) + struct.pack(">I", zlib.adler32(data))
    out = [b"\x89PNG\r\n\x1a\n"]
    out.append(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", image.width, image.height, 8,
                                               color_type, 0, 0, 0)))  # fmt: skip
    for key, value in texts:
        name = key.encode("latin-1", "replace")[:79]
        try:
            out.append(_png_chunk(b"tEXt", name + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:  # iTXt: uncompressed UTF-8, no language tag
            out.append(_png_chunk(b"iTXt", name + b"\0\0\0\0\0" + value.encode("utf-8")))
    out.append(_png_chunk(b"IDAT", stream))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)
