"""Images from images on the wire: ``python -m bot`` (a real process, the tiny model) against the
Discord emulator. A member clicks Vary (Subtle), Vary (Strong) and Remix under an image; each
delivers a new image whose PNG names its parent and strength and that ran about strength ×
steps denoising steps; live previews ride on the progress edits before each image."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from engine.img2img import img2img_steps
from engine.presets import VARY_STRONG_STRENGTH, VARY_SUBTLE_STRENGTH

from .emulator import DiscordEmulator, Message
from .harness import Rig, bot_process, delivered, settled

STANDARD_STEPS = 30


def parameters(message: Message) -> dict[str, Any]:
    """The generation parameters in the delivered PNG's JSON text chunk."""
    (attachment,) = message.attachments
    with Image.open(io.BytesIO(attachment.data)) as image:
        image.load()
        assert image.format == "PNG"
        return json.loads(image.text["parameters_json"])  # type: ignore[attr-defined]


def preview_versions(message: Message) -> list[Any]:
    """The progress edits of a status message that carried a preview, before its image."""
    found = []
    for version in message.history:
        if version.embeds:  # the final image
            break
        if "Step **" in version.content and version.attachment_ids:
            found.append(version)
    return found


def progress_totals(message: Message) -> set[int]:
    totals = set()
    for version in message.history:
        if "Step **" in version.content:
            totals.add(int(version.content.split("Step **")[1].split("**")[0].split(" of ")[1]))
    return totals


async def test_vary_subtle_strong_and_remix_with_python_m_bot(rig: Rig, tmp_path: Path) -> None:
    emu: DiscordEmulator = rig.emulator
    alice = emu.add_user("alice")
    env = {
        "IMAGINE_PREVIEWS": "true",
        "IMAGINE_PREVIEW_INTERVAL_S": "0",
        "IMAGINE_PROGRESS_INTERVAL_S": "0.5",
    }
    async with bot_process(rig, tmp_path, step_delay_s=0.12, extra_env=env):
        first = await emu.slash(
            alice, "imagine", prompt="a glass harbour", negative="boats", mode="standard", seed=12
        )
        original = await delivered(emu, first, within=120.0)
        await settled(rig.database_url, first, within=60.0)
        labels = [b["label"] for b in original.buttons()]
        assert labels[:4] == ["Reroll", "Vary (Subtle)", "Vary (Strong)", "Remix"]
        assert "Variations" not in labels and labels[-2:] == ["Details", "Delete"]

        subtle = await emu.wait_acked(await emu.click(alice, original, label="Vary (Subtle)"))
        subtle_image = await delivered(emu, subtle, within=120.0)
        strong = await emu.wait_acked(await emu.click(alice, original, label="Vary (Strong)"))
        strong_image = await delivered(emu, strong, within=120.0)
        form = await emu.wait_acked(await emu.click(alice, original, label="Remix"))
        assert form.modal is not None and form.modal["title"] == "Remix this image"
        remix = await emu.wait_acked(
            await emu.submit_modal(form, {"prompt": "a glass harbour at dawn", "negative": ""})
        )
        remix_image = await delivered(emu, remix, within=120.0)
        ledger = await settled(rig.database_url, first, subtle, strong, remix, within=60.0)

    parent = ledger.row(first)
    cases = [
        (subtle, subtle_image, VARY_SUBTLE_STRENGTH, "vary"),
        (strong, strong_image, VARY_STRONG_STRENGTH, "vary"),
        (remix, remix_image, VARY_STRONG_STRENGTH, "remix"),
    ]
    for interaction, image, strength, kind in cases:
        params = parameters(image)
        steps = img2img_steps(STANDARD_STEPS, strength)
        assert abs(steps - strength * STANDARD_STEPS) <= 1  # about s × steps
        assert params["parent_job_id"] == parent.job_key and params["strength"] == strength
        assert params["steps"] == steps and params["schedule_steps"] == STANDARD_STEPS
        assert params["true_cfg_scale"] == 4.0 and params["mode"] == "standard"
        row = ledger.row(interaction)
        assert (row.kind, row.parent_key, row.strength, row.steps, row.status) == (
            kind,
            parent.job_key,
            strength,
            steps,
            "done",
        )
        # The status message counted the steps that really ran, and showed previews first.
        status = emu.response_message(interaction)
        assert status is not None and status.id == image.id
        assert progress_totals(status) == {steps}
        assert preview_versions(status), [v.content for v in status.history]
        (final,) = status.attachments
        assert final.filename.endswith(".png")  # the final edit replaced the preview
    assert parameters(subtle_image)["prompt"] == "a glass harbour"
    assert ledger.row(subtle).negative_prompt == "boats"
    assert parameters(remix_image)["prompt"] == "a glass harbour at dawn"
    assert ledger.row(remix).negative_prompt is None
    assert ledger.charged_to(alice.id) == 4
    # The first image's own progress edits carried previews too (text-to-image).
    assert preview_versions(original)
    assert emu.unknown_routes == []


EDIT_ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original$"


async def test_a_preview_upload_in_flight_never_holds_up_the_image(rig: Rig) -> None:
    """Discord is slow to answer the first preview upload (applied, the answer 15 s late):
    the finished image does not wait for it, and replaces it."""
    emu = rig.emulator
    bob = emu.add_user("bob")
    emu.hold_next("PATCH", EDIT_ORIGINAL, 15.0, multipart=True)
    engine = rig.engine(step_delay_s=0.1, previews=True, preview_interval_s=0.0)
    async with rig.bot(settings=rig.settings(progress_interval_s=0.5), backend=engine):
        job = await emu.slash(bob, "imagine", prompt="a slow uplink", mode="standard")
        await emu.wait_until(
            lambda: any(r.files for r in emu.requests_matching("PATCH", EDIT_ORIGINAL)),
            within=30.0,
            what="a preview upload",
        )
        image = await delivered(emu, job, within=10.0)  # sooner than the held answer
        ledger = await settled(rig.database_url, job)
    uploads = [r for r in emu.requests_matching("PATCH", EDIT_ORIGINAL) if r.files]
    assert next(name for _, name, _ in uploads[0].files).startswith("preview.")
    assert any(name.endswith(".png") for _, name, _ in uploads[-1].files)
    (attachment,) = image.attachments
    assert attachment.filename.endswith(".png") and image.buttons()[0]["label"] != "Cancel"
    assert ledger.row(job).status == "done"
