"""bench/uploads.py --tiny: the crafted-JPEG benchmark's code path."""

from __future__ import annotations

import json

import pytest

from bench import uploads


def test_tiny_uploads_benchmark_refuses_the_crafted_jpeg(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert uploads.main(["--tiny"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["scans"] > 200 and row["side"] == 256
    assert row["upload_check"] == "refused" and row["pillow_decode_cpu_s"] >= 0
