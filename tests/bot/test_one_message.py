"""One message per outcome: a Cancel is answered once (the job's message turns into
"Cancelled", no private "Cancelled" besides it), and an out-of-memory failure says so once."""

from __future__ import annotations

from typing import Any

import pytest

from bot import render
from engine.contract import FailureKind, JobFailed
from tests.bot.harness import Harness

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

# What the engine says when the GPU runs out of memory (engine.pipeline / engine.edit).
OOM_MESSAGE = (
    "The GPU ran out of memory for this image. Try again in a moment, or pick a smaller aspect "
    "or fast mode."
)


def texts_saying(harness: Harness, words: str) -> list[str]:
    """Every text the bot sent or edited in that contains ``words`` (any REST call)."""
    found = []
    for request in harness.env.http_requests:
        body = request.json if isinstance(request.json, dict) else {}
        content = body.get("content") or (body.get("data") or {}).get("content") or ""
        if words in content:
            found.append(content)
    return found


async def test_cancel_is_answered_once(harness: Harness) -> None:
    harness.engine.inner.settings.test_step_delay_s = 0.25
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="a long one", mode="standard")
    click = await alice.click(result.response, label="Cancel")
    assert not click.ephemeral and not click.followups
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert "🚫 **Cancelled.**" in message.content and message.components == []
    # The member read "Cancelled" once: in the job's message, not in a private reply as well.
    assert len(texts_saying(harness, "Cancelled")) == 1
    assert (await harness.row(harness.key(result))).status == "cancelled"


async def test_out_of_memory_is_said_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OutOfMemory:
        job_id = "oom"

        async def result(self) -> Any:
            raise JobFailed(FailureKind.OOM, OOM_MESSAGE)

    async def submit(request: Any, on_progress: Any = None) -> OutOfMemory:
        return OutOfMemory()

    monkeypatch.setattr(harness.engine, "submit", submit)
    alice = harness.member("alice")
    result = await alice.slash(harness.channel, "imagine", prompt="a huge one")
    await harness.wait_jobs()
    content = harness.message(result.response.id).content
    assert content.lower().count("out of memory") == 1, content
    assert "❌ **The GPU ran out of memory for this image.** Try again in a moment" in content
    assert "did not count against your daily quota" in content


def test_failure_text_keeps_a_lead_and_a_different_detail() -> None:
    text = render.failure_text("h", FailureKind.TIMEOUT, "Generation took longer than 300 s", True)
    assert text == (
        "h\n❌ **The image took too long.** Generation took longer than 300 s. "
        "It did not count against your daily quota."
    )
