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
from engine.redis.settings import RemoteSettings
from engine.settings import EngineSettings

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


# ------------------------------------------------------------------- the documented recipes
DOCS = [ROOT / "README.md", ROOT / "docs" / "SCALE_OUT.md"]


def _docker_runs(path: Path) -> list[str]:
    """Every ``docker run`` command of a document, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip().startswith("docker run")]


def _worker_runs(path: Path) -> list[str]:
    return [run for run in _docker_runs(path) if "IMAGINE_WORKER_NAME" in run or "worker" in run]


def worker_stop_timeout_s() -> float:
    """The one stop timeout the docs give a worker: its job timeout and a minute to save."""
    return EngineSettings.model_fields["job_timeout_s"].default + 60


def test_docs_start_workers_from_the_worker_image() -> None:
    """issue 20 item 12: the docs ran workers from the bot's image, whose HEALTHCHECK asks
    port 8080, which a worker never serves: the container stayed unhealthy forever."""
    for doc in DOCS:
        runs = _worker_runs(doc)
        assert runs, doc
        for run in runs:
            assert run.split()[-1] == "imagine-worker" or " imagine-worker " in run, run
            assert " imagine python" not in run and not run.endswith(" imagine"), run
        assert "docker build --target worker -t imagine-worker ." in doc.read_text(), doc


def test_every_worker_stop_timeout_is_the_same_and_outlasts_a_job() -> None:
    """issue 20 item 12: the docs said 600 s in one place and 660 s in another."""
    wanted = worker_stop_timeout_s()
    found: list[tuple[str, float]] = []
    for doc in [*DOCS, DOCKERFILE]:
        text = re.sub(r"\\\n\s*#?\s*", " ", doc.read_text())
        for line in text.splitlines():
            if "imagine-worker" in line or "IMAGINE_WORKER_NAME" in line:
                found += [(doc.name, float(v)) for v in re.findall(r"--stop-timeout (\d+)", line)]
        found += [(doc.name, float(v)) for v in re.findall(r"TimeoutStopSec=(\d+)", text)]
    assert len(found) >= 5, found
    assert {value for _, value in found} == {wanted}, found


def test_every_variable_the_image_sets_is_a_setting() -> None:
    """issue 20 item 12: ``IMAGINE_DATA_DIR`` was set and read by nothing."""
    fields = {
        f"IMAGINE_{name.upper()}"
        for settings in (BotSettings, EngineSettings, RemoteSettings)
        for name in settings.model_fields
    }
    for stage in ("runtime", "worker", "bot"):
        unused = [k for k in _stage_env(stage) if k.startswith("IMAGINE_") and k not in fields]
        assert unused == [], f"{stage}: {unused}"


def test_the_docs_name_the_uid_that_must_own_a_bind_mounted_data_folder() -> None:
    """issue 20 item 12: a bind-mounted /data owned by root leaves the image's user unable to
    write the database, the model cache or the image store."""
    runtime = " ".join(_stages()["runtime"])
    uid = re.search(r"useradd [^&]*--uid (\d+)", runtime)
    assert uid, runtime
    readme = ROOT.joinpath("README.md").read_text()
    assert f"chown -R {uid[1]}:{uid[1]} " in readme
    assert "USER imagine" in " ".join(_stages()["runtime"])


# ------------------------------------------------------------------- download and memory needs
def _start_period_s(stage: str) -> float:
    line = next(line for line in _stages()[stage] if line.startswith("HEALTHCHECK"))
    match = re.search(r"--start-period=(\d+)s", line)
    assert match, line
    return float(match[1])


def _quick_start() -> str:
    readme = ROOT.joinpath("README.md").read_text()
    start = readme.index("## Quick start")
    return " ".join(readme[start : readme.index("\n## ", start + 5)].split())


def test_the_quick_start_counts_the_edit_models_download() -> None:
    """issue 20 item 13: editing is on by default (``IMAGINE_EDIT_MODEL``), and its transformer
    is ~41 GB more to download; the quick start said ~58 GB in all."""
    from engine.devices import TRANSFORMER_GIB

    assert EngineSettings.model_fields["edit_model"].default  # on by default
    text = _quick_start()
    base = re.search(r"downloads Qwen-Image \(~(\d+) GB\)", text)
    edit = re.search(r"Qwen-Image-Edit-2511 \(~(\d+) GB more, ~(\d+) GB in all[:)]", text)
    assert base and edit, text
    assert int(edit[1]) == round(TRANSFORMER_GIB)
    assert int(edit[2]) == int(base[1]) + int(edit[1])
    assert "IMAGINE_EDIT_MODEL=" in text  # how to turn it off and skip the download


def test_the_gpu_table_is_the_memory_planners_and_counts_the_edit_model() -> None:
    """issue 20 item 13 (the table gave ~57 GB as if text-to-image were the only model) and
    issue 21 (the table per card class comes from the planner): each row's image model format,
    edit model placement and RAM are what ``python -m engine plan`` says for that card with
    64 GiB of free RAM and editing on."""
    from engine.planning import (
        QWEN_IMAGE_WITH_EDIT,
        Card,
        Component,
        Host,
        Placement,
        plan_memory,
    )

    readme = ROOT.joinpath("README.md").read_text()
    section = readme[readme.index("## GPU requirements") :]
    section = section[: section.index("\n## ", 5)]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ GB", line)]
    assert len(rows) >= 7, rows
    for row in rows:
        card, image, _encoder, edit, ram, _seconds = (c.strip() for c in row.strip("|").split("|"))
        free = float(re.search(r"\((\d+)\)$", card)[1])  # type: ignore[index]
        capability = (8, 6) if "Ampere" in card else (9, 0) if "H100" in card else (8, 9)
        plan = plan_memory(Card(card, free, capability), Host(64.0), QWEN_IMAGE_WITH_EDIT)
        assert image.startswith(plan.weights.label), (row, plan.summary())
        placement = plan.of(Component.EDIT_TRANSFORMER).placement
        assert ("resident" in edit) == (placement == Placement.RESIDENT), (row, placement)
        assert ram == f"{plan.host_gib:.0f} GiB", (row, plan.host_gib)
    assert "IMAGINE_EDIT_MODEL" in section and "editing is off" in section


# A slow but ordinary link: a first start downloads both models at this rate, then loads them.
FIRST_PULL_MB_PER_S = 50
LOAD_AND_WARM_UP_S = 600


def test_the_health_checks_wait_for_a_first_download_of_both_models() -> None:
    """issue 20 item 13: 900 s covered ~58 GB at best; both models are ~99 GB."""
    text = _quick_start()
    total_gb = int(re.search(r"~(\d+) GB in all", text)[1])  # type: ignore[index]
    needed = total_gb * 1000 / FIRST_PULL_MB_PER_S + LOAD_AND_WARM_UP_S
    for stage in ("bot", "worker"):
        assert _start_period_s(stage) >= needed, (stage, _start_period_s(stage), needed)
