"""The image store as members meet it: every delivered image kept (PNG and thumbnail), Delete
and /forget-me removing files, retention by size, a disk that cannot be written, and a
variation interrupted by a restart."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image
from sqlalchemy import text

import db
from bot.images import ImageKeeper
from bot.store import ImageStore
from tests.bot.harness import Harness, attachment_bytes, png_parameters, post_old_buttons


async def finished_image(harness: Harness, actor: Any, **options: Any) -> discord.Message:
    result = await actor.slash(harness.channel, "imagine", **options)
    assert result.response is not None and not result.ephemeral
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert message.attachments, message.content
    return message


def artwork() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_files(harness: Harness) -> list[Path]:
    root = Path(harness.bot.settings.image_dir)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def record(harness: Harness, message: discord.Message) -> db.ImageRecord:
    row = next(r for r in await harness.rows() if r.message_id == message.id)
    image = await db.get_image(harness.database, row.job_key)
    assert image is not None, f"job {row.job_key} has no stored image"
    return image


async def test_delivered_images_are_kept_and_delete_removes_them(harness: Harness) -> None:
    alice = harness.member("alice")
    image = await finished_image(harness, alice, prompt="a brass compass", seed=5)
    kept = await record(harness, image)
    files = stored_files(harness)
    assert [p.name for p in files] == [f"{kept.sha256}.png", f"{kept.sha256}.webp"]
    assert files[0].read_bytes() == await attachment_bytes(image)  # chunks included
    assert png_parameters(files[0].read_bytes())["seed"] == 5
    assert (kept.width, kept.height, kept.user_id) == (64, 64, alice.id)

    await alice.click(image, label="Delete")
    assert image.id not in [m.id for m in harness.channel.history()]
    assert stored_files(harness) == []
    assert await db.get_image(harness.database, kept.job_key) is None
    assert (await harness.row(kept.job_key)).status == "done"  # history stays


async def test_size_cap_removes_the_oldest_and_its_vary_button_says_so(harness: Harness) -> None:
    alice = harness.member("alice")
    older = await finished_image(harness, alice, prompt="an old lighthouse", seed=1)
    first = await record(harness, older)
    store = harness.bot.store
    assert store is not None
    # A cap that holds one image of this size, not two (what IMAGINE_IMAGE_MAX_TOTAL_MB sets).
    store.max_total_bytes = int((first.size + first.thumb_size) * 1.5)
    newer = await finished_image(harness, alice, prompt="a new lighthouse", seed=2)
    second = await record(harness, newer)

    names = {p.name for p in stored_files(harness)}
    assert names == {f"{second.sha256}.png", f"{second.sha256}.webp"}
    assert await db.get_image(harness.database, first.job_key) is None
    before = len(await harness.rows())
    for label in ("Vary (Subtle)", "Vary (Strong)", "Remix"):
        answer = await alice.click(older, label=label)
        assert answer.ephemeral and "no longer stored" in answer.response.content, label
        assert "Nothing was charged" in answer.response.content
    assert len(await harness.rows()) == before  # nothing reserved
    assert (await harness.quota(alice)).used == 2  # nothing charged
    # The newer image still varies.
    vary = await alice.click(newer, label="Vary (Subtle)")
    await harness.wait_jobs()
    assert png_parameters(await attachment_bytes(harness.message(vary.response.id)))[
        "parent_job_id"
    ] == (second.job_key)


async def test_an_unwritable_store_still_delivers_and_status_says_so(
    harness: Harness, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the image folder should be")
    store = harness.bot.store
    assert store is not None
    store.root = blocker / "images"
    alice = harness.member("alice")
    image = await finished_image(harness, alice, prompt="a stubborn disk", seed=9)
    assert png_parameters(await attachment_bytes(image))["seed"] == 9
    rows = await harness.rows()
    assert (
        rows[0].status == "done" and await db.get_image(harness.database, rows[0].job_key) is None
    )

    status = await alice.slash(harness.channel, "status")
    fields = {f.name: f.value for f in status.response.embeds[0].fields}
    assert "Images are not being kept" in fields["Image store"]
    assert "the image folder is not a folder" in fields["Image store"]
    gone = await alice.click(image, label="Vary (Strong)")
    assert gone.ephemeral and "no longer stored" in gone.response.content


async def test_forget_me_erases_images_and_history_after_confirming(harness: Harness) -> None:
    alice, bob = harness.member("alice"), harness.member("bob")
    await finished_image(harness, alice, prompt="mine one")
    await finished_image(harness, alice, prompt="mine two")
    bobs = await finished_image(harness, bob, prompt="bob's")
    assert len(stored_files(harness)) == 6

    asked = await alice.slash(harness.channel, "forget-me")
    assert asked.ephemeral and "Erase everything" in asked.response.content
    # Bob cannot see alice's question; a crafted click on her button is refused all the same.
    crafted = await post_old_buttons(harness, f"imagine:erase:{alice.id}:yes")
    stranger = await bob.click(crafted, custom_id=f"imagine:erase:{alice.id}:yes")
    assert stranger.ephemeral and "Only the member who asked" in stranger.response.content
    kept = await alice.click(asked.response, label="Keep it")
    assert kept.acknowledged
    assert len(await harness.rows()) == 3 and len(stored_files(harness)) == 6

    asked = await alice.slash(harness.channel, "forget-me")
    await alice.click(asked.response, label="Erase everything")
    await harness.env.settle(timeout=30)
    message = asked.response.content
    assert "Erased: 2 generations" in message and "2 stored images" in message, message
    rows = await harness.rows()
    assert [r.user_id for r in rows] == [bob.id]
    bob_image = await record(harness, bobs)
    names = {p.name for p in stored_files(harness)}
    assert names == {f"{bob_image.sha256}.png", f"{bob_image.sha256}.webp"}
    history = await alice.slash(harness.channel, "history")
    assert history.response.embeds[0].description.startswith("No generations yet")


async def test_variation_interrupted_by_a_restart_resumes_once(harness: Harness) -> None:
    alice = harness.member("alice")
    original = await finished_image(harness, alice, prompt="a river delta", seed=31)
    parent = (await harness.rows())[0]
    harness.engine.hold()
    vary = await alice.click(original, label="Vary (Strong)")
    key = harness.key(vary)
    assert (await harness.row(key)).status in ("queued", "running")

    await harness.restart()
    resubmitted = [r for r in harness.engine.submitted if r.job_id == key]
    assert len(resubmitted) == 2  # once before the restart, once after
    assert resubmitted[1].images == resubmitted[0].images != ()  # read again
    harness.engine.release()
    await harness.wait_jobs()

    row = await harness.row(key)
    assert row.status == "done" and row.strength == 0.7 and row.parent_key == parent.job_key
    reply = harness.message(row.message_id)
    params = png_parameters(await attachment_bytes(reply))
    assert params["parent_job_id"] == parent.job_key and params["strength"] == 0.7
    assert len([m for m in harness.channel.history() if m.attachments]) == 2
    assert (await harness.quota(alice)).used == 2  # the variation charged once


async def test_variation_whose_image_went_during_a_restart_is_refunded_once(
    harness: Harness,
) -> None:
    alice = harness.member("alice")
    original = await finished_image(harness, alice, prompt="a salt flat", seed=32)
    parent = (await harness.rows())[0]
    harness.engine.hold()
    vary = await alice.click(original, label="Vary (Subtle)")
    key = harness.key(vary)
    await harness.bot.close_services()  # the bot stops with the variation waiting
    harness.engine.release()
    await harness.bot.images.forget(parent.job_key)  # retention took the image meanwhile
    await harness.restart()
    await harness.wait_jobs()

    row = await harness.row(key)
    assert row.status == "failed" and not row.charged
    message = harness.message(vary.response.id)
    assert "could not be resumed after a restart" in message.content
    assert "no longer stored" in message.content and message.components == []
    assert (await harness.quota(alice)).used == 1  # refunded
    await harness.restart()  # a second start finds nothing left to refund
    await harness.wait_jobs()
    assert (await harness.quota(alice)).used == 1
    assert (await harness.row(key)).status == "failed"


async def reserve(database: db.Database, *keys: str) -> None:
    """History rows for these job keys (an image row needs its job's)."""
    for key in keys:
        await db.reserve_generation(
            database,
            db.NewGeneration(key, 1, 2, 3, "a test", "none", "1:1", "fast"),
            daily_quota=None,
            max_queued=None,
        )


def slow_writes(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The store's writes wait until the returned event is set (a slow disk)."""
    written = threading.Event()
    real_put = store.put

    def slow_put(png: bytes, **kwargs: Any) -> Any:
        written.wait(10)
        return real_put(png, **kwargs)

    monkeypatch.setattr(store, "put", slow_put)
    return written


async def test_a_read_waits_for_the_image_being_kept(
    database: db.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vary clicked the instant the image shows, while it is still being written: the click
    waits for the write instead of answering that the image is gone."""
    store = ImageStore(tmp_path / "images")
    keeper = ImageKeeper(lambda: store, lambda: database)
    written = slow_writes(store, monkeypatch)
    png = artwork()
    await reserve(database, "77")
    keeping = asyncio.create_task(keeper.keep(job_key="77", user_id=1, guild_id=3, png=png))
    reading = asyncio.create_task(keeper.read("77"))
    await asyncio.sleep(0.05)
    assert not reading.done()
    written.set()
    assert await reading == png
    assert (await keeping) is not None


async def test_deleting_an_image_never_takes_the_file_of_its_twin_kept_meanwhile(
    database: db.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs with the same bytes share one file. One's Delete found no other row naming
    the file, and before the file went the other job's image was kept: the file must stay."""
    store = ImageStore(tmp_path / "images")
    keeper = ImageKeeper(lambda: store, lambda: database)
    png = artwork()
    await reserve(database, "80", "81")
    assert await keeper.keep(job_key="80", user_id=1, guild_id=3, png=png) is not None
    real_delete = db.delete_image

    async def twin_kept_meanwhile(database_: db.Database, job_key: str) -> str | None:
        sha256 = await real_delete(database_, job_key)
        assert sha256 is not None  # nothing else named the file when the row went
        assert await keeper.keep(job_key="81", user_id=1, guild_id=3, png=png) is not None
        return sha256

    monkeypatch.setattr(db, "delete_image", twin_kept_meanwhile)
    assert await keeper.forget("80")
    assert await keeper.read("81") == png
    assert await keeper.has("81") and not await keeper.has("80")
    monkeypatch.setattr(db, "delete_image", real_delete)
    assert await keeper.forget("81")  # the last one out takes the file with it
    assert not list((tmp_path / "images").rglob("*.png"))


async def test_a_cancelled_keep_holds_the_files_lock_until_its_write_is_done(
    database: db.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread writing the file cannot be stopped: had the lock gone with the cancelled
    caller, a delete of the same bytes could run under the write."""
    store = ImageStore(tmp_path / "images")
    keeper = ImageKeeper(lambda: store, lambda: database)
    written = slow_writes(store, monkeypatch)
    png = artwork()
    await reserve(database, "78")
    keeping = asyncio.create_task(keeper.keep(job_key="78", user_id=1, guild_id=3, png=png))
    await asyncio.sleep(0.05)
    keeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await keeping
    sha256 = hashlib.sha256(png).hexdigest()
    deleting = asyncio.create_task(keeper.delete_unreferenced([sha256]))
    await asyncio.sleep(0.05)
    assert not deleting.done()  # waits for the write, not for the cancelled caller
    written.set()
    assert await deleting == 0  # the write finished and recorded its row: the file stays
    assert await keeper.read("78") == png


async def test_a_retention_sweep_never_forgets_a_twin_kept_while_its_file_went(
    database: db.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job 90's image is past its age and the sweep is deleting the file when job 91 makes
    the same bytes: 91 must end with its row and a file, not lose both to 90's sweep."""
    store = ImageStore(tmp_path / "images", max_age_days=1)
    keeper = ImageKeeper(lambda: store, lambda: database)
    png = artwork()
    await reserve(database, "90", "91")
    stored = await keeper.keep(job_key="90", user_id=1, guild_id=3, png=png)
    assert stored is not None
    for path in (store.png_path(stored.sha256), store.thumb_path(stored.sha256)):
        os.utime(path, (1.0, 1.0))  # kept long ago
    deleting, go = threading.Event(), threading.Event()
    real_delete = store.delete

    def slow_delete(sha256: str) -> int:
        deleting.set()
        go.wait(10)
        return real_delete(sha256)

    monkeypatch.setattr(store, "delete", slow_delete)
    sweeping = asyncio.create_task(keeper.sweep())
    assert await asyncio.to_thread(deleting.wait, 10)
    keeping = asyncio.create_task(keeper.keep(job_key="91", user_id=1, guild_id=3, png=png))
    await asyncio.sleep(0.05)
    go.set()
    result = await sweeping
    assert result is not None and result.deleted == (stored.sha256,)
    assert await keeping is not None
    assert await keeper.read("91") == png
    assert not await keeper.has("90")
    assert [p.name for p in (tmp_path / "images").rglob("*.png")] == [f"{stored.sha256}.png"]


async def test_status_names_a_database_failure_by_its_kind_never_its_sql(
    database: db.Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 20 item 10: ``/status`` showed ``str(exc)`` of the failure to record an image, and
    SQLAlchemy's text carries the statement (table names, parameters). The log keeps it."""
    store = ImageStore(tmp_path / "images")
    keeper = ImageKeeper(lambda: store, lambda: database)
    await reserve(database, "90")
    async with database.sessions.begin() as session:  # a database that cannot record images
        await session.execute(text("DROP TABLE images"))

    assert await keeper.keep(job_key="90", user_id=1, guild_id=3, png=artwork()) is None

    report = await keeper.report()
    assert report is not None and report.problem == "OperationalError"
    assert "images" in caplog.text  # the operator's log still says what failed
