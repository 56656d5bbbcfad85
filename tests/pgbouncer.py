"""A real PgBouncer, in transaction mode, in front of the test Postgres.

Production runs aiwrap behind Neon's pooled endpoint, which is PgBouncer in
`pool_mode = transaction`: every transaction may land on a different server
connection. `PgBouncer` reproduces that with the Debian package (`.ci/run`
installs it) and a deliberately small server pool, so tests that pass through
it prove aiwrap never relies on session state.

Use the session fixtures from conftest (`from .pgbouncer import pgbouncer,
pgbouncer_url`), or `with PgBouncer(database_url) as bouncer:` for one a test
may stop and start.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from devstack.embedded import free_port

#: Where Debian puts the binary; /usr/sbin is often missing from a non-root PATH.
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/local/bin"]
)

#: A system user to run as when we are root and no better one exists.
FALLBACK_USER = "aiwrap-pgbouncer"

NOT_INSTALLED = (
    "pgbouncer is not installed, and the PgBouncer tests need a real one. "
    ".ci/run installs it (scripts/setup --test: apt-get install pgbouncer); "
    "on Debian or Ubuntu run `sudo apt-get install pgbouncer`."
)


class PgBouncerNotInstalled(RuntimeError):
    """No pgbouncer executable was found."""


class PgBouncer:
    """A pgbouncer process on a free loopback port, in front of `upstream_url`.

    Clients log in with the upstream's user name and any database name (no
    password: auth_type trust, loopback only); pgbouncer logs in to Postgres
    with the upstream URL's credentials. `stop()` and `start()` simulate a
    pooler restart: the port, and so `url`, stay the same.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        pool_size: int = 2,
        max_client_conn: int = 200,
        pool_mode: str = "transaction",
        search_path: str = SEARCH_PATH,
    ) -> None:
        self.upstream = conninfo_to_dict(upstream_url)
        self.user = str(self.upstream.get("user") or "postgres")
        self.dbname = str(self.upstream.get("dbname") or self.user)
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.pool_mode = pool_mode
        self.executable = shutil.which("pgbouncer", path=search_path)
        self.port = 0
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A postgresql:// URL of the upstream's database, through pgbouncer."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        """A URL of another database on the same server, through pgbouncer."""
        return f"postgresql://{quote(self.user)}@127.0.0.1:{self.port}/{quote(dbname)}"

    @property
    def admin_url(self) -> str:
        """pgbouncer's admin console (SHOW POOLS, SHOW SERVERS, ...)."""
        return self.url_for("pgbouncer")

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("PgBouncer has not been started.")
        return self.workdir / "pgbouncer.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def start(self, timeout: float = 15.0) -> str:
        """Start pgbouncer (again, on the same port); return its URL once it answers."""
        if self.executable is None:
            raise PgBouncerNotInstalled(NOT_INSTALLED)
        if self.running:
            return self.url
        run_as = _user_to_run_as(self.upstream.get("host"))
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="aiwrap-pgbouncer-"))
            if run_as is not None:
                os.chown(self.workdir, *run_as)
        self.port = self.port or free_port()
        config = self.workdir / "pgbouncer.ini"
        config.write_text(self._config())
        (self.workdir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        for path in self.workdir.iterdir():
            if run_as is not None:
                os.chown(path, *run_as)
        # pgbouncer refuses to run as root, so as root we drop to another user.
        privileges = (
            {} if run_as is None else {"user": run_as[0], "group": run_as[1], "extra_groups": []}
        )
        self._process = subprocess.Popen(
            [self.executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
            **privileges,
        )
        self._wait_until_ready(timeout)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Shut pgbouncer down at once (SIGTERM): every client and server connection drops."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except (OSError, RuntimeError):
            return "(no log)"

    def _config(self) -> str:
        assert self.workdir is not None
        upstream = {
            key: self.upstream[key]
            for key in ("host", "port", "user", "password")
            if self.upstream.get(key)
        }
        upstream.setdefault("user", self.user)
        connstring = " ".join(f"{key}='{value}'" for key, value in upstream.items())
        return "\n".join(
            [
                "[databases]",
                # Any database name a client asks for, on the upstream server.
                f"* = {connstring}",
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.workdir / 'userlist.txt'}",
                f"admin_users = {self.user}",
                f"pool_mode = {self.pool_mode}",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                f"max_client_conn = {self.max_client_conn}",
                # The default, stated because tests rely on it: the most recently
                # released server connection is handed out next (LIFO).
                "server_round_robin = 0",
                f"logfile = {self.workdir / 'pgbouncer.log'}",
                f"pidfile = {self.workdir / 'pgbouncer.pid'}",
                "",
            ]
        )

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with status {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                with psycopg.connect(self.url, connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                error = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"pgbouncer did not answer on 127.0.0.1:{self.port} in {timeout} s ({error}):\n"
            f"{self.log_tail()}"
        )


def _user_to_run_as(socket_dir: object) -> tuple[int, int] | None:
    """(uid, gid) for pgbouncer when we are root; None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    # Whoever owns Postgres's socket directory can reach the socket in it
    # (pgserver makes that directory 0700 and runs Postgres as `pgserver`).
    if isinstance(socket_dir, str) and socket_dir.startswith("/") and os.path.isdir(socket_dir):
        owner = os.stat(socket_dir)
        if owner.st_uid != 0:
            return owner.st_uid, owner.st_gid
    for name in ("postgres", "pgserver", FALLBACK_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(FALLBACK_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def pgbouncer(migrated: str) -> Iterator[PgBouncer]:
    """One PgBouncer for the session: transaction mode, 2 server connections, schema applied.

    Fails, never skips, when pgbouncer is missing: a suite that silently drops
    its PgBouncer run would prove nothing about production.
    """
    bouncer = PgBouncer(migrated)
    if bouncer.executable is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    with bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def pgbouncer_url(pgbouncer: PgBouncer) -> str:
    """DATABASE_URL through the session's PgBouncer."""
    return pgbouncer.url
