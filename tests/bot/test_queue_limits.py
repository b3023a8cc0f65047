"""How many images one member may have waiting: the server's /limits max_queued, and above it
(or where the server set none) the image engine's bot-wide ceiling, with one answer for each."""

from __future__ import annotations

from typing import Any

from tests.bot.harness import QUEUED_CEILING, Harness


async def queue_up(harness: Harness, member: Any, count: int, prompt: str) -> None:
    for n in range(count):
        result = await member.slash(harness.channel, "imagine", prompt=f"{prompt} {n}")
        assert not result.ephemeral, result.response.content


async def test_server_cap_and_the_engine_ceiling(harness: Harness) -> None:
    # Slow enough that nothing finishes while the line fills up: every job stays waiting.
    harness.engine.inner.settings.test_step_delay_s = 2.0
    assert QUEUED_CEILING == 25  # the documented default of IMAGINE_QUEUED_CEILING_PER_USER
    admin, alice, bob = harness.admin, harness.member("alice"), harness.member("bob")

    # A server cap below the ceiling is the rule: 10 may wait, the 11th is refused.
    await admin.slash(harness.channel, "limits set", daily_quota=0, max_queued=10)
    await queue_up(harness, alice, 10, "alice")
    refused = await alice.slash(harness.channel, "imagine", prompt="alice 11")
    assert refused.ephemeral
    assert refused.response.content == (
        "You already have 10 images waiting or being made (the limit is 10). "
        "Wait for one to finish, then try again."
    )

    # No cap of the server's own: members may queue up to the ceiling, and no further.
    await admin.slash(harness.channel, "limits set", max_queued=0)
    await queue_up(harness, bob, QUEUED_CEILING, "bob")
    refused = await bob.slash(harness.channel, "imagine", prompt="bob 26")
    assert refused.ephemeral
    assert refused.response.content == (
        "You already have 25 images waiting or being made (the most this bot takes from one "
        "member at once is 25). Wait for one to finish, then try again."
    )
    rows = await harness.rows()
    assert len(rows) == 35 and {r.status for r in rows} <= {"queued", "running"}
    assert (await harness.quota(bob, limit=None)).used == 0  # refusals charge nothing

    # /quota and /limits show say what binds.
    quota = await bob.slash(harness.channel, "quota")
    assert "Waiting or being made now: **25** (at most 25 at once: the bot-wide ceiling)." in (
        quota.response.content
    )
    shown = await admin.slash(harness.channel, "limits show")
    fields = {f.name: f.value for f in shown.response.embeds[0].fields}
    assert fields["Waiting or running at once"] == (
        "no limit\nAt most 25 per member: the bot-wide ceiling."
    )

    # A server cap above the ceiling: the ceiling still binds, and both answers say so.
    await admin.slash(harness.channel, "limits set", max_queued=40)
    shown = await admin.slash(harness.channel, "limits show")
    fields = {f.name: f.value for f in shown.response.embeds[0].fields}
    assert fields["Waiting or running at once"] == (
        "40 per member\nAt most 25 per member: the bot-wide ceiling."
    )
    again = await bob.slash(harness.channel, "imagine", prompt="bob 27")
    assert again.ephemeral and "the most this bot takes from one member at once is 25" in (
        again.response.content
    )
    alice_quota = await alice.slash(harness.channel, "quota")
    assert "**10** (at most 25 at once: the bot-wide ceiling)" in alice_quota.response.content
