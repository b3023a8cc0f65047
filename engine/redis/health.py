"""A worker's liveness for its supervisor: a file rewritten at every heartbeat, and the check.

Docker runs ``python -m engine.worker --healthcheck`` inside the worker's container (see the
Dockerfile's worker stage). The worker process rewrites a small file each time its heartbeat
reached Redis; the check passes while that file is fresher than three heartbeats, the same
silence after which the bot counts the worker as gone. A worker that hangs, lost Redis, or
stopped writes nothing more and turns unhealthy; one that exits removes the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from engine.redis.settings import RemoteSettings

logger = logging.getLogger(__name__)

# A heartbeat older than this many periods means the worker is gone (as the bot sees it).
MISSED_BEATS = 3


def health_file_path(settings: RemoteSettings, name: str) -> Path:
    """``IMAGINE_WORKER_HEALTH_FILE``, else ``imagine-worker-<name>.alive`` in the temp dir."""
    if settings.worker_health_file is not None:
        return settings.worker_health_file
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "worker"
    return Path(tempfile.gettempdir()) / f"imagine-worker-{safe}.alive"


def write_health(path: Path, name: str, state: str) -> None:
    """Replace the file atomically, so the check never reads half of it."""
    body = json.dumps({"name": name, "state": state, "pid": os.getpid(), "at": time.time()})
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(body)
    partial.replace(path)


def remove_health(path: Path) -> None:
    """A worker that stops is unhealthy at once, not three heartbeats later."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove the health file %s: %s", path, exc)


def check_health(path: Path, heartbeat_s: float) -> tuple[bool, str]:
    """Whether the worker that writes ``path`` is alive, and a line that says why."""
    limit = MISSED_BEATS * heartbeat_s
    try:
        data = json.loads(path.read_text())
        at = float(data["at"])
        name = str(data.get("name", "?"))
        state = str(data.get("state", "?"))
    except FileNotFoundError:
        return False, f"unhealthy: no heartbeat file at {path} (the worker is not running)"
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return False, f"unhealthy: unreadable heartbeat file {path} ({type(exc).__name__})"
    age = time.time() - at
    if age > limit:
        return False, (
            f"unhealthy: worker {name} ({state}): last heartbeat {age:.0f}s ago (limit {limit:g}s)"
        )
    return True, f"healthy: worker {name} ({state}), last heartbeat {age:.1f}s ago"
