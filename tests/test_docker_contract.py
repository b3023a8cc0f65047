"""The Docker image's contract, checked without Docker: what the container will resolve at start.

The documented start is ``docker run --env-file .env ...`` with ``.env`` copied from
``.env.example``; ``--env-file`` values win over the Dockerfile's ``ENV``. A value in
``.env.example`` that overrides an image path (the database once did) silently moves state out of
the ``/data`` volume, so these tests apply both exactly as Docker does and read the settings back.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.settings import BotSettings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage name, line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1) or f"stage{len(stages)}", [])
        if current is not None:
            current.append(line)
    return stages


def _stage_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _stages()[name]:
        if line.upper().startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _env_file(path: Path) -> dict[str, str]:
    """``docker run --env-file`` semantics: KEY=VALUE lines, '#' lines ignored, no quoting."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value
    return env


@pytest.fixture
def container_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The environment the bot sees in the container: image ENV, then the env file on top."""
    env = _stage_env("runtime") | _env_file(ROOT / ".env.example")
    for key in [k for k in os.environ if k.startswith("IMAGINE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("IMAGINE_"):
            monkeypatch.setenv(key, value)
    # The container's working directory holds no .env: --env-file passes it as variables.
    monkeypatch.chdir(tmp_path)
    return env


def test_database_resolves_inside_the_data_volume(container_env: dict[str, str]) -> None:
    settings = BotSettings()
    database = make_url(settings.database_url).database
    assert database is not None
    assert Path(database).is_absolute()
    assert Path(database).parent == Path("/data"), settings.database_url


def test_env_example_does_not_override_image_paths() -> None:
    image = _stage_env("runtime")
    example = _env_file(ROOT / ".env.example")
    overridden = sorted(k for k in image if k in example and example[k] != image[k])
    assert overridden == [], overridden
    assert "IMAGINE_DATABASE_URL" not in example


def test_runtime_image_has_no_compiler_and_a_pinned_base() -> None:
    stages = _stages()
    assert {"build", "runtime", "worker", "bot"} <= set(stages)
    runtime = " ".join(stages["runtime"])
    assert "build-essential" not in runtime and "python3-dev" not in runtime
    assert "build-essential" in " ".join(stages["build"])
    assert re.search(r"^ARG CUDA_IMAGE=\S+@sha256:[0-9a-f]{64}$", DOCKERFILE.read_text(), re.M)
    # The bot is the default target: it must be the last stage.
    assert list(stages)[-1] == "bot"


def test_bot_and_worker_each_have_a_health_check() -> None:
    stages = _stages()
    worker = [line for line in stages["worker"] if line.startswith("HEALTHCHECK")]
    bot = [line for line in stages["bot"] if line.startswith("HEALTHCHECK")]
    assert worker and "engine.worker" in worker[0] and "--healthcheck" in worker[0]
    assert bot and "/healthz" in bot[0]


def test_constraints_pin_every_dependency() -> None:
    """The image and `make run` install tested versions: each requirement has a pinned line."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[_normal(name)] = version
    missing = []
    for requirement in wanted:
        name = _normal(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
        if name == "torch":
            continue  # deliberately left to pip: the CUDA build on GPU hosts, CPU build here
        if name not in pins:
            missing.append(name)
    assert not missing, f"add these to constraints.txt (make lock): {missing}"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_store_resolves_inside_the_data_volume(container_env: dict[str, str]) -> None:
    settings = BotSettings()
    assert settings.image_dir.is_absolute(), settings.image_dir
    assert Path("/data") in settings.image_dir.parents, settings.image_dir
