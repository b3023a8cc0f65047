"""/edit on the wire: the project bot, unmodified, downloads members' attachments from the
emulator's CDN (as from Discord's), edits them on the tiny edit model, and refuses bad uploads
privately without charging anything.

The attachments arrive as Discord sends them: an attachment option whose value is an id, and
``data.resolved.attachments[id]`` with the file name, size, URL, content type and dimensions.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from typing import Any

from PIL import Image

from bot.uploads import validate_upload, without_metadata
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE

from .emulator import CB_MESSAGE, FLAG_EPHEMERAL, DiscordEmulator, Interaction
from .harness import Rig, delivered, png_dimensions, read_ledger, settled

CAP_KIB = 64  # the bot's IMAGINE_MAX_UPLOAD_MB in these tests: 1/16 MB


def edit_engine(rig: Rig, edit_dir: Any) -> Any:
    return rig.engine(
        edit_model=str(edit_dir),
        edit_lightning_lora=str(edit_dir / TINY_LORA_DIR),
        edit_lightning_weight_name=TINY_LORA_FILE,
    )


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def parameters(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return json.loads(image.text["parameters_json"])  # type: ignore[attr-defined]


def header_only_png(width: int, height: int) -> bytes:
    """A few dozen bytes whose PNG header claims ``width``×``height`` (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def private_answer(emu: DiscordEmulator, interaction: Interaction) -> str:
    (reply,) = emu.messages_for(interaction)
    assert reply.flags & FLAG_EPHEMERAL, reply.content
    assert reply not in emu.visible_messages()
    return reply.content


async def test_edit_one_and_three_images_and_the_edit_button(rig: Rig, tiny_edit_dir: Any) -> None:
    emu = rig.emulator
    alice = emu.add_user("alice")
    first = encode(Image.new("RGB", (96, 64), (220, 30, 30)))
    extra = [encode(Image.new("RGB", (64, 64), (0, 0, 200))), encode(Image.new("L", (80, 64), 90))]
    async with rig.bot(backend=edit_engine(rig, tiny_edit_dir)):
        one = await emu.slash(
            alice, "edit", image=("street.png", first), instruction="make it a rainy night"
        )
        await emu.wait_acked(one)
        one_message = await delivered(emu, one, within=60)

        three = await emu.slash(
            alice,
            "edit",
            image=("street.png", first),
            image2=("sky.png", extra[0]),
            image3=("grey.png", extra[1]),
            instruction="use the sky of the second image",
            seed=42,
        )
        await emu.wait_acked(three)
        three_message = await delivered(emu, three, within=60)

        form = await emu.wait_acked(await emu.click(alice, one_message, label="Edit"))
        assert form.modal is not None and form.modal["title"] == "Edit this image"
        button = await emu.wait_acked(
            await emu.submit_modal(form, {"instruction": "add a yellow taxi"})
        )
        button_message = await delivered(emu, button, within=60)
        ledger = await settled(rig.database_url, one, three, button, within=60)

    # Each answered in time with the public status message, then the edited image.
    for interaction in (one, three, button):
        assert interaction.callback_type == CB_MESSAGE
        assert interaction.ack_latency is not None and interaction.ack_latency < 3.0
    # The bot fetched each upload from the CDN once.
    assert len(emu.cdn_downloads) == 4 and len(set(emu.cdn_downloads)) == 4

    (one_png,) = one_message.attachments
    params = parameters(one_png.data)
    assert params["instruction"] == "make it a rainy night"
    assert params["input_images"] == validate_upload(first, "image/png", "street.png").sha256
    assert png_dimensions(one_png.data) == (64, 48)  # the upload's 3:2 shape at max side 64
    labels = [b["label"] for b in one_message.buttons()]
    assert "Edit" in labels and "Reroll" in labels

    (three_png,) = three_message.attachments
    three_params = parameters(three_png.data)
    assert len(three_params["input_images"].split(",")) == 3 and three_params["seed"] == 42

    (button_png,) = button_message.attachments
    button_params = parameters(button_png.data)
    assert button_params["instruction"] == "add a yellow taxi"
    # The Edit button edits a copy of the stored image without its text chunks.
    assert (
        button_params["input_images"] == hashlib.sha256(without_metadata(one_png.data)).hexdigest()
    )

    for interaction in (one, three, button):
        row = ledger.row(interaction)
        assert (row.kind, row.status, row.charged) == ("edit", "done", True)
    assert ledger.row(button).parent_key == str(one.id)
    assert ledger.charged_to(alice.id) == 3
    assert emu.unknown_routes == []


async def test_bad_uploads_are_refused_privately_and_charge_nothing(
    rig: Rig, tiny_edit_dir: Any
) -> None:
    emu = rig.emulator
    bob = emu.add_user("bob")
    whole = encode(Image.effect_noise((128, 128), 64).convert("RGB"))
    big = encode(Image.effect_noise((256, 256), 64).convert("RGB"))
    assert len(whole) < CAP_KIB * 1024 < len(big)
    cases = [
        (
            emu.upload("beach.png", whole[: len(whole) // 2]),
            "beach.png could not be read: the file is damaged or incomplete.",
        ),
        (
            emu.upload("notes.png", b"not a picture, just words\n" * 3),
            "notes.png is not a PNG, JPEG, WebP or GIF image.",
        ),
        (
            emu.upload("dot.png", encode(Image.new("RGB", (1, 1)))),
            "dot.png is too small (1×1); send at least 64×64 pixels.",
        ),
        (
            emu.upload("huge.png", big),
            f"huge.png is larger than {CAP_KIB} kB, the limit for /edit.",
        ),
        # Its metadata says 1 kB; the CDN serves far more: the download stops at the cap.
        (
            emu.upload("liar.png", big, declared_size=1024),
            f"liar.png is larger than {CAP_KIB} kB, the limit for /edit.",
        ),
        (
            emu.upload("bomb.png", header_only_png(100_000, 100_000)),
            "bomb.png is too large; the limit is 16.8 megapixels.",
        ),
    ]
    settings = rig.settings(max_upload_mb=CAP_KIB / 1024)
    async with rig.bot(settings=settings, backend=edit_engine(rig, tiny_edit_dir)):
        for upload, answer in cases:
            refused = await emu.wait_acked(
                await emu.slash(bob, "edit", image=upload, instruction="sharpen it")
            )
            assert private_answer(emu, refused) == answer
        # The declared size alone stops the download of an honest large file.
        huge_id = cases[3][0].id
        assert huge_id not in emu.cdn_downloads
        assert cases[4][0].id in emu.cdn_downloads
        nothing = await read_ledger(rig.database_url)
        assert nothing.rows == {} and nothing.charged_to(bob.id) == 0

        # The bot goes on working.
        imagine = await emu.slash(bob, "imagine", prompt="a quiet harbour")
        await emu.wait_acked(imagine)
        await delivered(emu, imagine)
        ledger = await settled(rig.database_url, imagine)
    assert list(ledger.rows) == [str(imagine.id)] and ledger.charged_to(bob.id) == 1
    assert emu.unknown_routes == []
