"""bench/batching.py --tiny: the batching measurement's code path on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import batching


@pytest.mark.slow
def test_tiny_batching_benchmark_records_every_batch(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work")]
    assert batching.main(argv) == 0
    rows = [json.loads(line) for f in out.glob("*.jsonl") for line in f.open()]
    assert not [r for r in rows if "error" in r]
    forward = [r for r in rows if r["case"] == "forward"]
    assert [(r["size"], r["batch"]) for r in forward] == [
        (f"{w}x{h}", b) for w, h in batching.TINY_SIZES for b in batching.BATCHES
    ]
    assert all(r["per_image_s"] > 0 for r in forward)
    assert len([r for r in rows if r["case"] == "forward_lone_after"]) == len(batching.TINY_SIZES)
    fast = [r for r in rows if r["case"] == "fast_images"]
    assert [r["batch"] for r in fast] == list(batching.BATCHES)
    assert all(r["images_per_hour"] > 0 for r in fast)
