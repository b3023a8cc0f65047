"""Without an edit model (the session's engine: its default hub id is a 20B model it will not
load on a CPU) /edit and the Edit button say why editing is unavailable, privately, and charge
nothing; nothing is downloaded. Never "turned off on this server" when no admin of the server
turned anything off (issue 20 item 11), and no Edit button under images meanwhile."""

from __future__ import annotations

import dataclasses
import io

from PIL import Image

from bot import render
from engine.admission import EDIT_FAILED_MESSAGE, EDIT_NEEDS_GPU_MESSAGE, EDIT_OFF_MESSAGE
from engine.contract import EngineStatus
from tests.bot.harness import Harness, post_old_buttons

WHY = f"{EDIT_NEEDS_GPU_MESSAGE} Nothing was charged."


async def test_edit_says_editing_is_off_and_charges_nothing(harness: Harness) -> None:
    alice = harness.member("alice")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    result = await alice.slash(
        harness.channel, "edit", image=("cat.png", buffer.getvalue()), instruction="add a hat"
    )
    assert result.ephemeral
    assert result.response.content == WHY
    assert "this server" not in WHY
    assert await harness.rows() == [] and (await harness.quota(alice)).used == 0

    made = await alice.slash(harness.channel, "imagine", prompt="a cat", seed=1)
    await harness.wait_jobs()
    source = harness.message(made.response.id)
    labels = [child.label for row in source.components for child in row.children]  # type: ignore[union-attr]
    assert "Edit" not in labels and "Reroll" in labels  # no button that could only refuse
    # The Edit button of an image delivered while editing worked answers why it can't now.
    key = harness.key(made)
    old = await post_old_buttons(harness, f"imagine:edit:{key}", for_job=key)
    click = await alice.click(old, custom_id=f"imagine:edit:{key}")
    assert click.ephemeral and click.modal is None
    assert click.response.content == WHY
    assert len(await harness.rows()) == 1 and (await harness.quota(alice)).used == 1


async def test_status_says_editing_is_off(harness: Harness) -> None:
    result = await harness.member("alice").slash(harness.channel, "status")
    (embed,) = result.response.embeds
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Editing (/edit)"] == EDIT_NEEDS_GPU_MESSAGE


def editing_line(status: EngineStatus) -> str:
    embed = render.status_embed(status, uptime_s=1.0, latency_ms=None)
    return next(field.value for field in embed.fields if field.name == "Editing (/edit)") or ""


def test_status_names_why_editing_is_off_and_says_loading_while_it_loads() -> None:
    """issue 20 item 11: /status said "On." while the edit model was still loading, and "off"
    without saying whose choice it was."""
    base = EngineStatus(
        backend="local", ready=True, model="m", memory_mode="resident", gpu="g", queue_length=0
    )
    loading = dataclasses.replace(
        base, ready=False, loading="loading the model", capabilities=("generate", "edit")
    )
    assert editing_line(loading).startswith("Loading")
    off = dataclasses.replace(base, edit_off=EDIT_OFF_MESSAGE)
    assert editing_line(off) == EDIT_OFF_MESSAGE and "operator" in EDIT_OFF_MESSAGE
    failed = dataclasses.replace(base, edit_off=EDIT_FAILED_MESSAGE)
    assert editing_line(failed) == EDIT_FAILED_MESSAGE
    on = dataclasses.replace(base, capabilities=("generate", "edit"), resident_models=("a", "b"))
    assert editing_line(on).startswith("On.")
    # The refusal members read says the same, and charges nothing.
    assert (
        render.task_unavailable_text("edit", failed)
        == f"{EDIT_FAILED_MESSAGE} Nothing was charged."
    )
