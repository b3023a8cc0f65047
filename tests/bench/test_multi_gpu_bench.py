"""bench/multi_gpu.py --tiny: two gloo ranks run the two-GPU benchmark's code path on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_two_rank_benchmark_matches_the_one_rank_image(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone", str(ROOT / "bench" / "multi_gpu.py"), "--tiny",
        "--out", str(out), "--workdir", str(tmp_path / "work"), "--cases", "stock-fast,one,cfg",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for f in out.glob("*.jsonl") for line in f.open()]
    assert not [r for r in rows if "error" in r]
    cases = {r["case"] for r in rows}
    assert {"stock_8steps", "engine_1gpu", "engine_2gpu", "engine_2gpu_vs_1gpu"} <= cases
    (two,) = [r for r in rows if r["case"] == "engine_2gpu"]
    assert two["gpus"] == 2 and two["steps"] == 50 and two["true_cfg"]
    (same,) = [r for r in rows if r["case"] == "engine_2gpu_vs_1gpu"]
    assert same["max_pixel_diff"] == 0  # eager float32: bit for bit the one-process image
    assert all(r["world"] == 2 and r["card"] == "cpu" for r in rows)
