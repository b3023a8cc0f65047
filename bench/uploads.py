"""What a crafted progressive JPEG costs: Pillow decoding it, against the bot's upload check
refusing it (issue 20 item 1).

The JPEG is a flat ``--side``² image whose shortest scan (an empty AC refinement, a few dozen
bytes) is repeated ``--scans`` times before the end: small on the wire, and a decoder walks the
whole image once per scan. ``validate_upload`` counts the scans before decoding anything.
Times are CPU seconds of this process (``time.process_time``), so other load on the machine
changes them little.

    python bench/uploads.py                    # the figures in docs/PERFORMANCE.md
    python bench/uploads.py --tiny             # a quick run of the same path
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence

from PIL import Image

from bot.uploads import UploadRefused, validate_upload


def many_scans(extra: int, side: int) -> bytes:
    """A progressive JPEG with ``extra`` more (empty) scans than Pillow writes."""
    out = io.BytesIO()
    Image.new("RGB", (side, side), (120, 40, 200)).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    ends = [*starts[1:], len(data) - 2]
    empty = min((data[a:b] for a, b in zip(starts, ends, strict=True)), key=len)
    return data[:-2] + empty * extra + b"\xff\xd9"


def measure(extra: int, side: int) -> dict[str, object]:
    data = many_scans(extra, side)
    started = time.process_time()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    decode_s = time.process_time() - started
    started = time.process_time()
    try:
        validate_upload(data, "image/jpeg", "scans.jpg")
        verdict = "accepted"
    except UploadRefused:
        verdict = "refused"
    check_s = time.process_time() - started
    return {
        "scans": data.count(b"\xff\xda"),
        "side": side,
        "bytes": len(data),
        "pillow_decode_cpu_s": round(decode_s, 3),
        "upload_check": verdict,
        "upload_check_cpu_ms": round(check_s * 1000, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--scans", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--tiny", action="store_true", help="256 px and 200 scans")
    args = parser.parse_args(argv)
    side, counts = (256, [200]) if args.tiny else (args.side, args.scans)
    for extra in counts:
        print(json.dumps(measure(extra, side)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
