"""Discord itself stops over-long input: /imagine's prompt and negative carry ``max_length``
in the synced command payload, so a member's text is never lost to a refusal after typing it."""

from __future__ import annotations

import pytest
from simcord.backend.errors import OptionError

from engine.presets import MAX_PROMPT_CHARS
from tests.bot.harness import Harness

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _options(harness: Harness, name: str) -> dict[str, dict]:
    command = harness.env.backend.find_command(name, None)
    assert command is not None, f"/{name} was not synced"
    return {option["name"]: option for option in command["options"]}


async def test_imagine_prompt_and_negative_carry_max_length(harness: Harness) -> None:
    options = _options(harness, "imagine")
    assert options["prompt"]["max_length"] == MAX_PROMPT_CHARS
    assert options["prompt"]["min_length"] == 1
    assert options["negative"]["max_length"] == MAX_PROMPT_CHARS

    # What the Discord client does with it: the over-long prompt never leaves the text box.
    alice = harness.member("alice")
    with pytest.raises(OptionError, match=f"at most {MAX_PROMPT_CHARS} characters"):
        await alice.slash(harness.channel, "imagine", prompt="x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(OptionError, match=f"at most {MAX_PROMPT_CHARS} characters"):
        await alice.slash(
            harness.channel, "imagine", prompt="a cat", negative="y" * (MAX_PROMPT_CHARS + 1)
        )
    assert await harness.rows() == []
