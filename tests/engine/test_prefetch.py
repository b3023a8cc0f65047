"""Reading the weights ahead of the loader: which files, all of their bytes, never when they
would not stay cached, and a load that goes on whatever happens to the read-ahead."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from engine import prefetch
from engine.pipeline import ImageGenerator
from engine.prefetch import Prefetch, model_files, named_file, weight_files
from engine.settings import EngineSettings
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE

KIB = 1024
PLENTY = 2**40


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def pipeline_folder(root: Path) -> Path:
    """A diffusers-format folder: the index, configs, a tokenizer and sharded weights."""
    root.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "QwenImagePipeline", "_diffusers_version": "0.42.1"}
    for name in ("scheduler", "text_encoder", "tokenizer", "transformer", "vae"):
        index[name] = ["diffusers", name.title()]
    (root / "model_index.json").write_text(json.dumps(index))
    write(root / "tokenizer" / "vocab.json", 10)
    write(root / "vae" / "diffusion_pytorch_model.safetensors", 3 * KIB)
    write(root / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors", 5 * KIB)
    write(root / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors", 7 * KIB)
    write(root / "transformer" / "diffusion_pytorch_model.bin", 9 * KIB)  # not loaded
    write(root / "text_encoder" / "model.safetensors", 11 * KIB)
    write(root / "qwen-image-all-in-one.safetensors", 13 * KIB)  # not a component: not loaded
    write(root / "old" / "transformer.safetensors", 13 * KIB)
    (root / "transformer" / "config.json").write_text("{}")
    return root


def names(paths: list[Path], root: Path) -> list[str]:
    return [str(p.relative_to(root.resolve())) for p in paths]


def test_a_pipeline_folder_lists_its_weights_in_load_order_and_the_named_lora_last(
    tmp_path: Path,
) -> None:
    model = pipeline_folder(tmp_path / "model")
    write(tmp_path / "lora" / "lightning-8steps.safetensors", KIB)
    write(tmp_path / "lora" / "lightning-4steps.safetensors", KIB)  # not the one loaded

    files = model_files(str(model), str(tmp_path / "lora"), "lightning-8steps.safetensors")

    assert names(files, tmp_path) == [
        "model/text_encoder/model.safetensors",
        "model/transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "model/transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "model/vae/diffusion_pytorch_model.safetensors",
        "lora/lightning-8steps.safetensors",
    ]


def test_a_component_folder_linked_from_elsewhere_is_read(tmp_path: Path) -> None:
    model = pipeline_folder(tmp_path / "model")
    elsewhere = tmp_path / "disk2" / "transformer"
    (model / "transformer").rename(elsewhere.parent.mkdir(parents=True) or elsewhere)
    (model / "transformer").symlink_to(elsewhere, target_is_directory=True)

    files = weight_files(str(model))

    assert [p.name for p in files if p.parent.name == "transformer"] == [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]


def test_a_folder_that_is_no_pipeline_has_all_its_weights_read(tmp_path: Path) -> None:
    write(tmp_path / "lora" / "b.safetensors", KIB)
    write(tmp_path / "lora" / "a" / "c.safetensors", KIB)

    assert names(weight_files(str(tmp_path / "lora")), tmp_path) == [
        "lora/b.safetensors",
        "lora/a/c.safetensors",
    ]


def test_shared_components_are_left_out(tmp_path: Path) -> None:
    model = pipeline_folder(tmp_path / "edit")

    files = weight_files(str(model), skip={"text_encoder": object(), "vae": object()})

    assert [p.parent.name for p in files] == ["transformer", "transformer"]


def test_a_hub_model_is_read_from_its_cached_snapshot_and_skipped_until_downloaded(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models--Qwen--Qwen-Image"
    blob = write(repo / "blobs" / "9f2c", 4 * KIB)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    link = repo / "snapshots" / "abc123" / "transformer" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)

    assert weight_files("Qwen/Qwen-Image", cache=tmp_path) == [blob.resolve()]
    assert weight_files("Qwen/Qwen-Image-2512", cache=tmp_path) == []
    assert model_files(
        "Qwen/Qwen-Image", "lightx2v/Lightning", "x.safetensors", cache=tmp_path
    ) == [blob.resolve()]


def test_every_byte_of_every_file_is_read_once_whatever_the_chunking(tmp_path: Path) -> None:
    files = [
        write(tmp_path / "a.safetensors", 0),
        write(tmp_path / "b.safetensors", 1),
        write(tmp_path / "c.safetensors", 3 * 4 * KIB + 5),
        write(tmp_path / "d.safetensors", 4 * KIB),
    ]
    reads: list[tuple[str, int, int]] = []
    real = os.preadv

    def recording(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = real(fd, buffers, offset)
        reads.append((os.readlink(f"/proc/self/fd/{fd}"), offset, n))
        return n

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefetch.os, "preadv", recording)
        with Prefetch(
            files + files[:1], threads=3, chunk_bytes=4 * KIB, memory=lambda: PLENTY
        ) as p:
            assert p.wait(10)

    assert p.total == p.read == 1 + 3 * 4 * KIB + 5 + 4 * KIB
    by_file = {
        Path(name).name: sorted((offset, n) for f, offset, n in reads if f == name)
        for name in {f for f, _, _ in reads}
    }
    assert by_file == {
        "b.safetensors": [(0, 1)],
        "c.safetensors": [(0, 4096), (4096, 4096), (8192, 4096), (12288, 5)],
        "d.safetensors": [(0, 4096)],
    }


@pytest.mark.parametrize(
    ("available", "why"),
    [(10 * KIB, "would not stay cached (0.0 GiB available)"), (None, "available memory unknown")],
)
def test_weights_that_would_not_stay_cached_are_not_read(
    tmp_path: Path, available: int | None, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    files = [write(tmp_path / "w.safetensors", 16 * KIB)]
    caplog.set_level(logging.INFO, logger="engine.prefetch")

    with Prefetch(files, memory=lambda: available) as p:
        pass

    assert p.read == 0
    assert p.skipped is not None and why in p.skipped
    assert f"weights not read ahead: {p.skipped}" in caplog.text


def test_closing_stops_the_reading_at_the_next_chunk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.prefetch")
    files = [write(tmp_path / "big.safetensors", 64 * KIB)]
    first_read, release = threading.Event(), threading.Event()
    calls = []
    real = os.preadv

    def slow(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(offset)
        first_read.set()
        release.wait(10)
        return real(fd, buffers, offset)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefetch.os, "preadv", slow)
        p = Prefetch(files, threads=1, chunk_bytes=4 * KIB, memory=lambda: PLENTY).__enter__()
        assert first_read.wait(10)
        p.stop()
        release.set()
        p.close()

    assert calls == [0]
    assert p.read == 4 * KIB < p.total
    assert "read ahead 0.0 of 0.0 GiB" in caplog.text
    assert "; stopped at the loader's end)" in caplog.text


def test_a_file_gone_or_unreadable_ends_the_read_ahead_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = write(tmp_path / "kept.safetensors", 8 * KIB)
    gone = write(tmp_path / "gone.safetensors", 8 * KIB)
    files = [gone, kept]
    p = Prefetch(files, threads=2, chunk_bytes=4 * KIB, memory=lambda: PLENTY)
    gone.unlink()
    caplog.set_level(logging.INFO, logger="engine.prefetch")

    with p:
        assert p.wait(10)

    assert p.read == 8 * KIB
    assert "; 8.0 KiB could not be read)" in caplog.text


def test_the_engine_reads_its_weights_ahead_while_it_loads(
    tiny_settings: EngineSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from huggingface_hub import constants

    # The real Lightning LoRA in the Hub cache: the tiny model loads its own, so only that
    # one is read.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--lightx2v--Qwen-Image-Lightning"
    write(repo / "snapshots" / "c0ffee" / tiny_settings.lightning_weight_name, KIB)
    write(repo / "refs" / "main", 0).write_text("c0ffee")
    assert named_file(tiny_settings.lightning_lora, tiny_settings.lightning_weight_name)
    caplog.set_level(logging.INFO, logger="engine.prefetch")
    model = Path(tiny_settings.model)
    files = weight_files(str(model)) + named_file(str(model / TINY_LORA_DIR), TINY_LORA_FILE)

    generator = ImageGenerator.load(tiny_settings)

    assert generator.fast_available
    assert [p.parent.name for p in files] == ["text_encoder", "transformer", "vae", TINY_LORA_DIR]
    assert f"({len(files)} files, 8 threads)" in caplog.text
    total = sum(p.stat().st_size for p in files)
    assert f"of {total / 2**30:.1f} GiB in" in caplog.text and "; all)" in caplog.text


def test_the_read_ahead_can_be_turned_off(
    tiny_settings: EngineSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.prefetch")

    ImageGenerator.load(tiny_settings.model_copy(update={"prefetch_weights": False}))

    assert not [r for r in caplog.records if r.name == "engine.prefetch"]


def test_the_edit_model_reads_ahead_only_what_it_does_not_share(
    generator: ImageGenerator,
    tiny_settings: EngineSettings,
    tiny_edit_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from engine.edit.generator import EditGenerator

    settings = tiny_settings.model_copy(
        update={
            "edit_model": str(tiny_edit_dir),
            "edit_lightning_lora": str(tiny_edit_dir / TINY_LORA_DIR),
            "edit_lightning_weight_name": TINY_LORA_FILE,
        }
    )
    caplog.set_level(logging.INFO, logger="engine.prefetch")

    editor = EditGenerator.load(generator, settings)

    shared = {name for name, why in editor.shared.items() if why.startswith("shared")}
    assert shared == {"text_encoder", "vae"}
    own = weight_files(str(tiny_edit_dir), skip=shared) + named_file(
        str(tiny_edit_dir / TINY_LORA_DIR), TINY_LORA_FILE
    )
    assert [p.parent.name for p in own] == ["transformer", TINY_LORA_DIR]
    assert f"({len(own)} files, 8 threads)" in caplog.text


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_in_a_container_its_memory_limit_bounds_what_is_read_ahead(
    tmp_path: Path, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gib = 2**30
    if version == "v2":
        files = {"memory.max": f"{8 * gib}\n", "memory.current": f"{6 * gib}\n",
                 "memory.stat": f"anon 1\ninactive_file {gib}\nactive_file 5\n"}  # fmt: skip
    else:
        files = {
            "memory/memory.limit_in_bytes": f"{8 * gib}",
            "memory/memory.usage_in_bytes": f"{6 * gib}",
            "memory/memory.stat": f"cache 9\ntotal_inactive_file {gib}\n",
        }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert prefetch._cgroup_available(tmp_path) == 3 * gib  # 8 - 6 + 1 (cache it would drop)
    monkeypatch.setattr(prefetch, "_meminfo_available", lambda: 100 * gib)
    monkeypatch.setattr(prefetch, "_cgroup_available", lambda: 3 * gib)
    assert prefetch.available_memory() == 3 * gib


def test_without_a_container_limit_the_machine_decides(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    assert prefetch._cgroup_available(tmp_path) is None
    assert prefetch._cgroup_available(tmp_path / "missing") is None
