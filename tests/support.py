"""Helpers the tests share."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import psutil
import uvicorn

from core.settings import Settings
from devstack.embedded import free_port

T = TypeVar("T")


class ServerThread:
    """uvicorn serving an ASGI app on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)


def behind_model(settings: Settings, model_url: str) -> Settings:
    """`settings` with the local model server as the worker's OpenAI-compatible endpoint."""
    return replace(settings, openai_base_url=model_url, openai_api_key="test-key")


def aiwrap_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment an `aiwrap` subprocess needs to run with `settings`."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "AIWRAP_LOG_LEVEL": "WARNING",
    }
    if settings.openai_base_url:
        env.update(OPENAI_BASE_URL=settings.openai_base_url, OPENAI_API_KEY="test-key")
    return {**env, **extra}


def aiwrap_worker(
    settings: Settings, *args: str, log: Path | None = None, **extra_env: str
) -> subprocess.Popen[bytes]:
    """Start `aiwrap worker ARGS` as a real subprocess (stderr to `log`, if given)."""
    with log.open("ab") if log else open(os.devnull, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", *args],
            env=aiwrap_env(settings, **extra_env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def eventually(
    condition: Callable[[], T], timeout: float, what: str = "", interval: float = 0.02
) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    The one polling helper of the tests. After `timeout` seconds it returns the last,
    falsy, value, for the caller to assert on; or, given `what`, raises AssertionError
    saying what it waited for.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            if what:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            return value
        time.sleep(interval)
    return value


def worker_processes(supervisor_pid: int) -> set[int]:
    """The live worker processes of an `aiwrap worker` supervisor (not multiprocessing's
    resource tracker, and not one that died while being looked at)."""
    alive = set()
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                alive.add(child.pid)
        except psutil.Error:
            continue
    return alive
