"""``bot.gallery.wiring.member_standing``: a link asks Discord about its member now."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import discord
import pytest

from bot.gallery.admins import Standing
from bot.gallery.wiring import member_standing

GUILD, ALICE = 900, 1


def http_error(kind: type[discord.HTTPException], status: int) -> discord.HTTPException:
    return kind(types.SimpleNamespace(status=status, reason="test"), "test")


class Guild:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[int] = []

    async def fetch_member(self, user_id: int) -> Any:
        self.asked.append(user_id)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def bot_with(guild: Guild | None, *, ready: bool = True) -> Any:
    return types.SimpleNamespace(get_guild=lambda guild_id: guild, is_ready=lambda: ready)


def member(manage_guild: bool) -> Any:
    return types.SimpleNamespace(
        guild_permissions=discord.Permissions(manage_guild=manage_guild, send_messages=True)
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (member(True), Standing.ADMIN),
        (member(False), Standing.MEMBER),  # demoted since the link was made
        (http_error(discord.NotFound, 404), Standing.GONE),  # left the server (issue 20 item 9)
        (http_error(discord.HTTPException, 503), None),  # Discord did not answer
        (TimeoutError(), None),
        (ConnectionResetError(), None),
        (RuntimeError("a dropped connection of another kind"), None),
    ],
)
async def test_the_member_is_fetched_from_discord_not_the_cache(
    answer: Any, expected: Standing | None
) -> None:
    guild = Guild(answer)
    assert await member_standing(bot_with(guild), GUILD, ALICE) is expected
    assert guild.asked == [ALICE]


async def test_a_server_the_bot_left_has_no_members() -> None:
    assert await member_standing(bot_with(None), GUILD, ALICE) is Standing.GONE


async def test_before_the_bot_is_connected_nothing_can_be_told() -> None:
    guild = Guild(member(True))
    assert await member_standing(bot_with(guild, ready=False), GUILD, ALICE) is None
    assert guild.asked == []


async def test_a_discord_that_does_not_answer_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.gallery import wiring

    class Hanging(Guild):
        async def fetch_member(self, user_id: int) -> Any:
            await asyncio.sleep(60)

    monkeypatch.setattr(wiring, "ADMIN_CHECK_TIMEOUT_S", 0.05)
    assert await member_standing(bot_with(Hanging(None)), GUILD, ALICE) is None
