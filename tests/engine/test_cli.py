"""The two stable commands outside harnesses use: ``python -m engine tiny`` and ``generate``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_tiny_then_generate_writes_an_exact_16_9_png_twice_identically(tmp_path: Path) -> None:
    built = run("tiny", "tiny-model", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "tiny-model" / "model_index.json").is_file()

    args = ("generate", "a red fox", "--model", "tiny-model", "--aspect", "16:9", "--seed", "7")
    first = run(*args, "--out", "fox.png", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "fox.png" in first.stdout and "seed 7" in first.stdout
    second = run(*args, "--out", "fox2.png", cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    image = Image.open(tmp_path / "fox.png")
    width, height = image.size
    assert abs(width * 9 / 16 - height) <= 1
    assert image.text["prompt"] == "a red fox"  # type: ignore[attr-defined]
    assert image.text["seed"] == "7"  # type: ignore[attr-defined]
    assert (tmp_path / "fox.png").read_bytes() == (tmp_path / "fox2.png").read_bytes()
    assert image.tobytes() == Image.open(tmp_path / "fox2.png").tobytes()


def test_generate_refuses_the_real_model_without_a_gpu(tmp_path: Path) -> None:
    result = run(
        "generate", "x", "--model", "Qwen/Qwen-Image", "--out", "x.png", cwd=tmp_path
    )  # fmt: skip
    assert result.returncode == 2
    assert "python -m engine tiny" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    result = run("generate", "x", "--aspect", "5:4", "--out", "x.png", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr
