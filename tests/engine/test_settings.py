"""Settings: one shared way of reading them, and the engine's per-user safety ceiling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.redis.settings import RemoteSettings
from engine.settings import DEFAULT_QUEUED_CEILING_PER_USER, EngineSettings, ImagineBaseSettings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No IMAGINE_ variable and no .env from the developer's machine."""
    for key in [k for k in os.environ if k.startswith("IMAGINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_engine_and_redis_settings_read_the_environment_the_same_way() -> None:
    for cls in (EngineSettings, RemoteSettings):
        assert issubclass(cls, ImagineBaseSettings)
        config = cls.model_config
        assert config["env_prefix"] == "IMAGINE_"
        assert config["env_file"] == ".env"
        assert config["extra"] == "ignore"
    # One definition of the Redis URL: the engine's settings do not carry one.
    assert "redis_url" in RemoteSettings.model_fields
    assert "redis_url" not in EngineSettings.model_fields


def test_the_ceiling_defaults_to_25_and_reads_its_new_and_old_names(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EngineSettings().queued_ceiling_per_user == DEFAULT_QUEUED_CEILING_PER_USER == 25
    # An existing deployment's .env keeps its meaning under the old name...
    (clean_env / ".env").write_text("IMAGINE_MAX_QUEUED_PER_USER=7\n")
    assert EngineSettings().queued_ceiling_per_user == 7
    monkeypatch.setenv("IMAGINE_MAX_QUEUED_PER_USER", "8")
    assert EngineSettings().queued_ceiling_per_user == 8
    # ...and the new name wins where both are set.
    monkeypatch.setenv("IMAGINE_QUEUED_CEILING_PER_USER", "40")
    assert EngineSettings().queued_ceiling_per_user == 40
    # In code, the field name and the old keyword both work.
    assert EngineSettings(queued_ceiling_per_user=3).queued_ceiling_per_user == 3
    assert EngineSettings(max_queued_per_user=2).queued_ceiling_per_user == 2


def test_a_ceiling_below_one_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_QUEUED_CEILING_PER_USER", "0")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        EngineSettings()
