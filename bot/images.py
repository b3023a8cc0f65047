"""The bot's kept images: the image store (``bot.store``, files) and its rows (``dbmod.images``)
working together.

``ImageKeeper`` is the one place that writes either: a delivered image is kept (``keep``), a
variation reads its parent's PNG back (``read``), the Delete button and a member's erase
remove files once no row references them, and retention sweeps delete the oldest files and
forget their rows. Every file operation runs in a thread (``asyncio.to_thread``): the store is
blocking disk I/O.

Keeping an image is best effort: a full or read-only disk never stops a delivery. The failure
is logged once per reason and remembered (``problem``: the store's own message, or the
exception's class, never a database error's text) for ``/status``; the image simply has no
stored copy, and its Vary buttons say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import db as dbmod
from bot.store import (
    ImageGone,
    ImageStore,
    StoredImage,
    StoreError,
    SweepEntry,
    SweepResult,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The retention sweep deletes files and forgets their rows this many at a time, each batch
# under its files' locks: one thread hop and one transaction per batch, not per file.
SWEEP_BATCH = 64


class NotStored(LookupError):
    """A job has no stored image (never kept, deleted, erased, or swept by retention)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreReport:
    """What ``/status`` shows about the image store."""

    images: int
    total_bytes: int
    problem: str | None = None
    problem_at: float | None = None  # Unix time


class ImageKeeper:
    """Keeps delivered images and answers for them; see the module docstring."""

    def __init__(
        self,
        store: Callable[[], ImageStore | None],
        database: Callable[[], dbmod.Database],
    ) -> None:
        self._store = store
        self._database = database
        self._problem: str | None = None
        self._problem_at: float | None = None
        self._lock = asyncio.Lock()  # one sweep at a time
        # Images being kept right now, by job: a Vary click that races the end of a delivery
        # (the buttons show while the image is still being written) waits for it.
        self._keeping: dict[str, asyncio.Task[object]] = {}
        # One lock per file: keeping an image (file, then row) and deleting a file nothing
        # references (check, then delete) must not interleave for the same bytes, or a kept
        # twin of a deleted image loses its file. Entries go when nobody holds or waits.
        self._file_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Locked work that outlives its caller (the set holds the tasks, so they are not lost).
        self._holding: set[object] = set()

    @property
    def store(self) -> ImageStore | None:
        return self._store()

    @property
    def db(self) -> dbmod.Database:
        return self._database()

    # ------------------------------------------------------------------ problems
    def _trouble(self, what: str, exc: BaseException) -> None:
        """Log the failure in full; remember for ``/status`` only what is safe to show there:
        the store's own messages, or the class of anything else (a database error's text
        carries its SQL and parameters)."""
        reason = str(exc) if isinstance(exc, StoreError) else ""
        reason = reason or exc.__class__.__name__
        if reason != self._problem:
            logger.error("image store: %s: %s", what, str(exc) or reason)
        else:
            logger.debug("image store: %s again: %s", what, reason)
        self._problem, self._problem_at = reason, time.time()

    def _fine(self) -> None:
        if self._problem is not None:
            logger.info("image store: writing works again")
        self._problem = self._problem_at = None

    @property
    def problem(self) -> str | None:
        """The latest failure to keep an image, or None once one was kept again."""
        return self._problem

    async def report(self) -> StoreReport | None:
        """Counts and the latest failure, for ``/status``; None when no store is configured."""
        if self.store is None:
            return None
        try:
            images, total = await dbmod.image_totals(self.db)
        except Exception as exc:
            logger.warning("image store totals unavailable: %s", exc)
            images, total = 0, 0
        return StoreReport(images, total, self._problem, self._problem_at)

    # ------------------------------------------------------------------ keeping
    async def keep(
        self,
        *,
        job_key: str,
        user_id: int,
        guild_id: int | None,
        png: bytes,
        sweep: bool = True,
    ) -> StoredImage | None:
        """Store a delivered image and record it for its job; never raises (see module doc).

        ``sweep=False`` skips the size cap's sweep: for images kept before the quota has
        decided (an edit's inputs), so a request that is then refused never evicts anyone's
        images; the next delivered image enforces the cap."""
        store = self.store
        if store is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            self._keeping[job_key] = task
        try:
            return await self._keep(store, job_key, user_id, guild_id, png, sweep)
        finally:
            if self._keeping.get(job_key) is task:
                del self._keeping[job_key]

    async def _being_kept(self, job_key: str) -> None:
        """Wait for an image of this job that is being kept right now, if any."""
        task = self._keeping.get(job_key)
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.wait({task})

    @contextlib.asynccontextmanager
    async def _file_lock(self, sha256: str) -> AsyncIterator[None]:
        lock, users = self._file_locks.get(sha256, (asyncio.Lock(), 0))
        self._file_locks[sha256] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._file_locks[sha256]
            if users <= 1:
                del self._file_locks[sha256]
            else:
                self._file_locks[sha256] = (lock, users - 1)

    async def _locked(self, sha256s: Iterable[str], work: Awaitable[T]) -> T:
        """Run ``work`` under the files' locks, to its end even if the caller is cancelled: a
        thread writing or deleting a file cannot be stopped, so the lock must outlast it.

        Only the retention sweep takes several locks, always in sorted order; everything else
        takes one and waits for nothing else while holding it, so waits never form a cycle."""

        async def hold() -> T:
            async with contextlib.AsyncExitStack() as stack:
                for sha256 in sorted(set(sha256s)):
                    await stack.enter_async_context(self._file_lock(sha256))
                return await work

        task = asyncio.create_task(hold())
        self._holding.add(task)
        task.add_done_callback(self._holding.discard)
        return await asyncio.shield(task)

    async def _keep(
        self,
        store: ImageStore,
        job_key: str,
        user_id: int,
        guild_id: int | None,
        png: bytes,
        sweep: bool,
    ) -> StoredImage | None:
        sha256 = hashlib.sha256(png).hexdigest()
        stored = await self._locked(
            [sha256], self._put_and_record(store, job_key, user_id, guild_id, png)
        )
        if stored is None:
            return None
        kept, replaced = stored
        self._fine()
        if replaced is not None:
            await self.delete_unreferenced([replaced])
        if sweep:
            await self._enforce_size_cap(store)
        return kept

    async def _put_and_record(
        self,
        store: ImageStore,
        job_key: str,
        user_id: int,
        guild_id: int | None,
        png: bytes,
    ) -> tuple[StoredImage, str | None] | None:
        """The file, then its row; returns the stored image and the sha256 of an image this
        job had before (a resumed delivery), or None when either step failed."""
        try:
            stored = await asyncio.to_thread(store.put, png)
        except StoreError as exc:
            self._trouble(f"job {job_key}'s image was not kept", exc)
            return None
        except Exception as exc:  # a bug must not cost the member their image
            logger.exception("image store: job %s's image was not kept", job_key)
            self._trouble(f"job {job_key}'s image was not kept", exc)
            return None
        try:
            _, replaced = await dbmod.add_image(
                self.db,
                job_key=job_key,
                sha256=stored.sha256,
                size=stored.size,
                width=stored.width,
                height=stored.height,
                thumb_size=stored.thumb_size,
                user_id=user_id,
                guild_id=guild_id,
            )
        except Exception as exc:
            # The file stays; the next retention sweep removes it if nothing ever names it.
            self._trouble(f"job {job_key}'s image was not recorded", exc)
            return None
        return stored, replaced

    async def _enforce_size_cap(self, store: ImageStore) -> None:
        """Sweep at once when the size cap is passed (the periodic sweep covers the age)."""
        if store.max_total_bytes is None:
            return
        try:
            _, total = await dbmod.image_totals(self.db)
        except Exception as exc:
            logger.warning("image store totals unavailable: %s", exc)
            return
        if total > store.max_total_bytes:
            try:
                await self.sweep()
            except Exception:  # ``keep`` never raises: the periodic sweep tries again
                logger.exception("image store: the size cap's sweep failed")

    # ------------------------------------------------------------------ reading
    async def read(self, job_key: str) -> bytes:
        """The PNG of a job's stored image; ``NotStored`` when there is none any more.

        A disk that cannot be read counts as "not stored" for the member (nothing is charged),
        and is logged and shown in ``/status`` like a failed write.
        """
        store = self.store
        if store is None:
            raise NotStored(job_key)
        await self._being_kept(job_key)
        record = await dbmod.get_image(self.db, job_key)
        if record is None:
            raise NotStored(job_key)
        try:
            return await asyncio.to_thread(store.read_png, record.sha256)
        except ImageGone:
            raise NotStored(job_key) from None
        except StoreError as exc:
            self._trouble(f"job {job_key}'s image could not be read", exc)
            raise NotStored(job_key) from exc

    async def has(self, job_key: str) -> bool:
        """Whether a job's image is stored (its row and its file)."""
        store = self.store
        if store is None:
            return False
        await self._being_kept(job_key)
        record = await dbmod.get_image(self.db, job_key)
        if record is None:
            return False
        return await asyncio.to_thread(store.exists, record.sha256)

    # ------------------------------------------------------------------ removing
    async def delete_unreferenced(self, sha256s: list[str] | tuple[str, ...]) -> int:
        """Delete files no row references any more (the Delete button, /forget-me, history
        retention); returns how many went.

        The caller saw no row naming each file, but an image with the same bytes may have
        been kept since: under the file's lock, a file that a row names again stays."""
        store = self.store
        if store is None or not sha256s:
            return 0
        deleted = 0
        for sha256 in sha256s:
            deleted += await self._locked([sha256], self._delete_if_unreferenced(store, sha256))
        return deleted

    async def _delete_if_unreferenced(self, store: ImageStore, sha256: str) -> int:
        try:
            if await dbmod.image_references(self.db, sha256):
                return 0
            await asyncio.to_thread(store.delete, sha256)
            return 1
        except Exception as exc:  # disk or database: no row names it, the sweep finds it later
            self._trouble("a file could not be deleted", exc)
            return 0

    async def forget(self, job_key: str) -> bool:
        """The Delete button: drop a job's stored image (the file goes when no other job shares
        it). Returns whether there was one."""
        record = await dbmod.get_image(self.db, job_key)
        if record is None:
            return False
        sha256 = await dbmod.delete_image(self.db, job_key)
        if sha256 is not None:
            await self.delete_unreferenced([sha256])
        return True

    async def erase_user(self, user_id: int) -> dbmod.ErasedUser:
        """A member's erase command: their history rows and stored images, files included."""
        erased = await dbmod.erase_user(self.db, user_id)
        await self.delete_unreferenced(erased.unreferenced)
        return erased

    # ------------------------------------------------------------------ retention
    async def sweep(self) -> SweepResult | None:
        """Retention: delete the files past the age or size limit and forget their rows.

        Each file goes and its rows are forgotten under the file's lock, so an image with the
        same bytes kept meanwhile either refreshed the file's age first (and it stays) or is
        kept afresh afterwards; it never loses its row to a sweep of its old twin. (A file
        refreshed so stays, and the store may end a little over its size cap: the next image
        kept sweeps again.)"""
        store = self.store
        if store is None or (store.max_age_s is None and store.max_total_bytes is None):
            return None
        async with self._lock:
            plan = await asyncio.to_thread(store.plan_sweep)
            deleted: list[tuple[SweepEntry, int]] = []
            for start in range(0, len(plan.doomed), SWEEP_BATCH):
                batch = plan.doomed[start : start + SWEEP_BATCH]
                work = self._sweep_batch(store, batch)
                deleted += await self._locked([e.sha256 for e in batch], work)
            return plan.result(deleted)

    async def _sweep_batch(
        self, store: ImageStore, batch: tuple[SweepEntry, ...]
    ) -> list[tuple[SweepEntry, int]]:
        def delete() -> list[tuple[SweepEntry, int]]:
            sizes = ((entry, store.delete_if_unchanged(entry)) for entry in batch)
            return [(entry, size) for entry, size in sizes if size is not None]

        deleted = await asyncio.to_thread(delete)
        if deleted:
            await dbmod.forget_images(self.db, [entry.sha256 for entry, _ in deleted])
        return deleted

    async def sweep_forever(self, interval_s: float) -> None:
        """Sweep now and then every ``interval_s`` until cancelled; a failed sweep is logged and
        the next one tries again."""
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("image retention sweep failed")
            await asyncio.sleep(interval_s)
