"""The first start against a real gateway: the bot is online and its commands are registered
while the model still loads (the real first start downloads ~58 GB), and an /imagine sent
meanwhile is answered at once, waits for the model, then gets its image."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from engine import generators as generators_module
from engine.settings import EngineSettings

from .harness import Rig, delivered, settled


async def test_online_and_answering_while_the_model_loads(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = generators_module.load_generators

    def slow_load(settings: EngineSettings, *args: Any, **kwargs: Any) -> Any:
        assert gate.wait(60), "the test never let the load go on"  # the download, say
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(generators_module, "load_generators", slow_load)
    emu = rig.emulator
    alice = emu.add_user("alice")
    engine = rig.engine(edit_model="")
    try:
        async with rig.bot(backend=engine) as client:
            # Connected and registered, the model not loaded yet.
            assert client.is_ready() and emu.sessions
            assert any(c["name"] == "imagine" for c in emu.global_commands)
            assert not (await engine.status()).ready

            interaction = await emu.slash(alice, "imagine", prompt="an early bird")
            await emu.wait_acked(interaction)
            assert interaction.ack_latency is not None and interaction.ack_latency < 3.0
            message = emu.messages[interaction.response_message_id]
            assert "The model is loading" in message.history[0].content

            gate.set()
            image = await delivered(emu, interaction, within=60)
            ledger = await settled(rig.database_url, interaction)
    finally:
        gate.set()
    assert image.attachments
    assert ledger.row(interaction).status == "done"
