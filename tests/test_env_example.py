"""`.env.example` documents every setting: a new field without a line there fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from bot.settings import BotSettings
from engine.redis.settings import RemoteSettings
from engine.settings import EngineSettings

EXAMPLE = (Path(__file__).resolve().parent.parent / ".env.example").read_text()


@pytest.mark.parametrize("settings", [BotSettings, EngineSettings, RemoteSettings])
def test_every_setting_has_a_documented_line(settings: type[BaseSettings]) -> None:
    missing = [
        f"IMAGINE_{name.upper()}"
        for name in settings.model_fields
        if f"IMAGINE_{name.upper()}=" not in EXAMPLE
    ]
    assert not missing, f"document these in .env.example: {missing}"
