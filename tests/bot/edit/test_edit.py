"""/edit and the Edit button in SimCord, on the tiny text-to-image and edit models: one and three
uploaded images, editing a finished image from the image store, Reroll under an edit, and what
a member reads when the image to edit is gone."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

import db
from bot.edit.service import SOURCE_GONE_TEXT
from bot.imagine.spec import input_key
from bot.uploads import validate_upload, without_metadata
from engine.generators import Generators
from engine.queue import LocalEngine
from engine.settings import EngineSettings
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE
from tests.bot.harness import QUEUED_CEILING, Harness, attachment_bytes, png_parameters

FAST_EDIT_STEPS = 4  # the tests' default mode is fast: the edit Lightning LoRA's 4 steps


def edit_engine(model_dir: Path, edit_dir: Path) -> LocalEngine:
    """The tiny engine with editing on, as IMAGINE_EDIT_MODEL turns it on."""
    return LocalEngine(
        EngineSettings(
            _env_file=None,  # type: ignore[call-arg]
            model=str(model_dir),
            max_side=64,
            warmup=False,
            compile=False,
            queued_ceiling_per_user=QUEUED_CEILING,
            edit_model=str(edit_dir),
            edit_lightning_lora=str(edit_dir / TINY_LORA_DIR),
            edit_lightning_weight_name=TINY_LORA_FILE,
        )
    )


@pytest.fixture(scope="module")
def local_engine(tiny_model_dir: Path, tiny_edit_dir: Path) -> Iterator[LocalEngine]:
    """This module's engine edits too (it replaces the session's text-to-image one)."""
    engine = edit_engine(tiny_model_dir, tiny_edit_dir)
    asyncio.run(engine.start())
    asyncio.run(engine.loaded())  # start() returns at once; the models load on its thread
    assert isinstance(engine._generator, Generators)
    assert engine._generator.tasks() == ("generate", "edit")
    yield engine
    asyncio.run(engine.close())


def photo(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_as(data: bytes, name: str) -> str:
    """The SHA-256 an upload is kept and named under (after it is normalised)."""
    return validate_upload(data, "image/png", name).sha256


def button_labels(message: discord.Message) -> list[str]:
    return [child.label for row in message.components for child in row.children]  # type: ignore[union-attr]


async def delivered(harness: Harness, result: Any) -> tuple[discord.Message, bytes]:
    assert result.response is not None and not result.ephemeral, result.response
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert message.attachments, message.content
    return message, await attachment_bytes(message)


async def test_edit_one_uploaded_image(harness: Harness) -> None:
    alice = harness.member("alice")
    upload = photo((96, 64), (200, 40, 40))
    result = await alice.slash(
        harness.channel, "edit", image=("beach.png", upload), instruction="make the sky green"
    )
    message, png = await delivered(harness, result)

    params = png_parameters(png)
    assert params["instruction"] == "make the sky green"
    assert params["input_images"] == stored_as(upload, "beach.png")
    assert params["steps"] == FAST_EDIT_STEPS and params["mode"] == "fast"
    assert Image.open(io.BytesIO(png)).size == (64, 48)  # the upload's 3:2 shape, max side 64
    assert "Edit" in button_labels(message)
    (row,) = await harness.rows()
    assert (row.kind, row.status, row.prompt, row.charged) == (
        "edit",
        "done",
        "make the sky green",
        True,
    )
    assert row.model is not None and "edit" in row.model
    assert (await harness.quota(alice)).used == 1
    # The upload is kept under the hash the result names, as the job's input image.
    kept = await harness.bot.images.read(input_key(row.job_key, 1))
    assert hashlib.sha256(kept).hexdigest() == params["input_images"]


async def test_edit_three_uploaded_images(harness: Harness) -> None:
    bob = harness.member("bob")
    uploads = [
        ("portrait.png", photo((64, 96), (10, 10, 200))),
        ("hat.png", photo((80, 80), (250, 250, 0))),
        ("scarf.png", photo((128, 64), (0, 120, 0))),
    ]
    result = await bob.slash(
        harness.channel,
        "edit",
        image=uploads[0],
        image2=uploads[1],
        image3=uploads[2],
        instruction="put the hat and the scarf on the person",
        seed=11,
    )
    _, png = await delivered(harness, result)
    params = png_parameters(png)
    hashes = params["input_images"].split(",")
    assert hashes == [stored_as(data, name) for name, data in uploads]  # in the order given
    assert params["seed"] == 11
    assert Image.open(io.BytesIO(png)).size == (48, 64)  # the first image's portrait shape
    (row,) = await harness.rows()
    assert row.status == "done" and row.kind == "edit"


async def test_edit_button_edits_the_stored_image_and_reroll_redoes_the_edit(
    harness: Harness,
) -> None:
    alice, bob = harness.member("alice"), harness.member("bob")
    original = await alice.slash(harness.channel, "imagine", prompt="a lighthouse", seed=5)
    await harness.wait_jobs()
    source = harness.message(original.response.id)
    assert "Edit" in button_labels(source)
    source_png = await attachment_bytes(source)

    form = await bob.click(source, label="Edit")
    assert form.modal is not None and form.modal["title"] == "Edit this image"
    edited, png = await delivered(
        harness, await bob.submit_modal(form, {"instruction": "paint it at night"})
    )
    params = png_parameters(png)
    assert params["instruction"] == "paint it at night"
    # The input is a copy of the stored image without its text chunks, named by its own hash.
    assert params["input_images"] == hashlib.sha256(without_metadata(source_png)).hexdigest()
    assert params["input_images"] != hashlib.sha256(source_png).hexdigest()
    parent, edit_row = await harness.rows()
    assert (edit_row.kind, edit_row.parent_key, edit_row.user_id) == (
        "edit",
        parent.job_key,
        bob.id,
    )
    assert (await harness.quota(bob)).used == 1 and (await harness.quota(alice)).used == 1

    # Reroll under an edit: the same edit of the same image, another seed.
    _, again = await delivered(harness, await alice.click(edited, label="Reroll"))
    again_params = png_parameters(again)
    assert again_params["instruction"] == "paint it at night"
    assert again_params["input_images"] == params["input_images"]
    assert again_params["seed"] != params["seed"]
    rows = await harness.rows()
    assert [r.kind for r in rows] == ["imagine", "edit", "edit"]
    assert rows[2].parent_key == edit_row.job_key


async def test_edit_button_on_an_image_no_longer_stored_charges_nothing(
    harness: Harness,
) -> None:
    alice = harness.member("alice")
    original = await alice.slash(harness.channel, "imagine", prompt="a kite", seed=2)
    await harness.wait_jobs()
    source = harness.message(original.response.id)
    (row,) = await harness.rows()
    await harness.bot.images.forget(row.job_key)  # as retention would

    refused = await alice.click(source, label="Edit")
    assert refused.ephemeral and refused.modal is None
    assert refused.response.content == SOURCE_GONE_TEXT
    assert len(await harness.rows()) == 1 and (await harness.quota(alice)).used == 1


async def test_an_edit_form_sent_after_the_image_went_charges_nothing(harness: Harness) -> None:
    alice = harness.member("alice")
    original = await alice.slash(harness.channel, "imagine", prompt="a kite", seed=2)
    await harness.wait_jobs()
    source = harness.message(original.response.id)
    form = await alice.click(source, label="Edit")
    (row,) = await harness.rows()
    await harness.bot.images.forget(row.job_key)  # swept while the form was open

    refused = await alice.submit_modal(form, {"instruction": "add a rainbow"})
    assert refused.ephemeral and refused.response.content == SOURCE_GONE_TEXT
    assert len(await harness.rows()) == 1 and (await harness.quota(alice)).used == 1


async def test_status_shows_editing_and_the_models_on_the_gpu(
    harness: Harness, tiny_model_dir: Path, tiny_edit_dir: Path
) -> None:
    result = await harness.member("alice").slash(harness.channel, "status")
    (embed,) = result.response.embeds
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Editing (/edit)"] == (
        f"On. On the GPU now: {tiny_model_dir.name}, {tiny_edit_dir.name}."
    )


async def test_an_edit_interrupted_by_a_restart_resumes_once(harness: Harness) -> None:
    alice = harness.member("alice")
    upload = photo((64, 64), (30, 160, 60))
    harness.engine.hold()
    result = await alice.slash(
        harness.channel, "edit", image=("field.png", upload), instruction="add a scarecrow"
    )
    key = harness.key(result)

    await harness.restart()
    resubmitted = [r for r in harness.engine.submitted if r.job_id == key]
    assert len(resubmitted) == 2  # once before the restart, once after
    # After the restart the inputs come back from the image store, the same bytes.
    assert resubmitted[1].images == resubmitted[0].images
    assert len(resubmitted[1].images) == 1
    harness.engine.release()
    await harness.wait_jobs()

    row = await harness.row(key)
    assert (row.kind, row.status) == ("edit", "done")
    params = png_parameters(await attachment_bytes(harness.message(row.message_id)))
    assert params["input_images"] == stored_as(upload, "field.png")
    assert len([m for m in harness.channel.history() if m.attachments]) == 1
    assert (await harness.quota(alice)).used == 1  # charged once


async def test_an_edit_whose_inputs_went_during_a_restart_is_refunded_once(
    harness: Harness,
) -> None:
    alice = harness.member("alice")
    harness.engine.hold()
    result = await alice.slash(
        harness.channel,
        "edit",
        image=("field.png", photo((64, 64), (1, 2, 3))),
        instruction="add a scarecrow",
    )
    key = harness.key(result)
    await harness.bot.close_services()  # the bot stops with the edit waiting
    harness.engine.release()
    await harness.bot.images.forget(input_key(key, 1))  # retention took the upload meanwhile
    await harness.restart()
    await harness.wait_jobs()

    row = await harness.row(key)
    assert row.status == "failed" and not row.charged
    message = harness.message(result.response.id)
    assert "could not be resumed after a restart" in message.content
    assert "no longer stored" in message.content and message.components == []
    assert (await harness.quota(alice)).used == 0  # refunded
    await harness.restart()  # a second start finds nothing left to refund
    await harness.wait_jobs()
    assert (await harness.quota(alice)).used == 0 and (await harness.row(key)).status == "failed"


async def test_a_refused_edit_never_evicts_anyones_stored_images(harness: Harness) -> None:
    """An upload kept before the quota decides must not trigger the size cap's sweep: a member
    with no quota left could otherwise delete everyone's stored images, for free."""
    alice, bob = harness.member("alice"), harness.member("bob")
    await alice.slash(harness.channel, "imagine", prompt="a lighthouse", seed=5)
    await harness.wait_jobs()
    (kept_row,) = await harness.rows()
    store = harness.bot.store
    assert store is not None
    kept = await harness.bot.images.read(kept_row.job_key)
    await harness.admin.slash(harness.channel, "limits set", daily_quota=1)
    await bob.slash(harness.channel, "imagine", prompt="a kite", seed=6)
    await harness.wait_jobs()
    # A cap that holds what is stored now and no large upload more.
    _, total = await db.image_totals(harness.database)
    store.max_total_bytes = total + 1024
    for _ in range(3):
        noisy = Image.effect_noise((512, 512), 120).convert("RGB")
        buffer = io.BytesIO()
        noisy.save(buffer, format="PNG")
        refused = await bob.slash(
            harness.channel, "edit", image=("noise.png", buffer.getvalue()), instruction="again"
        )
        assert refused.ephemeral and "quota" in refused.response.content
    assert await harness.bot.images.read(kept_row.job_key) == kept
    assert (await harness.quota(bob, limit=1)).used == 1


async def test_erasing_an_image_someone_edited_removes_its_file(harness: Harness) -> None:
    """The Edit button keeps its own copy of the source (no text chunks): the source's owner
    erasing their data leaves no file of theirs, prompt included, in the store."""
    alice, bob = harness.member("alice"), harness.member("bob")
    original = await alice.slash(harness.channel, "imagine", prompt="my secret garden", seed=5)
    await harness.wait_jobs()
    source = harness.message(original.response.id)
    source_png = await attachment_bytes(source)
    form = await bob.click(source, label="Edit")
    await delivered(harness, await bob.submit_modal(form, {"instruction": "at night"}))
    store = harness.bot.store
    assert store is not None
    sha = hashlib.sha256(source_png).hexdigest()
    assert store.png_path(sha).exists()
    parent = (await harness.rows())[0]
    await harness.bot.images.forget(parent.job_key)  # what Delete and /forget-me do per image
    assert not store.png_path(sha).exists()
