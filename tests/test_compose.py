"""``compose.yaml`` checked without Docker: parsed with PyYAML and held against the Dockerfile
(targets, ports, health checks, users), the settings, ``.env.example`` and the README's own
``docker run`` lines, so the two recipes cannot drift apart. issue 20 item 12."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from bot.settings import BotSettings
from engine.redis.settings import RemoteSettings
from engine.settings import EngineSettings
from tests.test_docker_contract import ROOT, _env_file, _stage_env, _stages, worker_stop_timeout_s

COMPOSE = ROOT / "compose.yaml"
SETTINGS = [BotSettings, EngineSettings, RemoteSettings]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def seconds(value: str) -> float:
    """A compose duration ("45s", "11m", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def test_the_bot_runs_by_default_and_redis_and_workers_by_profile(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"bot", "redis", "worker"}
    assert "profiles" not in service(compose, "bot")
    assert service(compose, "redis")["profiles"] == ["workers"]
    assert service(compose, "worker")["profiles"] == ["workers"]


def test_each_image_is_built_from_its_own_dockerfile_target(compose: dict[str, Any]) -> None:
    """A worker built from the bot's target inherits a health check of port 8080, which a
    worker never serves: it would be unhealthy forever."""
    stages = _stages()
    for name, target in (("bot", "bot"), ("worker", "worker")):
        build = service(compose, name)["build"]
        assert build["target"] == target and target in stages
        assert build.get("context", ".") == "."
        assert "healthcheck" not in service(compose, name)  # the image's own check applies


def test_the_bot_publishes_its_web_port_on_loopback_only(compose: dict[str, Any]) -> None:
    bot = _stages()["bot"]
    exposed = {int(port) for line in bot if line.startswith("EXPOSE") for port in line.split()[1:]}
    port = int(_stage_env("runtime")["IMAGINE_HEALTH_PORT"])
    assert exposed == {port}
    assert service(compose, "bot")["ports"] == [f"127.0.0.1:{port}:{port}"]
    healthcheck = next(line for line in bot if line.startswith("HEALTHCHECK"))
    assert "IMAGINE_HEALTH_PORT" in healthcheck and "/healthz" in healthcheck
    for name in ("redis", "worker"):  # nothing else is reachable from outside
        assert "ports" not in service(compose, name)


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) == {"imagine-data", "imagine-redis"}
    for name in ("bot", "worker"):
        assert service(compose, name)["volumes"] == ["imagine-data:/data"]
    assert service(compose, "redis")["volumes"] == ["imagine-redis:/data"]


def test_the_gpu_services_reserve_nvidia_gpus(compose: dict[str, Any]) -> None:
    for name in ("bot", "worker"):
        devices = service(compose, name)["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in service(compose, "redis")


def test_stop_grace_periods_match_the_documented_stop_timeouts(compose: dict[str, Any]) -> None:
    """The bot finishes an upload under way (README: --stop-timeout 45); a worker finishes the
    image it renders, up to the job timeout (the same value everywhere the docs say it)."""
    assert seconds(service(compose, "bot")["stop_grace_period"]) == 45
    worker = seconds(service(compose, "worker")["stop_grace_period"])
    assert worker == worker_stop_timeout_s()
    assert worker > EngineSettings.model_fields["job_timeout_s"].default


def test_every_variable_is_a_setting_or_documented(compose: dict[str, Any]) -> None:
    fields = {f"IMAGINE_{n.upper()}" for s in SETTINGS for n in s.model_fields}
    example = COMPOSE.parent.joinpath(".env.example").read_text()
    for name, body in compose["services"].items():
        if name == "redis":
            continue  # a stock image: its one variable is checked below
        assert body["env_file"] == [".env"], name
        for key in body.get("environment", {}):
            assert key in fields, f"{name}: {key} is no setting"
            assert key not in _stage_env("runtime"), f"{name}: {key} overrides the image"
    for variable in set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text())):
        assert re.search(rf"^#?\s*{variable}=", example, re.M), f"document {variable}"


def test_redis_is_durable_and_needs_a_password(compose: dict[str, Any]) -> None:
    """The password comes from ``REDIS_PASSWORD`` (never the bot's whole .env: the Discord
    token stays out of the Redis container); without it Redis refuses to start and says why,
    while ``docker compose up`` without the profile does not need it."""
    redis = service(compose, "redis")
    assert "env_file" not in redis
    assert redis["environment"] == {"REDIS_PASSWORD": "${REDIS_PASSWORD:-}"}
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and '--requirepass "$$REDIS_PASSWORD"' in command
    assert 'test -n "$$REDIS_PASSWORD"' in command and "set REDIS_PASSWORD" in command
    worker = service(compose, "worker")
    assert worker["depends_on"] == ["redis"]
    assert "IMAGINE_WORKER_NAME" in worker["environment"]


def test_the_env_example_names_the_compose_redis_url() -> None:
    """With the workers profile the bot and the worker reach Redis by its service name."""
    example = _env_file(ROOT / ".env.example")
    assert "IMAGINE_REDIS_URL" not in example  # commented out: unset, the bot renders itself
    text = (ROOT / ".env.example").read_text()
    assert "# IMAGINE_REDIS_URL=redis://:${REDIS_PASSWORD}@redis:6379/0" not in text
    assert re.search(r"^# IMAGINE_REDIS_URL=redis://:\S+@redis:6379/0$", text, re.M)
