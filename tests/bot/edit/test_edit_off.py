"""Without an edit model (the session's engine: its default hub id is a 20B model it will not
load on a CPU) /edit and the Edit button say that
editing is off, privately, and charge nothing; nothing is downloaded."""

from __future__ import annotations

import io

from PIL import Image

from bot.render import EDIT_OFF_TEXT
from tests.bot.harness import Harness


async def test_edit_says_editing_is_off_and_charges_nothing(harness: Harness) -> None:
    alice = harness.member("alice")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    result = await alice.slash(
        harness.channel, "edit", image=("cat.png", buffer.getvalue()), instruction="add a hat"
    )
    assert result.ephemeral
    assert result.response.content == EDIT_OFF_TEXT
    assert await harness.rows() == [] and (await harness.quota(alice)).used == 0

    made = await alice.slash(harness.channel, "imagine", prompt="a cat", seed=1)
    await harness.wait_jobs()
    source = harness.message(made.response.id)
    click = await alice.click(source, label="Edit")
    assert click.ephemeral and click.modal is None
    assert click.response.content == EDIT_OFF_TEXT
    assert len(await harness.rows()) == 1 and (await harness.quota(alice)).used == 1


async def test_status_says_editing_is_off(harness: Harness) -> None:
    result = await harness.member("alice").slash(harness.channel, "status")
    (embed,) = result.response.embeds
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Editing (/edit)"] == "Off (no edit model is loaded)."
