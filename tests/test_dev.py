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


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET}


def aiwrap(*args: str) -> subprocess.CompletedProcess[str]:
    """An `aiwrap` command as a new user types it, nothing exported."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_dev(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    env = clean_env()
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "dev.log").open("a") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "dev",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                *extra,
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
        assert f"export KEY='{secrets['AIWRAP_API_KEYS']}'" in banner
        assert "export DATABASE_URL=" in banner and "bin/activate" in banner
        assert "+ table" not in banner  # the schema in one line, not sixty

        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        # The other commands find the stack from its folder, nothing exported.
        sent = aiwrap("send-webhook", "user.created", "user_dev", "--data-dir", str(data_dir))
        assert sent.returncode == 0 and '"queued"' in sent.stdout, sent.stderr
        budget = aiwrap("budget", "user_dev", "500", "--data-dir", str(data_dir))
        assert budget.returncode == 0 and "monthly_token_budget=500" in budget.stdout, budget.stderr
        token = aiwrap("token", "user_dev", "--data-dir", str(data_dir))
        assert token.returncode == 0, token.stderr
        usage = httpx.get(
            f"http://127.0.0.1:{port}/v1/usage",
            headers={"Authorization": f"Bearer {token.stdout.strip()}"},
            timeout=5,
        )
        assert usage.status_code == 200 and usage.json()["monthly_token_budget"] == 500
    finally:
        status = ctrl_c(process)
    assert status == 0
    eventually(lambda: not descendants_alive(data_dir), 20, "aiwrap dev's processes to stop")

    # A second start reuses the data and the same local secrets.
    process = start_dev(data_dir, port)
    try:
        banner = read_banner(process)
        assert "Schema is up to date" in banner
        assert secrets["AIWRAP_API_KEYS"] in banner
    finally:
        status = ctrl_c(process)
    assert status == 0, (data_dir / "dev.log").read_text()[-4000:]
    eventually(lambda: not descendants_alive(data_dir), 20, "aiwrap dev's processes to stop")

    # --reset starts over: an empty database, new local secrets.
    process = start_dev(data_dir, port, "--reset")
    try:
        banner = read_banner(process)
        assert f"removed {data_dir}" in banner and "created" in banner
        assert secrets["AIWRAP_API_KEYS"] not in banner
    finally:
        status = ctrl_c(process)
    assert status == 0, (data_dir / "dev.log").read_text()[-4000:]
