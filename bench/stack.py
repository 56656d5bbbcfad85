"""What the benchmarks share: the services they start, their processes, and reading
figures off the machine (CPU time, RSS, percentiles) and off the wire (HTTP replies)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

HOST = "127.0.0.1"
SECRET = "whsec_" + "YmVuY2htYXJrIHNlY3JldCBiZW5jaG1hcmsgc2VjcmV0"


@contextmanager
def services(stack: ExitStack) -> Iterator[dict[str, str]]:
    from core.migrate import apply_schema
    from devstack.embedded import EmbeddedPostgres, EmbeddedRedis

    env = dict(os.environ)
    if not (env.get("DATABASE_URL") and env.get("REDIS_URL")):
        root = Path(tempfile.mkdtemp(prefix="aiwrap-bench-"))
        postgres, redis = EmbeddedPostgres(root / "postgres"), EmbeddedRedis(root / "redis")
        env["DATABASE_URL"] = postgres.start()
        stack.callback(postgres.stop)
        env["REDIS_URL"] = redis.start()
        stack.callback(redis.stop)
    apply_schema(env["DATABASE_URL"])
    env.update({"CLERK_WEBHOOK_SECRET": SECRET, "AIWRAP_LOG_FORMAT": "json"})
    yield env


def spawn(stack: ExitStack, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    stack.callback(stop)
    return process


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """A reply with a Content-Length body: its status and body."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    return status_field(pid, "VmRSS") / 1024


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0
