"""`aiwrap dev` brings the whole stack up from nothing and stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil

from devstack.embedded import free_port

from .support import eventually

UNSET = (
    "DATABASE_URL",
    "REDIS_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CLERK_WEBHOOK_SECRET",
    "AIWRAP_API_KEYS",
)


def start_dev(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "dev.log").open("a") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "dev",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,  # so Ctrl-C can be sent to its whole group, as a terminal does
        )


def read_banner(process: subprocess.Popen[str], timeout: float = 120) -> str:
    """Collect stdout until the banner's last line, within `timeout`."""
    assert process.stdout is not None
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    return "".join(lines)


def ctrl_c(process: subprocess.Popen[str]) -> int:
    os.killpg(process.pid, signal.SIGINT)
    status = process.wait(60)
    if process.stdout is not None:
        process.stdout.close()
    return status


def descendants_alive(data_dir: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(cmdline)
    return found


def test_dev_starts_everything_answers_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "aiwrap-data"
    port = free_port()
    process = start_dev(data_dir, port)
    try:
        banner = read_banner(process)
        assert "aiwrap dev is running" in banner, (data_dir / "dev.log").read_text()[-3000:]
        assert "embedded Postgres" in banner and "embedded Redis" in banner
        assert "local model server" in banner
        assert f"http://127.0.0.1:{port}" in banner
        secrets = json.loads((data_dir / "dev-secrets.json").read_text())
        assert secrets["CLERK_WEBHOOK_SECRET"] in banner
        assert secrets["AIWRAP_API_KEYS"] in banner

        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
    finally:
        status = ctrl_c(process)
    assert status == 0
    eventually(lambda: not descendants_alive(data_dir), 20, "aiwrap dev's processes to stop")

    # A second start reuses the data and the same local secrets.
    process = start_dev(data_dir, port)
    try:
        banner = read_banner(process)
        assert "Schema is up to date" in banner
        assert secrets["CLERK_WEBHOOK_SECRET"] in banner
    finally:
        status = ctrl_c(process)
    assert status == 0, (data_dir / "dev.log").read_text()[-4000:]
