"""The disk benchmark reads what it says, at each thread count asked for."""

from __future__ import annotations

import json
from pathlib import Path

from bench import disk

MIB = 2**20


def test_each_thread_count_reads_the_transformer_first_up_to_the_limit(tmp_path: Path) -> None:
    model = tmp_path / "model"
    for name, size in (("text_encoder/model.safetensors", 2 * MIB),
                       ("transformer/a.safetensors", 3 * MIB),
                       ("transformer/b.safetensors", 1 * MIB)):  # fmt: skip
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(b"\1" * size)
    out = tmp_path / "disk.jsonl"

    argv = ["--model", str(model), "--threads", "1,4", "--chunk-mib", "1", "--gib", "0.003",
            "--keep-cache", "--out", str(out)]  # fmt: skip
    assert disk.main(argv) == 0

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["threads"] for r in rows] == [1, 4]
    # 0.003 GiB is ~3.1 MiB: transformer/a (3 MiB), then b (1 MiB) crosses it; no text encoder
    assert all(r["bytes"] == 4 * MIB and r["gb_s"] > 0 for r in rows)
    assert [p.name for p in disk.first_gib(disk.weight_files(str(model)), 0.003)] == [
        "a.safetensors",
        "b.safetensors",
    ]
