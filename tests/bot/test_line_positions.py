"""A waiting job's place in line is kept true: when the fair queue puts a newcomer's first job
ahead of a member's later one, that member's status message shows the new, larger place."""

from __future__ import annotations

import pytest

from tests.bot.harness import Harness

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_a_job_placed_ahead_moves_the_others_back(harness: Harness) -> None:
    harness.engine.inner.settings.test_step_delay_s = 0.3  # the first job holds the GPU ~9 s
    alice, bob = harness.member("alice"), harness.member("bob")
    first = await alice.slash(harness.channel, "imagine", prompt="first", mode="standard")

    async def running() -> bool:
        return (await harness.row(harness.key(first))).status == "running"

    await harness.wait_until(running, what="alice's first job to run")
    second = await alice.slash(harness.channel, "imagine", prompt="second", mode="standard")
    third = await alice.slash(harness.channel, "imagine", prompt="third", mode="standard")
    assert "position **2**" in harness.answers(second)[0]
    assert "position **3**" in harness.answers(third)[0]

    # Bob's first image goes ahead of Alice's third (one turn each), so hers is now fourth.
    newcomer = await bob.slash(harness.channel, "imagine", prompt="bob's first")
    assert "position **3**" in harness.answers(newcomer)[0]
    assert await harness.bot.backend.position(harness.key(third)) == 4
    await harness.wait_until(
        lambda: "position **4**" in harness.answers(third)[-1],
        limit_s=10,
        what="alice's third job to show its new place",
    )
    assert "position **2**" in harness.answers(second)[-1]  # nobody went ahead of this one
    assert (await harness.row(harness.key(first))).status == "running"
