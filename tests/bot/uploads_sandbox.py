"""A process that checks uploads under a memory cap, for the fuzz tests of ``bot.uploads``.

Pillow allocates image memory outside Python's allocator, where ``tracemalloc`` cannot see it;
an address-space limit (``RLIMIT_AS``) on a process of its own can. After its imports and one
warm-up check it allows itself ``LIMIT_BYTES`` more, then answers requests on stdin/stdout:
a 4-byte length and a JSON header line (declared type, file name, and a pixel cap to use
instead of the bot's), then the file's bytes; one
JSON line back per request: the outcome (``accepted`` when the check passed and its PNG reads
back through the image store's thumbnailer, ``refused``, ``memory`` when an allocation failed
anywhere on the way, even if the failure was turned into a refusal, ``raised`` for anything
else) and the CPU seconds the check took.

Run as ``python -m tests.bot.uploads_sandbox``.
"""

from __future__ import annotations

import io
import json
import resource
import struct
import sys
import time

from PIL import Image

from bot.store import make_thumbnail
from bot.uploads import UploadRefused, validate_upload

LIMIT_BYTES = 256 * 2**20


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether a MemoryError is anywhere in this exception's chain (``from None`` keeps it as
    ``__context__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def check(
    data: bytes, declared: str | None, name: str, max_pixels: int | None = None
) -> dict[str, object]:
    started = time.process_time()
    try:
        if max_pixels is None:
            result = validate_upload(data, declared, name)
        else:
            result = validate_upload(data, declared, name, max_pixels=max_pixels)
        outcome, detail = "accepted", ""
        try:  # what passes must be what the store and the engine can read back
            make_thumbnail(result.png)
        except Exception as exc:
            outcome, detail = "raised", f"the accepted PNG is unreadable: {exc!r}"[:500]
    except UploadRefused as exc:
        outcome = "memory" if _out_of_memory(exc) else "refused"
        detail = exc.user_message
    except MemoryError:
        outcome, detail = "memory", ""
    except BaseException as exc:  # what the fuzz test exists to find
        outcome, detail = "raised", repr(exc)[:500]
    return {"outcome": outcome, "detail": detail, "cpu_s": time.process_time() - started}


def _warm_up() -> None:
    """Load every plugin and code path once, so the cap measures the check, not imports."""
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        buffer = io.BytesIO()
        Image.new("RGB", (80, 80), (1, 2, 3)).save(buffer, format=fmt)
        check(buffer.getvalue(), None, "warm-up")


def main() -> int:
    _warm_up()
    limit = _address_space() + LIMIT_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout
    stdout.write(json.dumps({"ready": True, "limit": limit}) + "\n")
    stdout.flush()
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return 0
        (size,) = struct.unpack(">I", head)
        header = json.loads(stdin.readline())
        data = stdin.read(size)
        answer = check(data, header["declared"], header["name"], header.get("max_pixels"))
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
