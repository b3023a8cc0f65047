"""Restarts: the bot stops with jobs queued and one running, and a new bot takes over.

Every job must end delivered, or refunded with its requester told so; none may be lost (left
"generating" forever), none charged twice, none delivered twice; and the buttons of messages
sent before the restart must keep working.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from .emulator import DiscordEmulator, Interaction
from .harness import (
    Ledger,
    Rig,
    bot_process,
    delivered,
    image_deliveries,
    read_ledger,
    settled,
)

EDIT_ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original$"


def _running(emu: DiscordEmulator, interaction: Interaction) -> bool:
    messages = emu.messages_for(interaction)
    return bool(messages) and any("Step **" in v.content for v in messages[0].history)


async def _marked_running(database_url: str, interaction: Interaction) -> None:
    """Until the job's row says "running". The first step's progress edit and the row's
    update are independent writes: seeing the edit does not mean the row was written yet."""
    async with asyncio.timeout(10):
        while (await read_ledger(database_url)).row(interaction).status != "running":  # noqa: ASYNC110 - another process's row
            await asyncio.sleep(0.05)


def assert_every_job_accounted_for(
    emu: DiscordEmulator, ledger: Ledger, interactions: list[Interaction]
) -> dict[str, list[Interaction]]:
    """Delivered once, or refunded and told; never lost, never charged twice."""
    outcomes: dict[str, list[Interaction]] = {"delivered": [], "refunded": []}
    for interaction in interactions:
        row = ledger.row(interaction)
        status = emu.response_message(interaction)
        assert status is not None, f"job {row.job_key} never got a message"
        images = image_deliveries(emu, interaction)
        if row.status == "done":
            assert len(images) == 1, f"job {row.job_key} delivered {len(images)} times"
            outcomes["delivered"].append(interaction)
        else:
            assert row.status in ("failed", "cancelled"), row.status
            assert images == []
            assert not row.charged, f"job {row.job_key} failed but kept its quota unit"
            assert "did not count" in status.content, status.content
            outcomes["refunded"].append(interaction)
        # Nothing still says "generating" with a Cancel button.
        assert all(b["label"] != "Cancel" for b in status.buttons()), status.content
        # Once an image is shown, the message never goes back to a status text.
        shown = [bool(v.attachment_ids) for v in status.history]
        if True in shown:
            assert all(shown[shown.index(True) :]), [v.content for v in status.history]
    for user_id in {i.user.id for i in interactions}:
        done = sum(1 for r in ledger.rows.values() if r.user_id == user_id and r.status == "done")
        assert ledger.charged_to(user_id) == done, f"user {user_id} charged wrongly"
    return outcomes


@pytest.mark.parametrize("tokens", ["alive", "dead"])
async def test_restart_with_jobs_queued_and_running(rig: Rig, tokens: str) -> None:
    emu = rig.emulator
    members = [emu.add_user(f"member{n}") for n in range(3)]
    earlier = emu.add_user("earlier")
    async with rig.bot(backend=rig.engine(step_delay_s=0.25)):
        before = await emu.slash(earlier, "imagine", prompt="made before the restart")
        old_image = await delivered(emu, before)
        await settled(rig.database_url, before)
        jobs = []
        for n, member in enumerate(members):
            # Each answered (reserved, then queued) before the next is sent: the queue's order.
            jobs.append(await emu.wait_acked(await emu.slash(member, "imagine", prompt=f"job {n}")))
        await emu.wait_until(lambda: _running(emu, jobs[0]), what="the first job to run")
        await _marked_running(rig.database_url, jobs[0])
    # The first bot is gone (SIGTERM-like close, engine closed): one job running, two queued.
    stopped = await read_ledger(rig.database_url)
    assert [stopped.row(j).status for j in jobs] == ["running", "queued", "queued"]

    if tokens == "dead":  # the bot was down for more than 15 minutes
        for job in jobs:
            emu.expire_interaction(job)
    async with rig.bot(backend=rig.engine()):
        for job in jobs:
            await delivered(emu, job)
        # A button on a message from before the restart.
        reroll = await emu.wait_acked(await emu.click(earlier, old_image, label="Reroll"))
        await delivered(emu, reroll)
        ledger = await settled(rig.database_url, *jobs, reroll)

    outcomes = assert_every_job_accounted_for(emu, ledger, [before, *jobs, reroll])
    assert len(outcomes["delivered"]) == 5
    assert reroll.answered
    for job in jobs:
        (image,) = image_deliveries(emu, job)
        status = emu.response_message(job)
        assert status is not None
        # In place of the status message, or (the bot's choice after a restart, and the only
        # way once the token is dead) as a reply that names the requester.
        if image.id != status.id:
            assert image.message_reference is not None
            assert image.message_reference["message_id"] == str(status.id)
            assert image.mentions == [job.user.id]
        if tokens == "dead":
            assert image.id != status.id


async def test_restart_refunds_and_tells_what_it_cannot_resume(rig: Rig) -> None:
    """After a restart the engine refuses one of the resumed jobs (here: its per-member cap
    was lowered to 1 while the bot was down): that job is refunded and its message says so,
    the others are delivered."""
    emu = rig.emulator
    runner, twice = emu.add_user("runner"), emu.add_user("twice")
    async with rig.bot(backend=rig.engine(step_delay_s=0.25)):
        running = await emu.wait_acked(await emu.slash(runner, "imagine", prompt="running"))
        first = await emu.wait_acked(await emu.slash(twice, "imagine", prompt="first of two"))
        second = await emu.wait_acked(await emu.slash(twice, "imagine", prompt="second of two"))
        await emu.wait_until(lambda: _running(emu, running), what="the first job to run")
        await _marked_running(rig.database_url, running)
    jobs = [running, first, second]
    stopped = await read_ledger(rig.database_url)
    assert [stopped.row(j).status for j in jobs] == ["running", "queued", "queued"]

    async with rig.bot(backend=rig.engine(step_delay_s=0.1, queued_ceiling_per_user=1)):
        ledger = await settled(rig.database_url, *jobs)
        for job in (running, first):
            await delivered(emu, job)

    outcomes = assert_every_job_accounted_for(emu, ledger, jobs)
    assert outcomes == {"delivered": [running, first], "refunded": [second]}
    status = emu.response_message(second)
    assert status is not None and "restart" in status.content
    assert ledger.charged_to(twice.id) == 1


async def test_stop_while_the_image_is_in_flight(rig: Rig) -> None:
    """The bot is stopped after Discord applied the final edit but before its answer arrived:
    the next bot must not render and deliver the same job again, nor charge it twice."""
    emu = rig.emulator
    member = emu.add_user()
    emu.hold_next("PATCH", EDIT_ORIGINAL, 3.0, multipart=True)
    async with rig.bot(backend=rig.engine(step_delay_s=0.05)):
        job = await emu.slash(member, "imagine", prompt="a slow network")
        await delivered(emu, job)  # applied by Discord; the answer is still on its way
    async with rig.bot(backend=rig.engine()):
        ledger = await settled(rig.database_url, job)
    outcomes = assert_every_job_accounted_for(emu, ledger, [job])
    assert outcomes["delivered"] == [job]
    finals = [r for r in emu.requests_matching("PATCH", EDIT_ORIGINAL) if r.files]
    assert len(finals) == 1, "the image was uploaded again after the restart"


async def test_crash_kill_9_with_jobs_queued_and_running(rig: Rig, tmp_path: Path) -> None:
    """``python -m bot`` (a real process) is killed with SIGKILL mid-job: no shutdown code
    runs at all. A new bot on the same database must still account for every job, and answer
    the buttons the dead process posted."""
    emu = rig.emulator
    members = [emu.add_user(f"member{n}") for n in range(3)]
    earlier = emu.add_user("earlier")
    async with bot_process(rig, tmp_path, step_delay_s=0.25) as process:
        before = await emu.slash(earlier, "imagine", prompt="made before the crash")
        old_image = await delivered(emu, before, within=60.0)
        await settled(rig.database_url, before)
        jobs = []
        for n, member in enumerate(members):
            # Each answered (reserved, then queued) before the next is sent: the queue's order.
            jobs.append(await emu.wait_acked(await emu.slash(member, "imagine", prompt=f"job {n}")))
        await emu.wait_until(lambda: _running(emu, jobs[0]), what="the first job to run")
        await _marked_running(rig.database_url, jobs[0])
        process.kill()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    # The token was in the process's environment; it must not be in anything it logged.
    output = (tmp_path / "bot-process.log").read_text(errors="replace")
    assert emu.token not in output and "TEST ONLY" in output
    stopped = await read_ledger(rig.database_url)
    assert [stopped.row(j).status for j in jobs] == ["running", "queued", "queued"]

    async with rig.bot(backend=rig.engine()):
        for job in jobs:
            await delivered(emu, job)
        reroll = await emu.wait_acked(await emu.click(earlier, old_image, label="Reroll"))
        await delivered(emu, reroll)
        ledger = await settled(rig.database_url, *jobs, reroll)

    outcomes = assert_every_job_accounted_for(emu, ledger, [before, *jobs, reroll])
    assert len(outcomes["delivered"]) == 5


async def test_crash_while_the_image_is_in_flight(rig: Rig, tmp_path: Path) -> None:
    """SIGKILL after Discord applied the final edit, before the bot heard back (so before it
    recorded the job as done): the next bot must not post the image a second time."""
    emu = rig.emulator
    member = emu.add_user()
    emu.hold_next("PATCH", EDIT_ORIGINAL, 3.0, multipart=True)
    async with bot_process(rig, tmp_path, step_delay_s=0.05) as process:
        job = await emu.slash(member, "imagine", prompt="a crash at the worst moment")
        await delivered(emu, job, within=60.0)  # applied; the answer is still on its way
        process.kill()
        await process.wait()
    async with rig.bot(backend=rig.engine()):
        ledger = await settled(rig.database_url, job)
        await asyncio.sleep(1.0)  # room for a second delivery, were one coming
    outcomes = assert_every_job_accounted_for(emu, ledger, [job])
    assert outcomes["delivered"] == [job]
