"""bench/memory.py --tiny: every memory-plan case's code path on the CPU, with the full-size
cards' plans carried out on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from bench import memory


def test_tiny_memory_benchmark_runs_every_plan_and_compares_with_the_reference(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    argv = ["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work"), "--no-compile"]
    argv += ["--cases", "uncapped,stock,plan,edit", "--caps", "48,16", "--edit-caps", "16"]
    argv += ["--short", "2,3", "--save-reference", str(tmp_path / "ref"), "--host-gib", "64"]
    assert memory.main(argv) == 0
    rows = [json.loads(line) for f in out.glob("*.jsonl") for line in f.open()]
    assert not [r for r in rows if "error" in r]
    cases = {(r["case"], r.get("mode")) for r in rows}
    for label in ("reference", "fastest", "plan_48.0", "plan_16.0"):
        assert (label, "fast") in cases and (label, "quality") in cases, label
    assert ("stock_resident", "quality") in cases and ("stock_group_offload", "8 steps") in cases
    assert ("engine_edit", "edit") in cases
    plans = {r["label"]: r for r in rows if r["case"] == "plan"}
    assert plans["plan_48.0"]["weights"] == "fp8"
    assert plans["plan_16.0"]["weights"] == "int4"
    assert plans["plan_16.0"]["moved_per_fast_image_gib"] > 0
    # Each compact plan's image is compared with the bf16 reference, pixel by pixel.
    fast = {r["case"]: r for r in rows if r.get("mode") == "fast"}
    assert fast["plan_16.0"]["pixel_mean_diff"] > 0
    assert fast["plan_16.0"]["size"] == fast["reference"]["size"] == "64x64"
    forwards = {r["variant"]: r for r in rows if r["case"] == "forward"}
    assert forwards["reference"]["rel_error"] is None
    assert 0 < forwards["plan_16.0"]["rel_error"] < 0.5
    assert (tmp_path / "ref" / "fast.png").exists()
