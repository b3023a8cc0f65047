# The two commands a new user runs: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# On machines without an NVIDIA GPU we install the pinned CPU build of torch first, so the
# unpinned `torch` requirement is already satisfied and no multi-GB CUDA build is pulled.
# GPU hosts keep whatever CUDA build pip chooses for them.
TORCH_CPU_SPEC ?= torch==2.13.0

.PHONY: run test lint format venv tiny worker clean chromium screenshots lock

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing the CPU build of torch ($(TORCH_CPU_SPEC))"; \
		$(PY) -m pip install -q "$(TORCH_CPU_SPEC)"; \
	fi
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m bot

worker: $(STAMP)
	$(PY) -m engine.worker

tiny: $(STAMP)
	$(PY) -m engine tiny tiny-model

# Ruff, the import contracts of pyproject.toml ([tool.importlinter]: bot never imports
# torch/diffusers and only the engine's public modules; engine never discord/db/bot; db never
# bot/engine/discord/torch; the bot's layers; no circles), then the type checker ([tool.mypy]).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The fuzz tests (marked `fuzz`: uploads, the gallery's routes) run again after the suite with
# 1,000 generated inputs each (the suite ran 100), within FUZZ_BUDGET_S seconds.
FUZZ_BUDGET_S ?= 240

test: lint chromium
	$(PY) -m pytest
	timeout $(FUZZ_BUDGET_S) $(PY) -m pytest -q -m fuzz --hypothesis-profile=fuzz

# The web gallery's browser tests drive Debian's chromium through Playwright (never a downloaded
# browser): installed here when missing and we are root, else we say what to run.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the gallery's browser tests"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "chromium is missing: run 'sudo apt-get install -y chromium' (the gallery's browser tests need it)"; \
		exit 1; \
	fi

# Regenerate docs/img/*.png (the README's gallery screenshots) from the browser tests.
screenshots: $(STAMP) chromium
	IMAGINE_SCREENSHOTS=docs/img $(PY) -m pytest -q tests/bot/gallery/test_gallery_browser.py -k "thumbnails_that_load or every_parameter"

# constraints.txt: this venv's versions (where `make test` passed) of every package the project
# and its dev extra need, torch and what only torch needs left out (pip picks the torch build
# for each host). Run after changing pyproject.toml, then `make test`.
define LOCK_PY
import importlib.metadata as md, re
from packaging.requirements import Requirement
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
dists = {norm(d.metadata["Name"]): d for d in md.distributions()}
wanted = {}
todo = [("qwen-imagine-bot", {"dev"})]
while todo:
    name, extras = todo.pop()
    for line in dists[name].requires or []:
        req = Requirement(line)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            continue
        key, new = norm(req.name), set(req.extras)
        if key == "torch" or key not in dists or (key in wanted and new <= wanted[key]):
            continue
        wanted[key] = wanted.get(key, set()) | new
        todo.append((key, wanted[key]))
wanted.pop("qwen-imagine-bot", None)
pins = [f"{dists[k].metadata['Name']}=={dists[k].version}" for k in sorted(wanted)]
header = [line for line in open("constraints.txt").read().splitlines() if line.startswith("#")]
open("constraints.txt", "w").write("\n".join(header + pins) + "\n")
print(f"constraints.txt: {len(pins)} pinned packages (torch left to pip)")
endef
export LOCK_PY

lock: $(STAMP)
	$(PY) -c "$$LOCK_PY"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
