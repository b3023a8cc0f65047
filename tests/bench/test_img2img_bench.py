"""bench/img2img.py --tiny: the variations-and-previews benchmark's code path on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import img2img


@pytest.mark.slow
def test_tiny_img2img_benchmark_times_variations_and_previews(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--tiny", "--no-compile", "--out", str(out), "--workdir", str(tmp_path / "work")]
    assert img2img.main([*argv, "--preview-interval", "0"]) == 0
    rows = [json.loads(line) for f in out.glob("*.jsonl") for line in f.open()]
    assert not [r for r in rows if "error" in r]
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    assert [r["previews"] for r in by_case["t2i_quality_previews_off"]] == [0, 0]
    # From about 30 % of the 50 steps on, never the last one.
    shown = by_case["t2i_quality_previews_on"][0]["preview_steps"]
    assert shown and min(shown) >= 15 and max(shown) < 50
    # A variation at strength 0.65 runs about 0.65 x the mode's steps.
    quality = by_case["i2i_quality"]
    assert len(quality) == 2 and all(abs(r["steps"] - 0.65 * 50) <= 1 for r in quality)
    fast = by_case["i2i_fast"]
    assert len(fast) == 2 and all(abs(r["steps"] - 0.65 * 8) <= 1 for r in fast)
    assert by_case["i2i_quality_previews_on"][0]["previews"] > 0
