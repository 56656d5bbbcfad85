"""The /v1 routes end to end, with the real chat worker and the local model server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dramatiq
import httpx
import pytest

from core.settings import Settings
from devstack.model_server import running_model_server
from ingest.app import create_app
from workers.broker import build_broker
from workers.consumer import WakingRedisBroker

from .chat_support import (
    Db,
    as_service,
    as_user,
    assert_error,
    read_sse,
    stream_order,
)
from .support import ServerThread, with_settings


@dataclass
class Stack:
    """Ingest, a chat worker and the model server, all real, on loopback."""

    http: httpx.Client
    broker: WakingRedisBroker
    worker: dramatiq.Worker

    def settle(self) -> None:
        self.broker.join("chat", timeout=30_000)
        self.worker.join()


@pytest.fixture
def stack(settings: Settings) -> Iterator[Stack]:
    with running_model_server() as model_url:
        live = with_settings(settings, openai_base_url=model_url)
        broker = build_broker(live)
        dramatiq.set_broker(broker)
        broker.flush_all()
        worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
        worker.start()
        try:
            with (
                ServerThread(create_app(live)) as server,
                httpx.Client(base_url=server.url, timeout=15) as client,
            ):
                yield Stack(client, broker, worker)
        finally:
            worker.stop()
            broker.close()


def test_a_chat_streams_end_to_end_and_is_logged_metered_and_listed(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    created = stack.http.post("/v1/chat", json={"prompt": "hi [[words=6]]"}, headers=headers)
    assert created.status_code == 202, created.text
    sse = read_sse(stack.http, created.json()["stream_url"], headers)
    assert sse.text.startswith("You said: hi.")
    done = sse.events[-1]
    assert done["event"] == "done"
    assert done["data"]["status"] == "ok" and done["data"]["finish_reason"] == "stop"
    assert done["data"]["cost_microcents"] == (
        15 * done["data"]["prompt_tokens"] + 60 * done["data"]["completion_tokens"]
    )
    stack.settle()
    exchange = stack.http.get(created.json()["url"], headers=headers).json()
    assert exchange["status"] == "ok"
    assert exchange["completion"] == sse.text
    assert exchange["cost_microcents"] == done["data"]["cost_microcents"]
    usage = stack.http.get("/v1/usage", headers=headers).json()
    tokens = done["data"]["prompt_tokens"] + done["data"]["completion_tokens"]
    assert usage["tokens_used"] == tokens
    history = stack.http.get("/v1/chats", headers=headers).json()
    assert [item["id"] for item in history["items"]] == [created.json()["id"]]


def test_a_reader_that_reconnects_mid_stream_misses_and_repeats_nothing(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    prompt = {"prompt": "resume me [[words=30 delay_ms=15]]"}
    created = stack.http.post("/v1/chat", json=prompt, headers=headers).json()
    first = read_sse(stack.http, created["stream_url"], headers, stop_after=5)
    rest = read_sse(
        stack.http, created["stream_url"], {**headers, "Last-Event-ID": first.events[-1]["id"]}
    )
    ids = [e["id"] for e in first.events + rest.events]
    assert len(ids) == len(set(ids)) and ids == sorted(ids, key=stream_order)
    assert rest.events[-1]["event"] == "done"
    stack.settle()
    exchange = stack.http.get(created["url"], headers=headers).json()
    assert first.text + rest.text == exchange["completion"]


def test_cancel_stops_the_chat_and_the_partial_exchange_is_logged_and_metered(
    stack: Stack, settings: Settings, db: Db, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    prompt = {"prompt": "long [[words=400 delay_ms=20]]"}
    created = stack.http.post("/v1/chat", json=prompt, headers=headers).json()
    first = read_sse(stack.http, created["stream_url"], headers, stop_after=2)
    cancelled = stack.http.delete(created["url"], headers=headers)
    assert cancelled.status_code == 202, cancelled.text
    rest = read_sse(
        stack.http, created["stream_url"], {**headers, "Last-Event-ID": first.events[-1]["id"]}
    )
    assert rest.events[-1]["event"] == "error"
    assert rest.events[-1]["data"]["code"] == "cancelled"
    stack.settle()
    exchange = stack.http.get(created["url"], headers=headers).json()
    assert exchange["status"] == "error"
    assert exchange["completion"] == first.text + rest.text
    assert len(exchange["completion"].split()) < 400
    metered = db.execute(
        "SELECT count(*) AS n FROM token_usage WHERE prompt_log_id = %s", (created["id"],)
    ).fetchone()
    assert metered == {"n": 1}
    assert_error(stack.http.delete(created["url"], headers=headers), 409, "already_finished")


def test_a_user_who_used_up_their_budget_is_refused_at_the_door(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    stack.http.put(
        f"/v1/admin/users/{user_id}/profile",
        json={"monthly_token_budget": 5},
        headers=as_service(settings),
    )
    created = stack.http.post("/v1/chat", json={"prompt": "spend it"}, headers=headers)
    assert created.status_code == 202
    assert read_sse(stack.http, created.json()["stream_url"], headers).events[-1]["event"] == "done"
    stack.settle()
    assert_error(
        stack.http.post("/v1/chat", json={"prompt": "more"}, headers=headers),
        402,
        "budget_exceeded",
    )
