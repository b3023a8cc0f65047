"""What the engine is doing while it gets ready: the stage of the model load (download, load,
warm-up) and, for a download, its progress, for ``EngineStatus`` (``/status``, the bot's
presence, the answer to an /imagine that waits for the model).

The download is watched from the outside: the Hugging Face cache folder of the model's
repository grows while ``from_pretrained`` downloads into it (``blobs/*.incomplete`` included),
so polling its size against the repository's total gives the progress without touching the
loading code. The total comes from the Hub's file list when it can be had (never required).
No torch here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

STAGE_STARTING = "starting"
STAGE_LOADING = "loading the model"
STAGE_DOWNLOADING = "downloading the model"
STAGE_WARMING = "warming up (the first image compiles the model)"
POLL_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """One reading of ``LoadState``."""

    loading: str | None  # None: loaded (or failed: see ``error``)
    progress: float | None  # 0..1 where known
    eta_s: float | None  # seconds left where it can be estimated
    error: str | None


class LoadState:
    """Thread-safe stage and progress of a model load (written by the loading threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stage: str | None = None
        self._detail: str | None = None
        self._progress: float | None = None
        self._eta_s: float | None = None
        self._error: str | None = None

    def stage(self, stage: str | None) -> None:
        """A new stage: its progress and estimate start unknown."""
        with self._lock:
            self._stage, self._detail, self._progress, self._eta_s = stage, None, None, None

    def progress(self, detail: str | None, fraction: float | None, eta_s: float | None) -> None:
        with self._lock:
            self._detail, self._progress, self._eta_s = detail, fraction, eta_s

    def fail(self, message: str) -> None:
        with self._lock:
            self._stage, self._detail, self._progress, self._eta_s = None, None, None, None
            self._error = message

    def snapshot(self) -> LoadSnapshot:
        with self._lock:
            text = self._stage
            if text is not None and self._detail:
                text = f"{text}: {self._detail}"
            return LoadSnapshot(text, self._progress, self._eta_s, self._error)

    @property
    def current(self) -> str | None:
        with self._lock:
            return self._stage


def hub_cache_dir(repo_id: str, *, cache: Path | None = None) -> Path:
    """The Hugging Face cache folder of a model repository (``models--org--name``)."""
    if cache is None:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
    return cache / ("models--" + repo_id.replace("/", "--"))


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (partial downloads included; the cache's snapshot
    links to its blobs are not counted twice)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                if not os.path.islink(path):
                    total += os.lstat(path).st_size
            except OSError:
                continue
    return total


def _gigabytes(size: int) -> str:
    return f"{size / 10**9:.1f}"


class DownloadWatcher:
    """Turns the growth of a repository's cache folder into ``LoadState`` progress."""

    def __init__(self, folder: Path, state: LoadState, *, total_bytes: int | None) -> None:
        self.folder = folder
        self.state = state
        self.total_bytes = total_bytes
        self._last: int | None = None
        self._started: tuple[float, int] | None = None  # (time, bytes) of the first growth

    def poll(self, now: float | None = None) -> None:
        """Read the folder's size once: downloading while it grows, loading otherwise."""
        now = time.monotonic() if now is None else now
        size = folder_bytes(self.folder) if self.folder.exists() else 0
        if self._last is None:  # the first look: a download is under way if parts exist
            grew = size > 0 and any(self.folder.rglob("*.incomplete"))
        else:
            grew = size > self._last
        self._last = size
        if not grew:
            if self.state.current in (None, STAGE_STARTING, STAGE_DOWNLOADING):
                self.state.stage(STAGE_LOADING)
            return
        if self.state.current != STAGE_DOWNLOADING:
            self.state.stage(STAGE_DOWNLOADING)
        if self._started is None:
            self._started = (now, size)
        total = self.total_bytes
        if total:
            fraction = min(1.0, size / total)
            started_at, started_bytes = self._started
            rate = (size - started_bytes) / (now - started_at) if now > started_at else 0.0
            eta = (total - size) / rate if rate > 0 else None
            detail = f"{_gigabytes(size)} of {_gigabytes(total)} GB"
            self.state.progress(detail, fraction, eta)
        else:
            self.state.progress(f"{_gigabytes(size)} GB so far", None, None)


def repo_total_bytes(repo_id: str) -> int | None:
    """The repository's total size from the Hub's file list, or None (offline, unknown)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return None
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
        sizes = [s.size for s in info.siblings or () if s.size]
        return sum(sizes) or None
    except Exception as exc:  # no network, a private repo, a hub hiccup: progress unknown
        logger.debug("size of %s unknown: %s", repo_id, exc)
        return None


def is_hub_id(model: str) -> bool:
    """Whether ``model`` names a Hub repository rather than a folder on this machine."""
    return (
        "/" in model
        and not Path(model).expanduser().exists()
        and not model.startswith((".", "/", "~"))
    )


class WatchDownload:
    """While open, a daemon thread polls the model's cache folder (only for a Hub model)."""

    def __init__(self, model: str, state: LoadState, *, poll_s: float = POLL_S) -> None:
        self.model = model
        self.state = state
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WatchDownload:
        if is_hub_id(self.model):
            self._thread = threading.Thread(
                target=self._run, name="imagine-download-watch", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        try:
            watcher = DownloadWatcher(
                hub_cache_dir(self.model), self.state, total_bytes=repo_total_bytes(self.model)
            )
            while not self._stop.is_set():
                watcher.poll()
                self._stop.wait(self.poll_s)
        except Exception:  # progress is a nicety; the load goes on without it
            logger.debug("download progress unavailable", exc_info=True)
