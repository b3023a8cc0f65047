"""Settings: one shared way of reading them, and the engine's per-user safety ceiling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError, model_validator

from engine.redis.settings import RemoteSettings
from engine.settings import (
    DEFAULT_QUEUED_CEILING_PER_USER,
    EngineSettings,
    ImagineBaseSettings,
    describe_settings_error,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]


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


SECRETS = ("abc.SECRET.xyz", "hunter2")
# Every entry point that reads settings at start, and a value each of them refuses.
ENTRY_POINTS = {
    "worker": (["engine.worker"], {"IMAGINE_HEARTBEAT_S": "-1"}, "IMAGINE_HEARTBEAT_S"),
    "worker-timings": (
        ["engine.worker"],
        {"IMAGINE_REDELIVER_AFTER_S": "1"},  # a rule across fields: its input is every value
        "IMAGINE_REDELIVER_AFTER_S",
    ),
    "remote": (["engine.remote", "status"], {"IMAGINE_HEARTBEAT_S": "-1"}, "IMAGINE_HEARTBEAT_S"),
    "engine": (
        ["engine", "generate", "x", "--out", "x.png"],
        {"IMAGINE_JOB_TIMEOUT_S": "-1"},
        "IMAGINE_JOB_TIMEOUT_S",
    ),
    "worker-engine": (
        ["engine.worker"],
        {"IMAGINE_QUEUED_CEILING_PER_USER": "0"},
        "IMAGINE_QUEUED_CEILING_PER_USER",
    ),
    "bot": (["bot"], {"IMAGINE_COMMAND_SYNC": "guild"}, "IMAGINE_DEV_GUILD_ID"),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_settings_error_names_the_variable_and_prints_no_value(
    entry: str, tmp_path: Path
) -> None:
    """Finding 10: pydantic's error text quotes the input, here a piece of the token."""
    module, bad, variable = ENTRY_POINTS[entry]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    env.update(
        {
            "IMAGINE_DISCORD_TOKEN": "abc.SECRET.xyz",
            "IMAGINE_REDIS_URL": "redis://:hunter2@h/0",
            "PYTHONPATH": str(ROOT),
            **bad,
        }
    )
    run = subprocess.run(
        [sys.executable, "-m", *module],
        env=env,
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "invalid settings" in output and variable in output
    assert "input_value" not in output
    for secret in SECRETS:
        for fragment in (secret, secret[:6], secret[-6:]):
            assert fragment not in output


def test_settings_errors_are_described_by_variable_and_message_only(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINE_REDIS_URL", "redis://:hunter2@h/0")
    monkeypatch.setenv("IMAGINE_DISCORD_TOKEN", "abc.SECRET.xyz")
    monkeypatch.setenv("IMAGINE_HEARTBEAT_S", "soon")
    monkeypatch.setenv("IMAGINE_WORKER_METRICS_PORT", "70000")
    with pytest.raises(ValidationError) as caught:
        RemoteSettings()
    assert describe_settings_error(caught.value).splitlines() == [
        "error: invalid settings (check .env and the environment):",
        "  IMAGINE_HEARTBEAT_S: Input should be a valid number, unable to parse string as a number",
        "  IMAGINE_WORKER_METRICS_PORT: Input should be less than or equal to 65535",
    ]
    # A rule's own message could quote a secret: secret-looking inputs are blanked out of it.
    with pytest.raises(SystemExit) as exited:
        load_settings(Leaky)
    assert exited.value.code == 2
    printed = capsys.readouterr().err
    assert "settings: Value error, cannot reach *** as token ***" in printed
    assert "hunter2" not in printed and "SECRET" not in printed


class Leaky(ImagineBaseSettings):
    """Settings whose rule quotes what it read (as a careless validator might)."""

    redis_url: str | None = None
    discord_token: SecretStr | None = None

    @model_validator(mode="after")
    def _quote(self) -> Leaky:
        token = self.discord_token.get_secret_value() if self.discord_token else ""
        raise ValueError(f"cannot reach {self.redis_url} as token {token}")
