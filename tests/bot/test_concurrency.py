"""Many members at once: every answer in time, every image to the right person, exactly once."""

from __future__ import annotations

import time

from tests.bot.harness import Harness, attachment_bytes, png_parameters

USERS = 20
JOBS_EACH = 2


async def test_twenty_users_two_jobs_each_get_exactly_their_own_images(harness: Harness) -> None:
    members = [harness.member(f"user{n:02d}") for n in range(USERS)]
    expected: dict[str, tuple[int, int, str]] = {}
    names = {member.id: member.name for member in members}
    results = []
    # All 40 interactions reach the bot before it has answered any of them.
    for j in range(JOBS_EACH):
        for n, member in enumerate(members):
            seed = 1000 + n * 10 + j
            prompt = f"portrait {n} take {j}"
            result = harness.slash_nowait(member, "imagine", prompt=prompt, seed=seed)
            results.append(result)
            expected[harness.key(result)] = (member.id, seed, prompt)
    assert not any(r.acknowledged for r in results)

    started = time.monotonic()
    await harness.wait_until(lambda: all(r.acknowledged for r in results), what="every answer")
    assert all(not r.ephemeral for r in results), [
        r.response.content for r in results if r.ephemeral
    ]
    await harness.wait_jobs(limit_s=240)
    elapsed = time.monotonic() - started

    rows = {r.job_key: r for r in await harness.rows()}
    assert set(rows) == set(expected)
    seen_messages = set()
    for result in results:
        key = harness.key(result)
        user_id, seed, prompt = expected[key]
        row = rows[key]
        assert (row.status, row.user_id, row.seed_used, row.prompt) == (
            "done",
            user_id,
            seed,
            prompt,
        )
        message = harness.message(result.response.id)
        assert message.id == row.message_id and message.id not in seen_messages
        seen_messages.add(message.id)
        params = png_parameters(await attachment_bytes(message))
        assert (params["seed"], params["prompt"]) == (seed, prompt)
        assert message.embeds[0].author.name == names[user_id]
        assert f"<@{user_id}>" not in message.content  # the image replaced the status text
    for member in members:
        assert (await harness.quota(member)).used == JOBS_EACH
    # Exactly one image message per job: nothing was posted twice.
    with_images = [m for m in harness.channel.history() if m.attachments]
    assert len(with_images) == USERS * JOBS_EACH
    print(f"{USERS * JOBS_EACH} jobs in {elapsed:.1f} s")
