"""The two stable commands outside harnesses use: ``python -m engine tiny`` and ``generate``."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
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


def run_on_a_terminal(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Like ``run``, with stderr a terminal (as in a shell): (exit code, stdout, what the
    terminal showed)."""
    main, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        os.close(main)
    return proc.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")


def test_tiny_then_generate_writes_an_exact_16_9_png_twice_identically(tmp_path: Path) -> None:
    built = run("tiny", "tiny-model", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "tiny-model" / "model_index.json").is_file()

    args = ("generate", "a red fox", "--model", "tiny-model", "--aspect", "16:9", "--seed", "7")
    code, stdout, shown = run_on_a_terminal(*args, "--out", "fox.png", cwd=tmp_path)
    assert code == 0, shown
    assert "fox.png" in stdout and "seed 7" in stdout
    # issue 20 item 14: on a terminal, a progress line runs to the last step.
    steps = re.findall(r"step (\d+)/(\d+)", shown)
    assert steps and steps[-1][0] == steps[-1][1], shown
    assert "100%" in shown
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


def test_help_shows_no_internal_note(tmp_path: Path) -> None:
    """issue 20 item 14: ``--help`` printed the module docstring, a note to maintainers."""
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "harness" not in result.stdout and "keep their flags stable" not in result.stdout
    assert "generate" in result.stdout and "tiny" in result.stdout


def test_an_out_file_the_cli_cannot_write_is_refused_before_loading(tmp_path: Path) -> None:
    """issue 20 item 14: ``--out x.bmp`` (or any name) got PNG bytes; now the extension decides
    the format (PNG, JPEG, WebP) and anything else is refused at once."""
    result = run("generate", "x", "--model", "nowhere", "--out", "x.bmp", cwd=tmp_path)
    assert result.returncode == 2
    assert "--out must end in .png, .jpg, .jpeg or .webp" in result.stderr


def test_a_mistyped_model_path_is_named_not_blamed_on_the_gpu(tmp_path: Path) -> None:
    """issue 20 item 14: ``IMAGINE_MODEL=./tiny-modle`` was reported as "no usable CUDA GPU"."""
    from engine.devices import EngineUnavailable
    from engine.loader import check_model_source, load_pipeline
    from engine.settings import EngineSettings

    for typo in ("./tiny-modle", "tiny-modle", str(tmp_path / "models" / "qwen"), "a/b/c"):
        with pytest.raises(EngineUnavailable) as refused:
            load_pipeline(EngineSettings(model=typo, warmup=False))
        assert "there is no folder" in str(refused.value) and "CUDA" not in str(refused.value)
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(EngineUnavailable, match="is a file"):
        check_model_source(str(tmp_path / "weights.safetensors"), "IMAGINE_MODEL")
    check_model_source("Qwen/Qwen-Image", "IMAGINE_MODEL")  # a Hugging Face id
    check_model_source(str(tmp_path), "IMAGINE_MODEL")  # a folder


def test_out_writes_the_format_its_extension_names(tmp_path: Path) -> None:
    """issue 20 item 14: ``--out x.jpg`` held PNG bytes."""
    from engine.__main__ import write_image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), (10, 200, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    assert write_image(tmp_path / "a.png", png) is None
    assert (tmp_path / "a.png").read_bytes() == png
    for name, fmt in (("b.jpg", "JPEG"), ("c.JPEG", "JPEG"), ("d.webp", "WEBP")):
        note = write_image(tmp_path / "out" / name, png)
        assert note is not None and ".png does" in note
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == fmt and image.size == (32, 16)


def test_the_progress_bar_is_silent_when_not_on_a_terminal() -> None:
    """issue 20 item 14: piped or logged output stays free of carriage returns."""
    import io

    from engine.terminal import StepBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, shown = io.StringIO(), Terminal()
    for stream in (quiet, shown):
        bar = StepBar(stream)
        for step in range(1, 5):
            bar.step(step, 4, step * 0.5)
        bar.close()
    assert quiet.getvalue() == ""
    assert "\rstep 4/4" in shown.getvalue() and "100%" in shown.getvalue()
    assert shown.getvalue().endswith("\n")


def test_the_progress_bar_is_the_jobs_control() -> None:
    """issue 20 item 14: the bar is the job's control on the command line (``step``,
    ``followed``, ``previews``, ``stop_reason``)."""
    import io

    from engine.terminal import StepBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, quiet = StepBar(Terminal()), StepBar(io.StringIO())
    assert shown.followed and not quiet.followed and not shown.previews
    assert shown.stop_reason() is None
    for step in range(1, 11):
        shown.step(step, 10, step * 2.0)
    shown.close()
    text = shown._stream.getvalue()  # type: ignore[attr-defined]
    assert "step 10/10" in text and "100%" in text and "0s left" in text
    assert "step 5/10" in text and "10s left" in text  # 2 s a step, 5 to go


def test_plan_prints_the_plan_for_a_named_card(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.__main__ import main

    code = main(["plan", "--gpu-memory", "24", "--capability", "8.6", "--host-memory", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "Memory plan for a 24 GiB card: 24 GiB usable (--gpu-memory), compute capability 8.6"
        in (out)
    )
    assert "image model" in out and "text encoder" in out and "FP8" not in out  # Ampere
    assert "GPU memory:" in out and "Copied from RAM per fast image" in out
    assert re.search(r"fast +1328²: ~\d+\.\d s", out)


def test_plan_reads_the_gpu_memory_setting_and_refuses_what_the_card_cannot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.__main__ import main

    monkeypatch.setenv("IMAGINE_GPU_MEMORY_GIB", "48")
    assert main(["plan", "--host-memory", "64"]) == 0
    assert "48 GiB usable (IMAGINE_GPU_MEMORY_GIB)" in capsys.readouterr().out
    assert main(["plan", "--capability", "8.6", "--weights", "fp8"]) == 2
    assert "IMAGINE_WEIGHTS=fp8 needs FP8 matmuls" in capsys.readouterr().err
    monkeypatch.delenv("IMAGINE_GPU_MEMORY_GIB")
    assert main(["plan"]) == 2  # no CUDA here and no size named
    assert "--gpu-memory" in capsys.readouterr().err
