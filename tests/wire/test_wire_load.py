"""Load: 100 /imagine interactions from 25 members within one second.

Discord gives a bot 3 seconds to acknowledge each interaction, whatever else it is doing. With a
daily quota of 3 images, each member's fourth request must be refused (politely, privately) and
the other 75 delivered, once each, with the database agreeing to the row.
"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from .emulator import CB_MESSAGE, FLAG_EPHEMERAL, Interaction
from .harness import Rig, image_deliveries, png_dimensions, settled

MEMBERS = 25
PER_MEMBER = 4
DAILY_QUOTA = 3


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def test_hundred_interactions_in_one_second(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    emu = rig.emulator
    members = [emu.add_user(f"load{n}") for n in range(MEMBERS)]
    settings = rig.settings(default_daily_quota=DAILY_QUOTA, default_max_queued=0)
    async with rig.bot(settings=settings, backend=rig.engine()):
        interactions: list[Interaction] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        gap = 0.95 / (MEMBERS * PER_MEMBER - 1)
        for round_ in range(PER_MEMBER):
            for member in members:
                # On a fixed schedule: a busy bot must not slow the arrivals down.
                await asyncio.sleep(max(0.0, start + len(interactions) * gap - loop.time()))
                interactions.append(
                    await emu.slash(member, "imagine", prompt=f"load test {member.id} #{round_}")
                )
        spread = interactions[-1].dispatched_at - interactions[0].dispatched_at  # type: ignore[operator]
        for interaction in interactions:
            await emu.wait_acked(interaction, within=10.0)
        accepted = [i for i in interactions if i.callback_type == CB_MESSAGE]
        # Refusals are ephemeral; accepted jobs answer with the public "generating" message.
        accepted = [
            i
            for i in accepted
            if not (m := emu.response_message(i)) or not m.flags & FLAG_EPHEMERAL
        ]
        await emu.wait_until(
            lambda: all(image_deliveries(emu, i) for i in accepted),
            within=120.0,
            what="every accepted job's image",
        )
        ledger = await settled(rig.database_url, *accepted, within=60.0)

    latencies = [i.ack_latency for i in interactions if i.ack_latency is not None]
    p50, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    with capsys.disabled():
        print(
            f"\n[wire load] {len(interactions)} interactions from {MEMBERS} members over "
            f"{spread:.2f} s: acknowledgement p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )

    assert spread <= 1.0
    # Every interaction answered, and within Discord's 3 seconds.
    assert len(latencies) == len(interactions) == MEMBERS * PER_MEMBER
    assert all(i.answered for i in interactions)
    assert max(latencies) < 3.0
    # Exactly the quota's worth per member delivered; the rest refused, privately, with why.
    assert len(accepted) == MEMBERS * DAILY_QUOTA
    for member in members:
        mine = [i for i in interactions if i.user.id == member.id]
        refused = [i for i in mine if i not in accepted]
        assert len(refused) == PER_MEMBER - DAILY_QUOTA
        for interaction in refused:
            (reply,) = emu.messages_for(interaction)
            assert reply.flags & FLAG_EPHEMERAL and "quota" in reply.content
            assert str(interaction.id) not in ledger.rows  # nothing written, nothing charged
        assert ledger.charged_to(member.id) == DAILY_QUOTA
    # Every accepted job: one image, and a database row that matches what the member sees.
    assert len(ledger.rows) == len(accepted)
    for interaction in accepted:
        (image,) = image_deliveries(emu, interaction)
        row = ledger.row(interaction)
        assert (row.status, row.user_id, row.message_id) == ("done", interaction.user.id, image.id)
        assert row.prompt in image.embeds[0]["description"]
        assert png_dimensions(image.attachments[0].data) == (row.width, row.height) == (64, 64)
    assert emu.unknown_routes == []
