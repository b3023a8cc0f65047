"""The image store: every delivered image kept on disk, content-addressed by its sha256.

Layout under the data directory (``/data/images`` in Docker)::

    <root>/ab/cd/<sha256>.png    the PNG exactly as the engine made it (text chunks included)
    <root>/ab/cd/<sha256>.webp   a thumbnail, at most THUMB_MAX_SIDE px on its long side

where ``ab`` and ``cd`` are the first two byte pairs of the hex digest, so no folder holds more
than a few hundred files. Identical bytes are stored once. Files are found by sha256 only, never
from a path anyone gave, and every write goes to a temporary file in the same folder that is
renamed into place: a crash leaves either the whole file or none (stale temporaries are removed
by the sweep).

The store knows nothing of Discord or the database (the web gallery uses it too): the database's
``images`` rows (``db.images``) say which job a file belongs to, and the caller deletes a file
only when ``db.images`` reports that no row references it any more. The retention sweep works
from the files themselves (their modification time is the time they were stored), so disk use
is bounded even if rows and files ever disagree; the caller then forgets the swept sha256s with
``db.images.forget_images``.

Every method is blocking file I/O: call it through ``asyncio.to_thread``. Disk errors (full,
read-only, no permission) raise ``StoreError``: the caller logs it and delivers the image
anyway; ``last_error`` keeps the latest one for ``/status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

THUMB_MAX_SIDE = 384
THUMB_QUALITY = 80
# PNGs above this are refused before decoding (the largest native size is 1.6 megapixels).
MAX_PIXELS = 64 * 2**20
# The settings give the size cap in megabytes (10^6 bytes, like disk sizes).
MEGABYTE = 1_000_000
# A temporary file this old is a leftover of a crash, not a write in progress.
STALE_TEMP_S = 3600.0

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FANOUT = re.compile(r"[0-9a-f]{2}")
_TEMP_SUFFIX = ".tmp"


class StoreError(Exception):
    """The store could not write or read (disk full, read-only, no permission, bad PNG).

    ``str()`` is a short reason fit for a log line and ``/status``, without paths.
    """

    def __init__(self, message: str, *, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


class ImageGone(LookupError):
    """No stored file for that sha256 (swept by retention, deleted, or never stored)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"no stored image {sha256[:12]}…")
        self.sha256 = sha256


@dataclasses.dataclass(frozen=True, slots=True)
class StoredImage:
    """What ``put`` stored: the key, the PNG's byte size and pixel size, the thumbnail's size."""

    sha256: str
    size: int
    width: int
    height: int
    thumb_size: int


@dataclasses.dataclass(frozen=True, slots=True)
class SweepResult:
    """What a retention sweep removed (oldest first) and what it kept."""

    deleted: tuple[str, ...]
    freed_bytes: int
    kept: int
    kept_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class SweepEntry:
    """One stored image as the sweep listed it."""

    sha256: str
    stored_at: float  # the PNG's modification time when listed
    size: int  # PNG and thumbnail together


@dataclasses.dataclass(frozen=True, slots=True)
class SweepPlan:
    """What retention would delete (oldest first) from a listing of ``images`` files."""

    doomed: tuple[SweepEntry, ...]
    images: int
    total_bytes: int

    def result(self, deleted: list[tuple[SweepEntry, int]]) -> SweepResult:
        """The sweep's outcome once ``deleted`` (entry, bytes freed) went; logs it."""
        kept_bytes = self.total_bytes - sum(entry.size for entry, _ in deleted)
        freed = sum(size for _, size in deleted)
        kept = self.images - len(deleted)
        if deleted:
            logger.info(
                "retention removed %d images (%.1f MB); %d kept (%.1f MB)",
                len(deleted),
                freed / MEGABYTE,
                kept,
                kept_bytes / MEGABYTE,
            )
        return SweepResult(tuple(e.sha256 for e, _ in deleted), freed, kept, kept_bytes)


def check_sha256(sha256: str) -> str:
    """The key itself when it is 64 lowercase hex digits; ValueError otherwise (a bug, or a
    value from outside that must never become a path)."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


def _reason(exc: OSError) -> str:
    """A short, path-free reason for a disk error."""
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOTDIR:
        return "the image folder is not a folder"
    return os.strerror(exc.errno) if exc.errno else exc.__class__.__name__


def make_thumbnail(png: bytes) -> tuple[bytes, int, int]:
    """``(webp, width, height)`` of a PNG; ``StoreError`` if it is not a readable PNG."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(png))
            if image.format != "PNG":
                raise StoreError(f"not a PNG ({image.format})")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise StoreError(f"image too large ({width}x{height})")
            image.load()
    except StoreError:
        raise
    except Exception as exc:  # PIL raises many types for bad input
        raise StoreError("not a readable PNG") from exc
    thumb: Image.Image = image
    if thumb.mode not in ("RGB", "RGBA"):
        thumb = thumb.convert("RGBA" if "A" in thumb.getbands() else "RGB")
    thumb.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=THUMB_QUALITY, method=4)
    return buffer.getvalue(), width, height


class ImageStore:
    """Content-addressed PNGs and thumbnails under ``root``, with retention by age and size."""

    def __init__(
        self,
        root: str | Path,
        *,
        max_age_days: float | None = None,
        max_total_mb: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.max_age_s = max_age_days * 86_400 if max_age_days else None
        self.max_total_bytes = int(max_total_mb * MEGABYTE) if max_total_mb else None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        # put, delete and the sweep's deletions never interleave within this process.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ paths
    def _folder(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4]

    def png_path(self, sha256: str) -> Path:
        """Where the PNG of ``sha256`` lives (it may not exist)."""
        return self._folder(sha256) / f"{sha256}.png"

    def thumb_path(self, sha256: str) -> Path:
        """Where the WebP thumbnail of ``sha256`` lives (it may not exist)."""
        return self._folder(sha256) / f"{sha256}.webp"

    def exists(self, sha256: str) -> bool:
        return self.png_path(sha256).is_file()

    # ----------------------------------------------------------------------- writes
    def _fail(self, message: str, exc: BaseException | None = None) -> StoreError:
        self.last_error = message
        self.last_error_at = time.time()
        code = exc.errno if isinstance(exc, OSError) else None
        return StoreError(message, errno_code=code)

    def put(self, png: bytes, *, stored_at: float | None = None) -> StoredImage:
        """Store a PNG and its thumbnail; storing the same bytes again only refreshes their
        age. ``stored_at`` (Unix time) is when the image was made, for retention."""
        sha256 = hashlib.sha256(png).hexdigest()
        try:
            thumb, width, height = make_thumbnail(png)
        except StoreError as exc:
            raise self._fail(str(exc)) from exc
        when = time.time() if stored_at is None else stored_at
        png_path, thumb_path = self.png_path(sha256), self.thumb_path(sha256)
        with self._lock:
            created_png = False
            try:
                if not png_path.is_file():
                    _write_atomic(png_path, png)
                    created_png = True
                _write_atomic(thumb_path, thumb)
                os.utime(png_path, (when, when))
                os.utime(thumb_path, (when, when))
            except OSError as exc:
                if created_png:
                    with contextlib.suppress(OSError):
                        png_path.unlink()
                message = f"could not store an image: {_reason(exc)}"
                raise self._fail(message, exc) from exc
        self.last_error = None
        self.last_error_at = None
        return StoredImage(sha256, len(png), width, height, len(thumb))

    def delete(self, sha256: str) -> int:
        """Delete a stored PNG and its thumbnail; returns the bytes freed (0: nothing there).

        Only for a sha256 that ``db.images`` reported as no longer referenced by any row.
        """
        freed = 0
        with self._lock:
            for path in (self.png_path(sha256), self.thumb_path(sha256)):
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise self._fail(f"could not delete an image: {_reason(exc)}", exc) from exc
                freed += size
            _prune_empty(self.png_path(sha256).parent, self.root)
        return freed

    # ------------------------------------------------------------------------ reads
    def _read(self, path: Path, sha256: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageGone(sha256) from None
        except OSError as exc:
            raise self._fail(f"could not read an image: {_reason(exc)}", exc) from exc

    def read_png(self, sha256: str) -> bytes:
        """The stored PNG; ``ImageGone`` when retention (or a Delete) removed it."""
        return self._read(self.png_path(sha256), sha256)

    def read_thumb(self, sha256: str) -> bytes:
        """The stored WebP thumbnail; ``ImageGone`` when it is not there."""
        return self._read(self.thumb_path(sha256), sha256)

    # -------------------------------------------------------------------- retention
    def _entries(self, now: float) -> list[SweepEntry]:
        """Every stored image with its age and size; removes stale temporaries and thumbnails
        whose PNG is gone on the way."""
        entries: list[SweepEntry] = []
        for first in _subfolders(self.root):
            for second in _subfolders(first):
                pngs: dict[str, os.stat_result] = {}
                thumbs: dict[str, int] = {}
                with contextlib.suppress(OSError), os.scandir(second) as files:
                    for item in files:
                        name = item.name
                        with contextlib.suppress(OSError):
                            if name.endswith(_TEMP_SUFFIX):
                                if now - item.stat().st_mtime > STALE_TEMP_S:
                                    os.unlink(item.path)
                                continue
                            stem, _, ext = name.partition(".")
                            if not _SHA256.fullmatch(stem) or stem[:4] != first.name + second.name:
                                continue
                            if ext == "png":
                                pngs[stem] = item.stat()
                            elif ext == "webp":
                                thumbs[stem] = item.stat().st_size
                for sha256, stat in pngs.items():
                    entries.append(
                        SweepEntry(sha256, stat.st_mtime, stat.st_size + thumbs.get(sha256, 0))
                    )
                for sha256 in thumbs.keys() - pngs.keys():
                    with contextlib.suppress(OSError):
                        os.unlink(second / f"{sha256}.webp")
        entries.sort(key=lambda e: (e.stored_at, e.sha256))
        return entries

    def plan_sweep(self, *, now: float | None = None) -> SweepPlan:
        """The images older than ``max_age_days``, then the oldest ones until the rest fit in
        ``max_total_mb``. Deleting them is a second step (``delete_if_unchanged``), so that
        the caller can hold each file's lock (``bot.images``) while one goes."""
        now = time.time() if now is None else now
        entries = self._entries(now)
        total = remaining = sum(e.size for e in entries)
        doomed: list[SweepEntry] = []
        for entry in entries:
            too_old = self.max_age_s is not None and now - entry.stored_at > self.max_age_s
            too_big = self.max_total_bytes is not None and remaining > self.max_total_bytes
            if not (too_old or too_big):
                break  # oldest first: every later entry is younger, and the rest already fit
            doomed.append(entry)
            remaining -= entry.size
        return SweepPlan(tuple(doomed), len(entries), total)

    def delete_if_unchanged(self, entry: SweepEntry) -> int | None:
        """Delete a planned image unless it was stored again since the listing (its age
        changed); returns the bytes freed, or None when it stays."""
        try:
            if self.png_path(entry.sha256).stat().st_mtime != entry.stored_at:
                return None
            return self.delete(entry.sha256)
        except FileNotFoundError:
            return 0
        except StoreError:
            logger.warning("retention could not delete image %s", entry.sha256[:12])
            return None

    def sweep(self, *, now: float | None = None) -> SweepResult:
        """Plan and delete in one go; returns what went (give it to
        ``db.images.forget_images``). For a store nobody writes to meanwhile: ``bot.images``
        deletes each planned file under its lock instead."""
        plan = self.plan_sweep(now=now)
        deleted = []
        for entry in plan.doomed:
            size = self.delete_if_unchanged(entry)
            if size is not None:
                deleted.append((entry, size))
        return plan.result(deleted)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _subfolders(folder: Path) -> list[Path]:
    """The two-hex-digit fan-out folders directly under ``folder``, sorted."""
    try:
        with os.scandir(folder) as items:
            return sorted(
                Path(item.path)
                for item in items
                if _FANOUT.fullmatch(item.name) and item.is_dir(follow_symlinks=False)
            )
    except OSError:
        return []


def _prune_empty(folder: Path, root: Path) -> None:
    """Remove the now-empty fan-out folders of a deleted image (never ``root`` itself)."""
    for candidate in (folder, folder.parent):
        if candidate == root or root not in candidate.parents:
            return
        try:
            candidate.rmdir()
        except OSError:  # not empty, or already gone
            return
