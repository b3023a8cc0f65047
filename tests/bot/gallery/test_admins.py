"""``bot.gallery.admins``: how often an admin link's pages ask Discord, and what they do with the
answers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.gallery import admins
from bot.gallery.admins import CONFIRMED_FOR_S, UNKNOWN_FOR_S, AdminConfirmations, Standing

GUILD, ALICE, BOB = 900, 1, 2


class Discord:
    """Answers ``member_standing`` from ``answers`` and counts the questions."""

    def __init__(self) -> None:
        self.answers: dict[int, Standing | bool | Exception | None] = {}
        self.asked: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def check(self, guild_id: int, user_id: int) -> Standing | bool | None:
        self.asked.append(user_id)
        await self.gate.wait()
        answer = self.answers.get(user_id, True)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_one_page_and_its_thumbnails_ask_discord_once() -> None:
    discord, clock = Discord(), Clock()
    confirmations = AdminConfirmations(discord.check, clock=clock)
    discord.gate.clear()  # Discord is slow: fifty thumbnails arrive while it thinks
    asking = [asyncio.create_task(confirmations.confirm(GUILD, ALICE)) for _ in range(50)]
    await asyncio.sleep(0)
    discord.gate.set()
    assert await asyncio.gather(*asking) == [True] * 50
    assert discord.asked == [ALICE]
    clock.now += CONFIRMED_FOR_S - 1
    assert await confirmations.confirm(GUILD, ALICE) is True
    assert discord.asked == [ALICE]  # still within the answer's life


async def test_a_demotion_shows_once_the_answer_expires() -> None:
    discord, clock = Discord(), Clock()
    confirmations = AdminConfirmations(discord.check, clock=clock)
    assert await confirmations.confirm(GUILD, ALICE) is True
    discord.answers[ALICE] = False
    clock.now += CONFIRMED_FOR_S + 1
    assert await confirmations.confirm(GUILD, ALICE) is False
    assert await confirmations.confirm(GUILD, BOB) is True  # each member asked for themselves
    assert discord.asked == [ALICE, ALICE, BOB]


async def test_could_not_tell_is_asked_again_soon() -> None:
    discord, clock = Discord(), Clock()
    confirmations = AdminConfirmations(discord.check, clock=clock)
    discord.answers[ALICE] = None
    assert await confirmations.confirm(GUILD, ALICE) is None
    assert await confirmations.confirm(GUILD, ALICE) is None
    assert discord.asked == [ALICE]
    discord.answers[ALICE] = True
    clock.now += UNKNOWN_FOR_S + 1
    assert await confirmations.confirm(GUILD, ALICE) is True
    assert discord.asked == [ALICE, ALICE]


async def test_a_failing_check_counts_as_could_not_tell_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    discord = Discord()
    confirmations = AdminConfirmations(discord.check, clock=Clock())
    discord.answers[ALICE] = RuntimeError("a bug in the check")
    with caplog.at_level(logging.ERROR, logger="bot.gallery.admins"):
        assert await confirmations.confirm(GUILD, ALICE) is None
    assert "admin check" in caplog.text and "a bug in the check" in caplog.text


async def test_a_delete_asks_afresh_and_its_answer_serves_the_pages() -> None:
    discord, clock = Discord(), Clock()
    confirmations = AdminConfirmations(discord.check, clock=clock)
    assert await confirmations.confirm(GUILD, ALICE) is True
    discord.answers[ALICE] = False
    assert await confirmations.fresh(GUILD, ALICE) is False  # not the cached True
    assert await confirmations.confirm(GUILD, ALICE) is False  # nor on the next page
    assert discord.asked == [ALICE, ALICE]


async def test_a_cancelled_page_does_not_cancel_the_question_others_wait_for() -> None:
    discord = Discord()
    confirmations = AdminConfirmations(discord.check, clock=Clock())
    discord.gate.clear()
    first = asyncio.create_task(confirmations.confirm(GUILD, ALICE))
    second = asyncio.create_task(confirmations.confirm(GUILD, ALICE))
    await asyncio.sleep(0)
    first.cancel()  # the browser went away
    await asyncio.sleep(0)
    discord.gate.set()
    assert await second is True
    assert discord.asked == [ALICE]


async def test_the_answers_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admins, "MAX_ENTRIES", 2)
    discord = Discord()
    confirmations = AdminConfirmations(discord.check, clock=Clock())
    for user in (ALICE, BOB, 3):
        await confirmations.confirm(GUILD, user)
    await confirmations.confirm(GUILD, ALICE)  # the oldest went: asked again
    await confirmations.confirm(GUILD, 3)  # still kept
    assert discord.asked == [ALICE, BOB, 3, ALICE]


async def test_a_slow_old_question_never_overwrites_a_newer_answer() -> None:
    """A page asked just before the demotion; a delete asked after it and heard "no". The
    page's late "yes" must not stand for the next five minutes."""
    clock = Clock()
    slow, asked = asyncio.Event(), asyncio.Event()

    async def check(guild_id: int, user_id: int) -> bool | None:
        if not asked.is_set():  # the page's question, asked first, answered last
            asked.set()
            await slow.wait()
            return True
        return False

    confirmations = AdminConfirmations(check, clock=clock)
    page = asyncio.create_task(confirmations.confirm(GUILD, ALICE))
    await asyncio.wait_for(asked.wait(), 10)
    clock.now += 1
    assert await confirmations.fresh(GUILD, ALICE) is False
    slow.set()
    assert await page is True  # that page was drawn with the old answer
    assert await confirmations.confirm(GUILD, ALICE) is False  # the next one is not


async def test_what_an_interaction_showed_replaces_an_older_answer() -> None:
    discord, clock = Discord(), Clock()
    confirmations = AdminConfirmations(discord.check, clock=clock)
    discord.answers[ALICE] = False
    assert await confirmations.confirm(GUILD, ALICE) is False
    clock.now += 1
    confirmations.remember(GUILD, ALICE, True)  # /gallery: Discord says she manages it now
    assert await confirmations.confirm(GUILD, ALICE) is True
    assert discord.asked == [ALICE]


async def test_a_member_who_left_is_known_once_the_answer_expires() -> None:
    """issue 20 item 9: the same cached question tells whether the member is still there."""
    discord, clock = Discord(), Clock()
    confirmations = AdminConfirmations(discord.check, clock=clock)
    discord.answers[BOB] = Standing.MEMBER
    assert await confirmations.standing(GUILD, BOB) is Standing.MEMBER
    assert await confirmations.confirm(GUILD, BOB) is False  # a member, no admin
    discord.answers[BOB] = Standing.GONE  # banned
    assert await confirmations.standing(GUILD, BOB) is Standing.MEMBER  # the answer stands
    clock.now += CONFIRMED_FOR_S + 1
    assert await confirmations.standing(GUILD, BOB) is Standing.GONE
    assert await confirmations.confirm(GUILD, BOB) is False
    assert discord.asked == [BOB, BOB]
    confirmations.remember(GUILD, BOB, False)  # /gallery: Discord says Bob is back
    assert await confirmations.standing(GUILD, BOB) is Standing.MEMBER
