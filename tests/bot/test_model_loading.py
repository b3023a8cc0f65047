"""The first start: the bot connects and syncs its commands before the model is ready, and is
never silent while it loads. /status and the bot's presence say what the engine is doing,
/imagine is accepted into the line with "the model is loading", and if loading fails the
waiting jobs are refunded and new ones refused plainly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.app import ImagineBot
from engine import generators as generators_module
from engine.queue import LOAD_FAILED_MESSAGE, LocalEngine
from engine.settings import EngineSettings
from tests.bot.harness import QUEUED_CEILING, ExternalEngine, Harness

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


class Gate:
    def __init__(self) -> None:
        self.open = threading.Event()
        self.fail = False


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """``load_generators`` waits for the test (an artificial load delay), then loads or fails."""
    gate = Gate()
    real = generators_module.load_generators

    def load(settings: EngineSettings, *args: Any, **kwargs: Any) -> Any:
        assert gate.open.wait(60), "the test never let the load go on"
        if gate.fail:
            raise RuntimeError("CUDA error: out of memory while loading /models/qwen")
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(generators_module, "load_generators", load)
    yield gate
    gate.open.set()


@pytest.fixture
def engine(tiny_model_dir: Path, gate: Gate) -> Iterator[ExternalEngine]:
    """A fresh engine of this test's own that has not loaded its model yet."""
    inner = LocalEngine(
        EngineSettings(
            _env_file=None,  # type: ignore[call-arg]
            model=str(tiny_model_dir),
            edit_model="",
            max_side=64,
            warmup=False,
            compile=False,
            queued_ceiling_per_user=QUEUED_CEILING,
        )
    )
    yield ExternalEngine(inner)
    gate.open.set()
    import asyncio

    asyncio.run(inner.close())


@pytest.fixture(autouse=True)
def slow_presence_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The presence loop polls every few seconds in real time, which would keep SimCord's clock
    busy; these tests drive ``poll_once`` themselves instead."""
    monkeypatch.setattr("bot.presence.POLL_LOADING_S", 3600.0)


@pytest.fixture
def presences(imagine_bot: ImagineBot, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    seen: list[tuple[Any, Any]] = []

    async def change_presence(*, activity: Any = None, status: Any = None) -> None:
        seen.append((status, activity))

    monkeypatch.setattr(imagine_bot, "change_presence", change_presence)
    return seen


def presence_texts(seen: list[tuple[Any, Any]]) -> list[str]:
    return [getattr(activity, "name", "") or "" for _, activity in seen]


async def test_the_bot_answers_while_the_model_loads(
    presences: list[tuple[Any, Any]], harness: Harness, gate: Gate
) -> None:
    # Connected and synced although the model is still loading.
    assert harness.env.backend.find_command("imagine", None) is not None
    alice = harness.member("alice")
    status = await alice.slash(harness.channel, "status")
    description = status.response.embeds[0].description
    assert "loading" in description.lower() and "not ready" in description

    # Shown as soon as the bot is connected (its presence then follows every few seconds).
    assert any("loading" in text.lower() for text in presence_texts(presences)), presences
    assert presences[-1][0] == discord.Status.idle

    result = await alice.slash(harness.channel, "imagine", prompt="an early bird")
    assert not result.ephemeral
    assert "The model is loading" in harness.answers(result)[0]
    assert (await harness.row(harness.key(result))).status == "queued"

    gate.open.set()
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert message.attachments and (await harness.row(harness.key(result))).status == "done"
    await harness.bot.presence.poll_once()  # what the loop does every few seconds
    assert presences[-1] == (discord.Status.online, discord.CustomActivity("Ready: /imagine"))


async def test_a_failed_load_refunds_the_waiting_and_refuses_the_rest(
    presences: list[tuple[Any, Any]], harness: Harness, gate: Gate
) -> None:
    alice = harness.member("alice")
    waiting = await alice.slash(harness.channel, "imagine", prompt="too early")
    gate.fail = True
    gate.open.set()
    await harness.wait_jobs()
    row = await harness.row(harness.key(waiting))
    assert row.status == "failed" and not row.charged
    text = harness.message(waiting.response.id).content
    assert "could not load its model" in text and "/models" not in text
    assert (await harness.quota(alice)).used == 0

    refused = await alice.slash(harness.channel, "imagine", prompt="after the failure")
    assert refused.ephemeral and LOAD_FAILED_MESSAGE in refused.response.content
    assert (await harness.quota(alice)).used == 0

    status = await alice.slash(harness.channel, "status")
    embed = status.response.embeds[0]
    assert "could not be loaded" in embed.description and "/models" not in embed.description
    await harness.bot.presence.poll_once()
    assert presences[-1][0] == discord.Status.dnd
    assert presences[-1][1].name == "The model could not be loaded"


def test_what_a_download_looks_like() -> None:
    from bot import render
    from bot.presence import EnginePresence
    from engine.contract import EngineStatus

    status = EngineStatus(
        backend="local",
        ready=False,
        model="Qwen/Qwen-Image",
        memory_mode="auto",
        gpu="NVIDIA H200",
        queue_length=2,
        loading="downloading the model: 12.3 of 57.7 GB",
        load_progress=0.213,
        load_eta_s=840,
    )
    state, text = EnginePresence.presence_for(status)
    assert state == discord.Status.idle
    assert text == (
        "Getting ready: downloading the model: 12.3 of 57.7 GB (21%), about 14 min left"
    )
    embed = render.status_embed(status, uptime_s=5, latency_ms=None)
    assert "⏳ Getting ready: downloading the model: 12.3 of 57.7 GB (21%)" in embed.description
    assert render.model_loading_line(840) == (
        "⏳ The model is loading (about 14 min); your image starts as soon as it is ready."
    )
