"""Bad input, property-based: whatever members type into /imagine, the bot answers, never
crashes, never pings anyone, and never sends Discord something it would reject.

One bot and one emulator serve every example (hypothesis runs the examples on the module's
event loop), so the cost per example is one interaction, plus one tiny render when the input
is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord.gateway
import discord.http
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.presets import ASPECTS, BUILTIN_STYLES, MAX_SEED, MODES

from .emulator import CB_MESSAGE, FLAG_EPHEMERAL, DiscordEmulator
from .harness import Rig, delivered, image_deliveries, png_dimensions, settled

pytestmark = pytest.mark.asyncio(loop_scope="module")


class _Errors(logging.Handler):
    """Collects ERROR records: an unhandled exception anywhere is logged at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Wire:
    def __init__(self, rig: Rig, errors: _Errors) -> None:
        self.rig = rig
        self.emu: DiscordEmulator = rig.emulator
        self.errors = errors
        self.member = self.emu.add_user("fuzzer")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wire(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> AsyncIterator[Wire]:
    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    emu = DiscordEmulator()
    await emu.start()
    rig = Rig(emu, tmp_path_factory.mktemp("wire-fuzz"), tiny_model_dir)
    # No quota in the way: every acceptable prompt must reach the engine and come back.
    bot_settings = rig.settings(default_daily_quota=0, default_max_queued=0)
    try:
        async with rig.bot(settings=bot_settings, backend=rig.engine()):
            yield Wire(rig, errors)
    finally:
        await rig.close()
        await emu.close()
        logging.getLogger().removeHandler(errors)
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


NASTY = [
    "",
    " ",
    "\n\n\t ",
    "@everyone",
    "@here look at this",
    "<@{member}> and <@!{member}>",
    "<@&{role}> ping the role",
    "<#{channel}>",
    "**bold** __under__ ~~strike~~ `code` ```py\nprint(1)\n``` ||spoiler|| > quote",
    "# heading\n-# small\n[a link](https://example.com) <https://example.com>",
    "\u200b\u200c\u200d\u2060\ufeff",  # zero-width characters only
    "a red fox\u202e in the snow",  # right-to-left override
    "\x00\x01\x07\x1b[31m control \x7f",
    "{prompt} {} {0} %s %(x)s \\n \\",
    "e\u0301" * 800,  # combining marks: 1600 code points
    "💥" * 1501,
    "x" * 1500,
    "x" * 1501,
    "x" * 10_000,
    "a" + "\n" * 2000 + "b",
]

unicode_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)),  # JSON cannot carry lone surrogates
    max_size=300,
)
prompts = st.one_of(
    st.sampled_from(NASTY),
    unicode_text,
    st.tuples(st.sampled_from(NASTY), unicode_text).map("".join),
)
valid_seeds = st.one_of(st.none(), st.integers(0, MAX_SEED))
any_seeds = st.one_of(
    valid_seeds,
    st.integers(-(2**53), -1),
    st.integers(MAX_SEED + 1, 2**53),
    st.sampled_from([-1, 0, MAX_SEED, MAX_SEED + 1, 2**53]),
)
valid_styles = st.one_of(st.none(), st.sampled_from([*sorted(BUILTIN_STYLES), "ANIME", " anime "]))
any_styles = st.one_of(
    valid_styles, st.sampled_from(["no-such-style", "@everyone", "x" * 200]), unicode_text
)
aspects = st.one_of(st.none(), st.sampled_from(sorted(ASPECTS)))
modes = st.one_of(st.none(), st.sampled_from([str(m) for m in MODES]))
FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _fill(text: str, wire: Wire) -> str:
    return (
        text.replace("{member}", str(wire.member.id))
        .replace("{role}", str(wire.emu.admin_role_id))
        .replace("{channel}", str(wire.emu.channel.id))
    )


@FUZZ
@given(
    prompt=prompts,
    negative=st.one_of(st.none(), prompts),
    seed=valid_seeds,
    style=valid_styles,
    aspect=aspects,
    mode=modes,
)
async def test_any_prompt_gets_an_answer_and_no_crash(
    wire: Wire,
    prompt: str,
    negative: str | None,
    seed: int | None,
    style: str | None,
    aspect: str | None,
    mode: str | None,
) -> None:
    """Nasty prompts and negatives with otherwise valid options: most become images."""
    await _imagine(wire, prompt, negative, seed, style, aspect, mode)


@FUZZ
@given(
    prompt=st.sampled_from(["a red fox", "@everyone", "**bold** <@{member}>", "x" * 1500]),
    seed=any_seeds,
    style=any_styles,
    aspect=aspects,
    mode=modes,
)
async def test_any_options_get_an_answer_and_no_crash(
    wire: Wire,
    prompt: str,
    seed: int | None,
    style: str | None,
    aspect: str | None,
    mode: str | None,
) -> None:
    """Out-of-range seeds and made-up styles: refused with a reason, or made."""
    await _imagine(wire, prompt, None, seed, style, aspect, mode)


async def _imagine(
    wire: Wire,
    prompt: str,
    negative: str | None,
    seed: int | None,
    style: str | None,
    aspect: str | None,
    mode: str | None,
) -> None:
    emu = wire.emu
    wire.errors.records.clear()
    first_request = len(emu.requests)
    options: dict[str, Any] = {"prompt": _fill(prompt, wire)}
    for name, value in (("negative", negative), ("style", style)):
        if value is not None:
            options[name] = _fill(value, wire)
    for name, value in (("seed", seed), ("aspect", aspect), ("mode", mode)):
        if value is not None:
            options[name] = value

    interaction = await emu.slash(wire.member, "imagine", options=options)
    await emu.wait_acked(interaction, within=10.0)
    assert interaction.answered, "the member would see 'This interaction failed'"
    assert interaction.callback_type == CB_MESSAGE
    (reply,) = emu.messages_for(interaction)[:1]
    if reply.flags & FLAG_EPHEMERAL:
        # Refused: a short private explanation.
        assert reply.content and len(reply.content) <= 2000
        event(f"refused: {reply.content[:30]}")
    else:
        event("accepted and delivered")
        image = await delivered(emu, interaction)
        ledger = await settled(wire.rig.database_url, interaction)
        assert ledger.row(interaction).status == "done"
        assert image_deliveries(emu, interaction) == [image]
        assert png_dimensions(image.attachments[0].data) == (
            ledger.row(interaction).width,
            ledger.row(interaction).height,
        )

    # Nobody pinged by anything the bot showed, whatever the prompt contained.
    for message in emu.messages_for(interaction):
        assert message.mentions == [] and message.mention_roles == []
        assert not message.mention_everyone
    # Discord accepted every request the bot made (no 400 for an overlong field, bad embed…).
    rejected = [
        (r.method, r.path, r.status, r.json)
        for r in emu.requests[first_request:]
        if r.status >= 400
    ]
    assert rejected == []
    assert wire.errors.records == [], [r.getMessage() for r in wire.errors.records]
    assert emu.unknown_routes == []
