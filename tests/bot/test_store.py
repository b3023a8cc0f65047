"""The image store on a real file system (tmp_path): layout, atomic writes, disk errors,
lookups by sha256 only, and retention by age and by total size."""

from __future__ import annotations

import ast
import errno
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import bot.store as store_module
from bot.store import (
    MEGABYTE,
    THUMB_MAX_SIDE,
    ImageGone,
    ImageStore,
    StoreError,
)

DAY = 86_400.0
NOW = 1_750_000_000.0


def make_png(seed: int = 0, size: tuple[int, int] = (96, 64), text: str = "a red fox") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    info = PngInfo()
    info.add_text("prompt", text)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_keeps_the_png_as_is_and_a_small_webp_thumbnail(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    png = make_png(size=(1000, 600))
    stored = store.put(png)

    sha = hashlib.sha256(png).hexdigest()
    assert stored.sha256 == sha
    assert (stored.size, stored.width, stored.height) == (len(png), 1000, 600)
    assert files(tmp_path / "images") == [
        f"{sha[:2]}/{sha[2:4]}/{sha}.png",
        f"{sha[:2]}/{sha[2:4]}/{sha}.webp",
    ]
    assert store.read_png(sha) == png  # byte for byte: the parameters' text chunks included
    assert Image.open(io.BytesIO(store.read_png(sha))).text["prompt"] == "a red fox"
    thumb = Image.open(io.BytesIO(store.read_thumb(sha)))
    assert thumb.format == "WEBP"
    assert thumb.size == (THUMB_MAX_SIDE, 230)  # aspect kept, long side 384
    assert stored.thumb_size == len(store.read_thumb(sha))
    assert store.exists(sha) and store.last_error is None


def test_the_same_bytes_are_stored_once_and_made_young_again(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    png = make_png()
    first = store.put(png, stored_at=NOW - 5 * DAY)
    second = store.put(png, stored_at=NOW)
    assert first == second
    assert len(files(tmp_path)) == 2
    assert store.png_path(first.sha256).stat().st_mtime == NOW


def test_delete_removes_both_files_and_reading_says_gone(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    stored = store.put(make_png())
    assert store.delete(stored.sha256) == stored.size + stored.thumb_size
    assert files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the empty fan-out folders went too
    with pytest.raises(ImageGone):
        store.read_png(stored.sha256)
    with pytest.raises(ImageGone):
        store.read_thumb(stored.sha256)
    assert store.delete(stored.sha256) == 0


@pytest.mark.parametrize(
    "key",
    ["../../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "a" * 62 + "/x", "", "g" * 64],
)
def test_files_are_found_by_sha256_only(tmp_path: Path, key: str) -> None:
    store = ImageStore(tmp_path)
    for method in (store.png_path, store.read_png, store.read_thumb, store.delete, store.exists):
        with pytest.raises(ValueError):
            method(key)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not an image", "not a readable PNG"), (b"\x89PNG\r\n\x1a\n\x00\x00", "not a readable")],
)
def test_something_that_is_not_a_png_is_refused_and_nothing_written(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(StoreError, match=reason):
        store.put(data)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    with pytest.raises(StoreError, match="not a PNG"):
        store.put(buffer.getvalue())
    assert not (tmp_path / "images").exists()


def test_an_unusable_folder_raises_store_error_and_is_remembered(tmp_path: Path) -> None:
    blocker = tmp_path / "images"
    blocker.write_text("a file where the folder should be")
    store = ImageStore(blocker)
    with pytest.raises(StoreError) as failure:
        store.put(make_png())
    assert "could not store an image" in str(failure.value)
    assert str(tmp_path) not in str(failure.value)  # no paths in what /status shows
    assert store.last_error == str(failure.value) and store.last_error_at is not None
    # Fixed by the admin: the next image is stored and the error is cleared.
    blocker.unlink()
    store.put(make_png())
    assert store.last_error is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_folder_raises_store_error(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="permission denied"):
            ImageStore(root).put(make_png())
    finally:
        root.chmod(0o700)


def test_a_full_disk_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", full)
    with pytest.raises(StoreError, match="disk full") as failure:
        store.put(make_png())
    assert failure.value.errno == errno.ENOSPC
    assert files(tmp_path) == []  # no temporary file, no PNG without its thumbnail
    assert store.last_error == "could not store an image: disk full"


def put_aged(store: ImageStore, seeds_and_ages: list[tuple[int, float]]) -> list[str]:
    return [store.put(make_png(seed), stored_at=NOW - age).sha256 for seed, age in seeds_and_ages]


def test_retention_by_size_with_a_one_image_cap_keeps_only_the_newest(tmp_path: Path) -> None:
    probe = ImageStore(tmp_path / "probe")
    newest_png = make_png(3)
    probed = probe.put(newest_png)
    newest_size = probed.size + probed.thumb_size

    store = ImageStore(tmp_path / "images", max_total_mb=newest_size / MEGABYTE)
    oldest, middle = put_aged(store, [(1, 3 * DAY), (2, 2 * DAY)])
    newest = store.put(newest_png, stored_at=NOW - DAY).sha256

    result = store.sweep(now=NOW)
    assert result.deleted == (oldest, middle)  # oldest first
    assert (result.kept, result.kept_bytes) == (1, newest_size)
    assert store.exists(newest) and not store.exists(oldest) and not store.exists(middle)
    assert store.sweep(now=NOW).deleted == ()  # already within the cap


def test_retention_by_age_removes_what_is_older_than_the_limit(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, max_age_days=2)
    old, older, young = put_aged(store, [(1, 3 * DAY), (2, 4 * DAY), (3, DAY)])
    result = store.sweep(now=NOW)
    assert result.deleted == (older, old)
    assert result.kept == 1 and store.exists(young)
    assert result.freed_bytes > 0


def test_without_limits_the_sweep_keeps_everything(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    put_aged(store, [(1, 300 * DAY), (2, 0.0)])
    result = store.sweep(now=NOW)
    assert result.deleted == () and result.kept == 2


def test_the_sweep_clears_crash_leftovers_and_leaves_foreign_files(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    sha = store.put(make_png(), stored_at=NOW).sha256
    folder = store.png_path(sha).parent
    stale = folder / f".{sha}.png.abc123.tmp"
    stale.write_bytes(b"half a png")
    os.utime(stale, (NOW - 2 * 3600, NOW - 2 * 3600))
    fresh = folder / f".{sha}.webp.def456.tmp"  # a write in progress right now
    fresh.write_bytes(b"half a thumbnail")
    os.utime(fresh, (NOW - 10, NOW - 10))
    orphan_sha = "e" * 64
    orphan = store.thumb_path(orphan_sha)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"thumbnail whose PNG is gone")
    notes = tmp_path / "README.txt"
    notes.write_text("the admin's notes")

    result = store.sweep(now=NOW)
    assert result.deleted == () and result.kept == 1
    assert not stale.exists() and fresh.exists() and not orphan.exists()
    assert notes.exists() and store.exists(sha)


def test_the_sweep_on_a_missing_folder_finds_nothing(tmp_path: Path) -> None:
    assert ImageStore(tmp_path / "never-created", max_age_days=1).sweep().kept == 0


def test_the_store_imports_neither_discord_nor_the_gpu_stack() -> None:
    """The web gallery uses the store too; it must not need Discord, torch or the database."""
    tree = ast.parse(Path(store_module.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not imported & {"discord", "torch", "diffusers", "db", "engine", "bot"}
