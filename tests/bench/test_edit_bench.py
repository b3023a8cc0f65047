"""bench/edit.py --tiny: the editing benchmark's code path (stock, engine, swap) on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import edit


@pytest.mark.slow
def test_tiny_edit_benchmark_records_every_case(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work")]
    argv += ["--compile-cache", str(tmp_path / "cc")]
    assert edit.main(argv) == 0
    rows = [json.loads(line) for f in out.glob("*.jsonl") for line in f.open()]
    assert not [r for r in rows if "error" in r]
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    for case in ("stock_edit", "engine_start", "engine_edit", "swap_pin"):
        assert len(by_case.get(case, [])) == 1, case
    assert by_case["stock_edit"][0]["size"] == by_case["engine_edit"][0]["size"] == "64x64"
    assert "compile" in by_case["engine_edit"][0]["optimizations"]
    for case, resident in (("swap_to_edit", edit.EDIT_NAME), ("swap_to_t2i", edit.T2I_NAME)):
        assert [r["resident"] for r in by_case[case]] == [[resident], [resident]]
        assert all(r["weights"] == "bf16" and r["moved_gib"] >= 0 for r in by_case[case])
