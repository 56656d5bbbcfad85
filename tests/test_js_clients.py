"""The JavaScript clients an app would use, under node, with aiwrap as their base URL:
the openai npm package and the Vercel AI SDK (tests/js, installed by scripts/test from
its lockfile)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.replies import count_tokens, reply_text

from .chat_worker_support import Row
from .test_openai_api import Stack, stack  # noqa: F401 - the fixture

JS = Path(__file__).parent / "js"

# Skipped only outside CI, on a machine without node: scripts/test installs the
# packages, and CI (CI=true) runs these or fails.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI")
    and (shutil.which("node") is None or not (JS / "node_modules").exists()),
    reason="node and tests/js/node_modules (scripts/test installs them)",
)


def run_node(script: str, target: Stack, user_id: str, prompt: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "AIWRAP_BASE_URL": target.url,
        "AIWRAP_KEY": target.settings.api_keys[0],
        "AIWRAP_USER": user_id,
        "AIWRAP_PROMPT": prompt,
    }
    done = subprocess.run(
        ["node", str(JS / script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_openai_npm_package_streams_reads_whole_answers_and_raises_on_errors(
    stack: Stack,  # noqa: F811
    db: psycopg.Connection[Row],
    user_id: str,
) -> None:
    result = run_node("openai_sdk.mjs", stack, user_id, "hello from node")
    assert result["streamed"] == result["whole"] == reply_text("hello from node")
    assert result["usage"]["completion_tokens"] == count_tokens(reply_text("hello from node"))
    assert result["error"] == {"name": "BadRequestError", "status": 400, "param": "bogus_param"}
    row = db.execute(
        "SELECT status, completion FROM prompt_logs WHERE id = %s", (result["chatId"],)
    ).fetchone()
    assert row == {"status": "ok", "completion": reply_text("hello from node")}


def test_the_vercel_ai_sdk_streams_text_with_usage(
    stack: Stack,  # noqa: F811
    user_id: str,
) -> None:
    result = run_node("ai_sdk.mjs", stack, user_id, "hello from the ai sdk")
    assert result["text"] == reply_text("hello from the ai sdk")
    assert result["finishReason"] == "stop"
    completion = count_tokens(reply_text("hello from the ai sdk"))
    assert result["usage"]["outputTokens"] == completion
