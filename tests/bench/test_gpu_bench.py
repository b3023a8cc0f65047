"""bench/gpu.py --tiny: the benchmark's whole code path on the CPU, so the GPU run has no typo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.open()]


@pytest.mark.slow
def test_tiny_benchmark_measures_every_engine_mode_and_fp8(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert gpu.main(["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    results = rows(out)
    assert not [r for r in results if "error" in r]
    cases = {r["case"] for r in results}
    assert {"env", "build", "stock_8steps", "stock_quality", "stock_lora_8steps"} <= cases
    engine = {(r["mode"], r["size"]) for r in results if r["case"] == "engine"}
    fp8 = {(r["mode"], r["size"]) for r in results if r["case"] == "engine_fp8"}
    expected = {(m, s) for m in ("quality", "standard", "fast") for s in ("64x64", "48x48")}
    assert engine == expected and fp8 == expected
    for r in results:
        assert r["card"] == "cpu" and r["diffusers"] and r["torch"]
        if r["case"] in ("engine", "engine_fp8"):
            assert r["seconds"] > 0 and r["steps"] in (8, 30, 50)
            assert r["true_cfg"] == (r["mode"] != "fast")
    switch = [r for r in results if r["case"] == "lora_switch"]
    assert switch and all(r["changed_after_two_cycles"] == 0 for r in switch)
    errors = [r["rel_err_vs_bf16"] for r in results if r["case"] == "fp8_image_error"]
    assert len(errors) == 6 and max(errors) < 0.02


@pytest.mark.slow
def test_tiny_startup_from_saved_files(tmp_path: Path) -> None:
    out, model = tmp_path / "results", tmp_path / "model"
    argv = ["--tiny", "--out", str(out), "--workdir", str(tmp_path / "w"), "--save", str(model)]
    assert gpu.main(argv) == 0
    assert (model / "model_index.json").is_file() and list((model / "lightning").iterdir())
    argv = ["startup", "--model", str(model), "--compile-cache", str(tmp_path / "cc"), "--runs",
            "2", "--out", str(out), "--first-image", "--without-prefetch", "2"]  # fmt: skip
    assert gpu.main(argv) == 0
    start, plain = [r for r in rows(out) if r["case"] == "startup"]
    assert (start["start"], plain["start"]) == (1, 2)
    assert start["prefetch"] and any("engine.prefetch: reading" in m for m in start["milestones"])
    assert not plain["prefetch"] and not any("engine.prefetch" in m for m in plain["milestones"])
    assert 0 < start["ready_s"] < start["seconds"] and start["info"]["fast_available"]
    assert "lora-fused" in start["info"]["optimizations"]
    assert any("warm-up done" in m for m in start["milestones"])
    assert start["first_image_s"] > 0 and start["mode"] == "standard"
    width, height = map(int, start["size"].split("x"))
    assert width == height > 0  # the default aspect, 1:1


def test_without_root_the_model_files_alone_leave_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "weights.safetensors").write_bytes(b"w" * 2**20)
    real_write = Path.write_text

    def no_proc(self: Path, *args: object, **kwargs: object) -> int:
        if str(self).startswith("/proc/"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", no_proc)
    said = gpu.drop_page_cache(tmp_path)
    assert said.startswith("model files evicted (0.0 GiB") and "Permission denied" in said


def test_the_full_size_text_encoder_knows_the_tokenizers_vision_tokens(tmp_path: Path) -> None:
    """The stock edit call expands <|image_pad|> and the encoder matches it by id: with the
    real checkpoint's ids it finds no image token ("tokens: 0, features: 196", seen on a GPU)."""
    from transformers import AutoTokenizer

    from engine.tiny import _train_tokenizer

    _train_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    config = gpu.full_text_encoder_config(tokenizer)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.hidden_size == 3584 and config.vision_config.out_hidden_size == 3584
