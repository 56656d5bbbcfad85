"""A real headless Chromium (Debian's `chromium`, installed by scripts/test) loads a page
from another origin that streams a completion from aiwrap with fetch, authenticated by
a Clerk session token: CORS, the token path and the stream, as a browser does them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import dramatiq
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from core.settings import Settings
from devstack.replies import reply_text
from devstack.tokens import new_key_pair, session_token
from ingest.app import create_app
from workers.broker import build_broker

from .support import ServerThread, behind_model, eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and CHROMIUM is None,
    reason="Debian's chromium (scripts/test installs it; CI runs this or fails)",
)

PAGE = """<!doctype html>
<script>
const params = new URLSearchParams(location.search);
(async () => {
  const response = await fetch(params.get("api") + "/v1/chat/completions", {
    method: "POST",
    headers: {"Authorization": "Bearer " + params.get("token"), "Content-Type": "application/json"},
    body: JSON.stringify({model: "gpt-4o-mini", stream: true,
                          messages: [{role: "user", content: "from the browser"}]}),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "", buffer = "", done = false;
  while (!done) {
    const read = await reader.read();
    done = read.done;
    buffer += decoder.decode(read.value || new Uint8Array(), {stream: !done});
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("data: ") && event !== "data: [DONE]") {
        const chunk = JSON.parse(event.slice(6));
        text += (chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content) || "";
      }
    }
  }
  return {status: response.status, text, chatId: response.headers.get("X-Chat-Id")};
})().catch((e) => ({error: String(e)})).then((result) =>
  // Back to the page's own server (same origin), where the test waits for it.
  fetch("/result", {method: "POST", body: JSON.stringify(result)}));
</script>
"""


def test_a_page_from_another_origin_streams_a_completion_with_fetch(
    settings: Settings, model_url: str, tmp_path: Path, user_id: str
) -> None:
    assert CHROMIUM is not None, "chromium is not installed"
    private, public = new_key_pair()
    broker = build_broker(behind_model(settings, model_url))
    dramatiq.set_broker(broker)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    results: list[dict[str, object]] = []

    async def result(request: Request) -> Response:
        results.append(json.loads(await request.body()))
        return Response(status_code=204)

    page_app = Starlette(
        routes=[
            Route("/", lambda _request: HTMLResponse(PAGE)),
            Route("/result", result, methods=["POST"]),
        ]
    )
    try:
        with ServerThread(page_app) as page:
            browser_settings = replace(settings, clerk_jwt_key=public, cors_origins=(page.url,))
            with ServerThread(create_app(browser_settings)) as api:
                url = f"{page.url}/?api={api.url}&token={session_token(private, user_id)}"
                browser = subprocess.Popen(
                    [
                        CHROMIUM,
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--no-first-run",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}",
                        url,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    eventually(lambda: results, 60, "the page to report what it streamed")
                finally:
                    browser.kill()
                    browser.wait(10)
    finally:
        worker.stop()
        broker.close()
    [outcome] = results
    assert outcome.get("error") is None, outcome
    assert outcome["status"] == 200
    assert outcome["text"] == reply_text("from the browser")
    assert outcome["chatId"]  # exposed to the page by CORS
