"""Read the model's weight files into the page cache ahead of the loader, several at a time.

Why: after a reboot the start is bound by the disk. ``from_pretrained`` maps the safetensors
files and the loader then faults their pages in from one thread, a small readahead at a time:
run12 read 54.8 GiB that way at ~1.1 GB/s, 50-57 s of a 87-93 s start, from a disk that
serves more when more is asked of it at once (8 threads of 32 MiB reads: 1.6 GB/s, run13).
The threads read in the order the loader wants the files, from the moment the loader starts.

They start there, not earlier: run13 started them before diffusers was imported and CUDA
initialised, and those imports' small reads then queued behind the weights' large ones, so
the start took just as long (86.7 s both ways) with the disk busier.

Reading is only useful when what is read stays cached until the loader gets to it: files that
would not fit in the memory the kernel can give the page cache are not read ahead (they would
evict each other). A failure here never fails the load: the loader reads what is missing.
No torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from engine.loading import hub_cache_dir, is_hub_id

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CHUNK_BYTES = 32 * 2**20
THREADS = 8
# Leave the rest of the memory to the loader's own copies (the text encoder sits in host memory
# until it moves to the GPU) and to everything else on the machine.
MEMORY_SHARE = 0.7


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    path: Path
    offset: int
    length: int


def weight_files(source: str, *, cache: Path | None = None, skip: Iterable[str] = ()) -> list[Path]:
    """The weight files of a model folder or of a Hub id's cached snapshot, in the order the
    loader reads them: the pipeline's components (``model_index.json``) by name, without those
    in ``skip`` (shared with another pipeline), each folder's ``.safetensors`` where it has any
    (the loader's choice). Nothing for a Hub model not downloaded yet: the download fills the
    cache itself."""
    root = _local_root(source, cache)
    if root is None:
        return []
    components = _components(root)
    skipped = set(skip)
    tops = [root] if components is None else [root / c for c in components if c not in skipped]
    found: dict[Path, None] = {}  # resolved: a snapshot's files link to its blobs
    seen: set[str] = set()
    for top in tops:
        for path in _weights_under(top, seen):
            found.setdefault(path.resolve(), None)
    return list(found)


def _components(root: Path) -> list[str] | None:
    """A pipeline folder's component folders, or None where it is not one."""
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    return sorted(name for name, value in index.items() if isinstance(value, list))


def _weights_under(top: Path, seen: set[str]) -> list[Path]:
    files: list[Path] = []
    for folder, subfolders, names in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a folder linked twice
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()
        weights = sorted(n for n in names if n.endswith(WEIGHT_SUFFIXES))
        if any(n.endswith(".safetensors") for n in weights):
            weights = [n for n in weights if n.endswith(".safetensors")]
        files += [Path(folder) / n for n in weights if os.path.isfile(os.path.join(folder, n))]
    return files


def model_files(
    model: str,
    lora: str,
    lora_weight: str,
    *,
    cache: Path | None = None,
    skip: Iterable[str] = (),
) -> list[Path]:
    """What loading a pipeline and its LoRA reads, in that order. The pipeline comes from
    ``cache`` (``IMAGINE_HF_CACHE_DIR``); the LoRA loader always uses the default Hub cache."""
    return weight_files(model, cache=cache, skip=skip) + named_file(lora, lora_weight)


def named_file(source: str, name: str, *, cache: Path | None = None) -> list[Path]:
    """One file of a model folder or cached Hub snapshot (a LoRA repository holds many; the
    loader reads the one named), or nothing where it is not on this machine."""
    root = _local_root(source, cache)
    path = root / name if root is not None and name else None
    return [path.resolve()] if path is not None and path.is_file() else []


def _local_root(source: str, cache: Path | None) -> Path | None:
    if not source:
        return None
    if not is_hub_id(source):
        path = Path(source).expanduser()
        return path if path.is_dir() else None
    repo = hub_cache_dir(source, cache=cache)
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def chunks(files: Iterable[Path], chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Each file cut into ``chunk_bytes`` pieces, files in the order given."""
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        for offset in range(0, size, chunk_bytes):
            yield Chunk(path, offset, min(chunk_bytes, size - offset))


def available_memory() -> int | None:
    """What the page cache can hold without evicting: the smaller of the machine's
    ``MemAvailable`` and, in a container, what its memory limit leaves (the page cache counts
    against it); None where neither is known."""
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Limit minus usage, plus the inactive file cache the kernel would drop first (cgroup v2,
    then v1); None without a limit."""
    for limit, usage, stat, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        try:
            cap = (root / limit).read_text().strip()
            if cap == "max" or int(cap) >= 2**60:  # v1 says "no limit" with a huge number
                return None
            used = int((root / usage).read_text())
            cached = 0
            for line in (root / stat).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive:
                    cached = int(value)
            return max(0, int(cap) - used + cached)
        except (OSError, ValueError):
            continue
    return None


def read_ahead(
    model: str,
    lora: str,
    lora_weight: str,
    *,
    cache: Path | None,
    enabled: bool,
    skip: Iterable[str] = (),
) -> contextlib.AbstractContextManager[object]:
    """Around a pipeline's load: its files read ahead (``IMAGINE_PREFETCH_WEIGHTS``)."""
    if not enabled:
        return contextlib.nullcontext()
    return Prefetch(model_files(model, lora, lora_weight, cache=cache, skip=skip))


class Prefetch:
    """While open, ``threads`` daemon threads read ``files`` through once, chunk by chunk; on
    exit they stop at the next chunk and the figures are logged."""

    def __init__(
        self,
        files: list[Path],
        *,
        threads: int = THREADS,
        chunk_bytes: int = CHUNK_BYTES,
        memory: Callable[[], int | None] = available_memory,
    ) -> None:
        self.files = list(dict.fromkeys(files))
        self.threads = max(1, threads)
        self.chunk_bytes = chunk_bytes
        self.memory = memory
        self.total = sum(_size(path) for path in self.files)
        self.read = 0
        self.exhausted = False  # every chunk was handed out
        self.thread_failed = False
        self.skipped: str | None = None
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._live = 0
        self._pending: Iterator[Chunk] = iter(())
        self._started = 0.0
        self._finished: float | None = None  # when the last thread ended

    def __enter__(self) -> Prefetch:
        self.skipped = self._why_not()
        if self.skipped is not None:
            logger.info("weights not read ahead: %s", self.skipped)
            return self
        self._pending = chunks(self.files, self.chunk_bytes)
        self._started = time.perf_counter()
        try:
            for n in range(self.threads):
                worker = threading.Thread(
                    target=self._work, name=f"imagine-prefetch-{n}", daemon=True
                )
                with self._lock:
                    self._live += 1
                try:
                    worker.start()
                except BaseException:
                    with self._lock:
                        self._live -= 1
                    raise
                self._workers.append(worker)
        except Exception:  # no threads to be had: the loader reads on its own
            logger.warning("weights not read ahead: could not start threads", exc_info=True)
            self.close()
            return self
        logger.info(
            "reading %.1f GiB of weights ahead of the loader (%d files, %d threads)",
            self.total / 2**30, len(self.files), len(self._workers),
        )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask the threads to stop after the chunk each is reading (returns at once)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether every thread has ended (all read, or stopped) within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(worker.is_alive() for worker in self._workers)

    def close(self) -> None:
        """Stop reading (the loader is done with the files) and log what was read."""
        if not self._workers:
            return
        self.stop()
        self.wait(5)
        self._workers = []
        ended = self._finished if self._finished is not None else time.perf_counter()
        self.seconds = ended - self._started
        missing = self.total - self.read
        if self.thread_failed:
            outcome = "a thread failed, see above"
        elif not self.exhausted:
            outcome = "stopped at the loader's end"
        elif missing > 0:  # files gone, shrunk or unreadable since they were listed
            outcome = f"{_amount(missing)} could not be read"
        else:
            outcome = "all"
        logger.info(
            "read ahead %.1f of %.1f GiB in %.1fs (%.2f GB/s; %s)",
            self.read / 2**30, self.total / 2**30, self.seconds,
            self.read / max(self.seconds, 1e-9) / 1e9, outcome,
        )  # fmt: skip

    def _why_not(self) -> str | None:
        if not self.files or self.total == 0:
            return "no local weight files"
        available = self.memory()
        if available is None:
            return "available memory unknown"
        if self.total > available * MEMORY_SHARE:
            return (
                f"{self.total / 2**30:.1f} GiB of weights would not stay cached "
                f"({available / 2**30:.1f} GiB available)"
            )
        return None

    def _next(self) -> Chunk | None:
        with self._lock:
            chunk = next(self._pending, None)
            if chunk is None:
                self.exhausted = True
            return chunk

    def _work(self) -> None:
        view = memoryview(bytearray(self.chunk_bytes))
        handle: tuple[Path, int] | None = None  # this thread's open file
        try:
            while not self._stop.is_set():
                chunk = self._next()
                if chunk is None:
                    break
                try:
                    if handle is None or handle[0] != chunk.path:
                        if handle is not None:
                            os.close(handle[1])
                        handle = None
                        handle = (chunk.path, os.open(chunk.path, os.O_RDONLY))
                    got = _read(handle[1], chunk, view)
                except OSError:  # gone or unreadable: the loader will say so if it matters
                    continue
                with self._lock:
                    self.read += got
        except Exception:  # a read-ahead is a nicety: the loader reads what is missing
            logger.warning("a read-ahead thread stopped", exc_info=True)
            self.thread_failed = True
        finally:
            if handle is not None:
                os.close(handle[1])
            with self._lock:
                self._live -= 1
                if self._live == 0:
                    self._finished = time.perf_counter()


def _read(fd: int, chunk: Chunk, view: memoryview) -> int:
    got = 0
    while got < chunk.length:
        n = os.preadv(fd, [view[: chunk.length - got]], chunk.offset + got)
        if n <= 0:  # the file shrank under us: nothing more to read here
            break
        got += n
    return got


def _amount(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
