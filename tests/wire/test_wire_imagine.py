"""/imagine on the wire: the project bot, unmodified, against what Discord does to bots.

Each test runs ``bot.create_bot(settings, backend=LocalEngine(tiny model))`` connected to the
emulator through the test-only endpoint settings, and checks what the member would see
(messages, edits, the PNG's bytes, buttons) and what the database says.
"""

from __future__ import annotations

import re

import pytest

from engine.presets import image_size

from .emulator import CB_MESSAGE, FLAG_EPHEMERAL, Message
from .harness import Rig, delivered, image_deliveries, png_dimensions, settled

EDIT_ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original$"


def assert_result_buttons(message: Message) -> None:
    """Under a finished image: make more (Reroll, the Vary buttons, Remix) first, then Details
    and Delete last."""
    labels = [b["label"] for b in message.buttons()]
    assert labels[:4] == ["Reroll", "Vary (Subtle)", "Vary (Strong)", "Remix"], labels
    assert labels[-2:] == ["Details", "Delete"], labels


async def test_imagine_round_trip_with_progress_image_and_buttons(rig: Rig) -> None:
    emu = rig.emulator
    alice = emu.add_user("alice")
    async with rig.bot(backend=rig.engine(step_delay_s=0.06)):
        interaction = await emu.slash(
            alice, "imagine", prompt="a red fox in the snow", aspect="3:4", mode="standard"
        )
        await emu.wait_acked(interaction)
        message = await delivered(emu, interaction)

        # Buttons under the image: Details answers privately, Reroll makes a new image.
        details = await emu.wait_acked(await emu.click(alice, message, label="Details"))
        reroll = await emu.wait_acked(await emu.click(alice, message, label="Reroll"))
        rerolled = await delivered(emu, reroll)
        ledger = await settled(rig.database_url, interaction, reroll)

    # Acknowledged in time with the "generating" message: who asked, what, where in line.
    assert interaction.answered and interaction.callback_type == CB_MESSAGE
    assert interaction.ack_latency is not None and interaction.ack_latency < 3.0
    first = message.history[0].content
    assert "a red fox in the snow" in first and f"<@{alice.id}>" in first
    assert "line" in first or "Starting" in first
    # Live progress in the same message, then the image replaces it: one message in all.
    progress = [v.content for v in message.history if "Step **" in v.content]
    assert progress, [v.content for v in message.history]
    assert message.id == interaction.response_message_id
    assert image_deliveries(emu, interaction) == [message]
    # Words before the bar, for screen readers: "Step 3 of 30 · 10% · ...".
    assert re.search(r"Step \*\*\d+ of 30\*\* · \d+%", progress[0]), progress[0]
    (attachment,) = message.attachments
    assert attachment.filename.endswith(".png")
    assert png_dimensions(attachment.data) == image_size("3:4", 64) == (48, 64)
    # Alt text on every image: the kind of image and the prompt.
    assert attachment.description == "Generated image: a red fox in the snow"
    assert rerolled.attachments[0].description == "Generated image (reroll): a red fox in the snow"
    (embed,) = message.embeds
    assert embed["image"]["url"] == f"attachment://{attachment.filename}"
    assert "a red fox in the snow" in embed["description"]
    assert_result_buttons(message)
    assert message.mentions == [] and not message.mention_everyone  # nobody pinged
    # Details: an ephemeral embed only alice sees.
    (detail_reply,) = emu.messages_for(details)
    assert detail_reply.flags & FLAG_EPHEMERAL
    assert detail_reply.embeds[0]["title"] == "Generation details"
    assert detail_reply not in emu.visible_messages()
    # Reroll: a second image of the same prompt, in a new message.
    assert rerolled.id != message.id
    assert png_dimensions(rerolled.attachments[0].data) == (48, 64)
    assert emu.unknown_routes == []

    row = ledger.row(interaction)
    assert (row.status, row.width, row.height, row.message_id) == ("done", 48, 64, message.id)
    assert ledger.row(reroll).status == "done" and ledger.row(reroll).kind == "reroll"
    assert ledger.charged_to(alice.id) == 2


@pytest.mark.parametrize(
    ("status", "which"),
    [(429, "progress"), (429, "final"), (500, "progress"), (500, "final")],
)
async def test_rate_limit_or_server_error_on_an_edit_is_retried(
    rig: Rig, status: int, which: str
) -> None:
    emu = rig.emulator
    user = emu.add_user()
    # A progress edit is JSON; the final edit is the multipart upload of the image.
    emu.fail_next("PATCH", EDIT_ORIGINAL, status=status, multipart=which == "final")
    async with rig.bot(backend=rig.engine(step_delay_s=0.15)):
        interaction = await emu.slash(user, "imagine", prompt="a lighthouse at dusk")
        message = await delivered(emu, interaction)
        ledger = await settled(rig.database_url, interaction)

    edits = emu.requests_matching("PATCH", EDIT_ORIGINAL)
    failed = [r for r in edits if r.status == status]
    assert len(failed) == 1
    retry = edits[edits.index(failed[0]) + 1]
    assert retry.status == 200 and retry.json == failed[0].json
    # The image arrived, once, in the original message.
    assert image_deliveries(emu, interaction) == [message]
    assert len([r for r in edits if r.files and r.status == 200]) == 1
    assert png_dimensions(message.attachments[0].data) == (64, 64)
    assert ledger.row(interaction).status == "done"
    assert ledger.charged_to(user.id) == 1


@pytest.mark.parametrize("code", [50027, 10062, 10015])
async def test_image_outlives_a_dead_interaction_token(rig: Rig, code: int) -> None:
    """The token dies while the image renders (Discord's 15 minutes, compressed): the image
    still reaches the requester, as a channel message that replies to the status message and
    names them, and the status message says where it went."""
    emu = rig.emulator
    bob = emu.add_user("bob")
    async with rig.bot(backend=rig.engine(step_delay_s=0.15)):
        interaction = await emu.slash(bob, "imagine", prompt="a castle on a hill")
        await emu.wait_acked(interaction)
        emu.expire_interaction(interaction, code=code)
        reply = await delivered(emu, interaction)
        ledger = await settled(rig.database_url, interaction)

    status = emu.response_message(interaction)
    assert status is not None and not status.attachments
    # The image: a new channel message (bot token, not the webhook) replying to the status.
    assert image_deliveries(emu, interaction) == [reply]
    assert reply.interaction_id is None and reply.webhook_id is None
    assert reply.message_reference is not None
    assert reply.message_reference["message_id"] == str(status.id)
    assert f"<@{bob.id}>" in reply.content and reply.mentions == [bob.id]
    assert png_dimensions(reply.attachments[0].data) == (64, 64)
    assert_result_buttons(reply)
    # The old status message no longer says "generating" and has no Cancel button.
    assert "Step **" not in status.content and status.buttons() == []
    dead = [r for r in emu.requests if "/webhooks/" in r.path and r.status in (401, 404)]
    assert dead, "the bot never tried the dead token"
    assert ledger.row(interaction).status == "done"
    assert ledger.row(interaction).message_id == reply.id
    assert ledger.charged_to(bob.id) == 1


@pytest.mark.parametrize("how", ["op7", "tcp-cut", "close-4000"])
async def test_gateway_drop_in_the_middle_of_a_job(rig: Rig, how: str) -> None:
    """Discord asks for a reconnect (op 7) or the socket dies while a job renders, and a second
    member runs /imagine while the bot is reconnecting: both images arrive, once each."""
    emu = rig.emulator
    first_user, second_user = emu.add_user(), emu.add_user()
    async with rig.bot(backend=rig.engine(step_delay_s=0.15)):
        first = await emu.slash(first_user, "imagine", prompt="a red fox")
        await emu.wait_acked(first)
        await emu.wait_until(
            lambda: any("Step **" in v.content for v in emu.messages_for(first)[0].history),
            what="the first job to be running",
        )
        if how == "op7":
            await emu.request_reconnect()
        else:
            await emu.drop_gateway(code=4000 if how == "close-4000" else None)
        second = await emu.slash(second_user, "imagine", prompt="a blue bird")
        first_image = await delivered(emu, first)
        second_image = await delivered(emu, second)
        ledger = await settled(rig.database_url, first, second)

    assert emu.resumes >= 1 and emu.identifies == 1
    assert second.answered and second.ack_latency is not None and second.ack_latency < 3.0
    assert image_deliveries(emu, first) == [first_image]
    assert image_deliveries(emu, second) == [second_image]
    assert [ledger.row(first).status, ledger.row(second).status] == ["done", "done"]


@pytest.mark.parametrize("how", ["deadline", "cancel-button"])
async def test_a_failed_job_is_refunded_and_its_requester_told(rig: Rig, how: str) -> None:
    """A job that times out on the GPU, or that its requester cancels while it waits: the
    status message says so in plain words, the quota unit comes back, no image is posted."""
    emu = rig.emulator
    carol, dave = emu.add_user("carol"), emu.add_user("dave")
    settings = rig.settings(job_deadline_s=0.6 if how == "deadline" else 600.0)
    async with rig.bot(settings=settings, backend=rig.engine(step_delay_s=0.3)):
        first = await emu.wait_acked(await emu.slash(carol, "imagine", prompt="slow one"))
        second = await emu.wait_acked(await emu.slash(dave, "imagine", prompt="waiting one"))
        if how == "cancel-button":
            status = emu.response_message(second)
            assert status is not None
            await emu.wait_acked(await emu.click(dave, status, label="Cancel"))
            failed, survivor = second, first
        else:
            failed, survivor = first, second
        ledger = await settled(rig.database_url, first, second)
        if how == "cancel-button":
            await delivered(emu, survivor)
            ledger = await settled(rig.database_url, first, second)

    row = ledger.row(failed)
    assert row.status == ("failed" if how == "deadline" else "cancelled")
    assert not row.charged and ledger.charged_to(failed.user.id) == 0
    status = emu.response_message(failed)
    assert status is not None and image_deliveries(emu, failed) == []
    assert "did not count against" in status.content
    assert ("took too long" if how == "deadline" else "Cancelled") in status.content
    assert status.buttons() == []  # no Cancel left on a finished job
    assert status.mentions == []
    if how == "cancel-button":
        assert ledger.row(survivor).status == "done" and ledger.charged_to(survivor.user.id) == 1
