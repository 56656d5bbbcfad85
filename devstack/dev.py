"""`aiwrap dev`: the whole stack on one machine, with nothing to configure.

Embedded Postgres and Redis when DATABASE_URL / REDIS_URL are unset, the local
model server when OPENAI_API_KEY is unset, a webhook secret and a service key
generated once and kept under the data folder, then ingest and one worker.
Ctrl-C stops everything this started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from core.migrate import apply_schema

from .embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from .local import dev_secrets, write_dev_env

DEV_REDIS_PORT = 6390
DEV_MODEL_PORT = 8001


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with status {process.returncode} while starting")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def banner(port: int, env: dict[str, str], started: list[str]) -> str:
    base = f"http://127.0.0.1:{port}"
    key = env["AIWRAP_API_KEYS"].split(",")[0]
    venv = Path(sys.prefix) / "bin" / "activate"
    return f"""
aiwrap dev is running ({", ".join(started)}): {base}, model at {
        env.get("OPENAI_BASE_URL") or "OpenAI (OPENAI_API_KEY is set)"
    }.
Paste into another terminal:

  . {venv}
  export DATABASE_URL='{env["DATABASE_URL"]}'
  export REDIS_URL='{env["REDIS_URL"]}'
  export KEY='{key}'
  aiwrap send-webhook user.created user_demo
  curl -s {base}/v1/chat/completions -H "Authorization: Bearer $KEY" \\
       -H 'X-User-Id: user_demo' -H 'Content-Type: application/json' \\
       -d '{{"messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl -N {base}/v1/chat/completions -H "Authorization: Bearer $(aiwrap token user_demo)" \\
       -H 'Content-Type: application/json' \\
       -d '{{"stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'
  psql "$DATABASE_URL" -c 'select id, email from "user"' \\
       -c 'select status, completion from prompt_logs'

Ctrl-C stops everything; `aiwrap dev --reset` starts over with nothing.
"""


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_dev(data_dir: str, port: int, reset: bool = False) -> int:
    """Bring the stack up, print how to use it, and wait for Ctrl-C."""
    root = Path(data_dir).resolve()
    if reset and root.exists():
        shutil.rmtree(root)
        print(f"aiwrap dev: removed {root} (its database, queue and local secrets).", flush=True)
    env = dict(os.environ)
    env.setdefault("AIWRAP_LOG_FORMAT", "console")
    for name, value in dev_secrets(root).items():
        env.setdefault(name, value)
    started: list[str] = []
    children: list[subprocess.Popen[bytes]] = []

    with ExitStack() as stack:
        if not env.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(root / "postgres")
            env["DATABASE_URL"] = postgres.start()
            stack.callback(postgres.stop)
            started.append("embedded Postgres")
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis(root / "redis", port=DEV_REDIS_PORT)
            env["REDIS_URL"] = redis.start()
            stack.callback(redis.stop)
            started.append("embedded Redis")
        report = apply_schema(env["DATABASE_URL"])
        print(report.summary(), flush=True)

        def stop_children() -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(40)
                except subprocess.TimeoutExpired:
                    child.kill()

        stack.callback(stop_children)
        # Ctrl-C reaches the whole process group; SIGTERM is made to mean the same.
        # SIGINT is set explicitly: a shell starting us in the background ignores it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)

        if not env.get("OPENAI_API_KEY"):
            model_port = free_port(DEV_MODEL_PORT)
            model = _spawn(["model-server", "--port", str(model_port)], env)
            children.append(model)
            _wait_http(f"http://127.0.0.1:{model_port}/healthz", model)
            env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{model_port}/v1"
            env["OPENAI_API_KEY"] = "local-model-server"
            started.append("local model server")

        ingest = _spawn(["ingest", "--port", str(port)], env)
        children.append(ingest)
        children.append(_spawn(["worker", "--processes", "1"], env))
        _wait_http(f"http://127.0.0.1:{port}/healthz", ingest)
        write_dev_env(
            root,
            {
                "DATABASE_URL": env["DATABASE_URL"],
                "REDIS_URL": env["REDIS_URL"],
                "AIWRAP_URL": f"http://127.0.0.1:{port}",
            },
        )
        try:
            print(banner(port, env, started or ["your own services"]), flush=True)
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            dead = next(child for child in children if child.poll() is not None)
            print(f"aiwrap dev: {dead.args!r} exited; stopping.", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\naiwrap dev: stopping…", flush=True)
            return 0
