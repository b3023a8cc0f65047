"""How fast the disk gives the model's weights to ``engine.prefetch`` at each thread count.

Why: the engine's read-ahead uses a fixed number of threads and chunk size; this is how they
were chosen, on the machine the start-up figures in docs/PERFORMANCE.md come from. Each case
first takes the files out of the page cache (as after a reboot), then reads the first
``--gib`` GiB of them through ``engine.prefetch.Prefetch`` and reports GB/s.

    python bench/disk.py --model /root/model --threads 1,2,4,8,16,32 --gib 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu import drop_page_cache  # noqa: E402
from engine.prefetch import CHUNK_BYTES, Prefetch, weight_files  # noqa: E402


def first_gib(files: list[Path], gib: float) -> list[Path]:
    """The transformer's files first (the bulk of a start's reading), up to ``gib``."""
    ordered = sorted(files, key=lambda p: ("transformer" not in p.parts, str(p)))
    chosen: list[Path] = []
    total = 0
    for path in ordered:
        if total >= gib * 2**30:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen


def measure(files: list[Path], model: Path, threads: int, chunk: int, drop: bool) -> dict:
    evicted = drop_page_cache(model) if drop else "kept"
    reader = Prefetch(files, threads=threads, chunk_bytes=chunk, memory=lambda: 2**50)
    started = time.perf_counter()
    with reader:
        reader.wait()
    seconds = time.perf_counter() - started
    return {
        "case": "read_ahead",
        "threads": threads,
        "chunk_mib": chunk // 2**20,
        "bytes": reader.read,
        "gib": round(reader.read / 2**30, 2),
        "seconds": round(seconds, 2),
        "gb_s": round(reader.read / seconds / 1e9, 3),
        "page_cache": evicted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a saved pipeline folder")
    parser.add_argument("--threads", default="1,2,4,8,16,32")
    parser.add_argument("--chunk-mib", type=int, default=CHUNK_BYTES // 2**20)
    parser.add_argument("--gib", type=float, default=6.0, help="how much each case reads")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument("--keep-cache", action="store_true", help="do not evict (tests)")
    args = parser.parse_args(argv)
    model = Path(args.model)
    files = first_gib(weight_files(str(model)), args.gib)
    rows = []
    for threads in (int(n) for n in args.threads.split(",") if n.strip()):
        row = measure(files, model, threads, args.chunk_mib * 2**20, not args.keep_cache)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with Path(args.out).open("a") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
