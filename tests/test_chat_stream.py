"""GET /v1/chat/{id}/stream, the route alone: the tests write the chat's Redis stream
themselves with core.streams."""

from __future__ import annotations

import threading

import httpx
import pytest
import redis as redis_lib

from core import streams
from core.settings import Settings
from ingest import relay

from .chat_support import (
    Db,
    Sse,
    add_exchange,
    as_user,
    assert_error,
    fake_job,
    finish,
    publish,
    read_sse,
    run,
    stream_order,
)
from .support import eventually
from .test_auth import ClerkSigner


def test_a_late_client_gets_the_whole_answer_and_the_stream_closes(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    ids = publish(settings, chat_id, "Hel", "lo", " world")
    ids.append(finish(settings, chat_id))
    sse = read_sse(http, f"/v1/chat/{chat_id}/stream", as_user(settings, user_id))
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert "no-cache" in sse.headers["cache-control"]
    assert sse.headers["x-accel-buffering"] == "no"
    assert sse.retry == "1000"
    assert [e["id"] for e in sse.events] == ids
    assert [e["event"] for e in sse.events] == ["delta", "delta", "delta", "done"]
    assert sse.text == "Hello world"
    assert sse.events[-1]["data"] == {
        "status": "ok",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cost_microcents": 165,
    }


def test_resuming_with_last_event_id_has_no_gap_and_no_repeat(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    pieces = [f"p{i} " for i in range(10)]
    publish(settings, chat_id, *pieces)
    finish(settings, chat_id)
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    first = read_sse(http, path, headers, stop_after=4)
    resumed = read_sse(http, path, {**headers, "Last-Event-ID": first.events[-1]["id"]})
    seen = first.events + resumed.events
    assert [e["id"] for e in seen] == sorted({e["id"] for e in seen}, key=stream_order)
    assert first.text + resumed.text == "".join(pieces)
    assert seen[-1]["event"] == "done" and len(seen) == 11
    # Clients that cannot set headers resume with the query parameter.
    by_query = read_sse(http, f"{path}?last_event_id={first.events[-1]['id']}", headers)
    assert by_query.events == resumed.events


def test_a_live_stream_relays_events_as_they_are_published(
    http: httpx.Client,
    settings: Settings,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "KEEPALIVE_MS", 100)
    chat_id = fake_job(settings, user_id)
    result: dict[str, Sse] = {}
    waiting = threading.Event()
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    reader = threading.Thread(
        target=lambda: result.setdefault("sse", read_sse(http, path, headers, on_comment=waiting))
    )
    reader.start()
    # Nothing is published until the idle stream has sent a keepalive.
    assert waiting.wait(10)
    publish(settings, chat_id, "one ", "two")
    finish(settings, chat_id)
    reader.join(15)
    assert not reader.is_alive()
    sse = result["sse"]
    assert sse.text == "one two"
    assert "keepalive" in sse.comments
    assert sse.events[-1]["event"] == "done"


def test_a_client_that_goes_away_frees_its_blocked_redis_read(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    def blocked_readers() -> int:
        return sum("b" in client["flags"] for client in redis.client_list())

    def wait_for(count: int) -> None:
        eventually(lambda: blocked_readers() == count, 10, f"{count} blocked readers")

    baseline = blocked_readers()
    chat_id = fake_job(settings, user_id)
    path = f"/v1/chat/{chat_id}/stream"
    with http.stream("GET", path, headers=as_user(settings, user_id)) as response:
        lines = response.iter_lines()  # kept: dropping it would close the connection
        assert next(lines) == "retry: 1000"
        wait_for(baseline + 1)
    wait_for(baseline)


def test_a_failed_chat_streams_its_error_event(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    publish(settings, chat_id, "part")
    run(
        lambda r: streams.finish(
            r, chat_id, "error", {"code": "upstream_error", "message": "boom"}, "error", 60
        ),
        settings.redis_url,
    )
    sse = read_sse(http, f"/v1/chat/{chat_id}/stream", as_user(settings, user_id))
    assert [e["event"] for e in sse.events] == ["delta", "error"]
    assert sse.events[-1]["data"] == {"code": "upstream_error", "message": "boom"}


def test_a_malformed_last_event_id_is_400(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    headers = {**as_user(settings, user_id), "Last-Event-ID": "yesterday"}
    response = http.get(f"/v1/chat/{chat_id}/stream", headers=headers)
    assert_error(response, 400, "invalid_request", "Last-Event-ID")


def test_after_the_stream_expired_the_answer_is_replayed_from_postgres(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion="Stored answer.", tokens=(3, 3), cost=225)
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    sse = read_sse(http, path, headers)
    assert [e["event"] for e in sse.events] == ["delta", "done"]
    assert sse.text == "Stored answer."
    assert sse.events[-1]["data"]["cost_microcents"] == 225
    resumed = read_sse(http, path, {**headers, "Last-Event-ID": sse.events[0]["id"]})
    assert [e["event"] for e in resumed.events] == ["done"]


def test_a_client_resuming_at_the_terminal_event_gets_204_and_no_stream(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    # EventSource reconnects after every stream that closes, with the last id it got:
    # at the end, that must not open a stream that only sends keepalives.
    chat_id = fake_job(settings, user_id)
    [delta] = publish(settings, chat_id, "Hello")
    done = finish(settings, chat_id)
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    for at_or_past in (done, f"{stream_order(done)[0]}-{stream_order(done)[1] + 1}"):
        response = http.get(path, headers={**headers, "Last-Event-ID": at_or_past}, timeout=5)
        assert response.status_code == 204 and response.content == b""
    resumed = read_sse(http, path, {**headers, "Last-Event-ID": delta})
    assert [e["event"] for e in resumed.events] == ["done"]  # before the end: the rest
    # The same once the stream has expired and the answer is replayed from Postgres.
    stored = add_exchange(db, user_id, completion="Stored answer.")
    replayed = read_sse(http, f"/v1/chat/{stored}/stream", headers)
    end = replayed.events[-1]["id"]
    again = http.get(f"/v1/chat/{stored}/stream", headers={**headers, "Last-Event-ID": end})
    assert again.status_code == 204


def test_a_browser_eventsource_may_authenticate_with_the_session_cookie(
    api: httpx.Client, clerk: ClerkSigner, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    publish(settings, chat_id, "hi")
    finish(settings, chat_id)
    cookie = {"Cookie": f"__session={clerk.token(user_id)}"}
    sse = read_sse(api, f"/v1/chat/{chat_id}/stream", cookie)
    assert sse.text == "hi"
    # Only the stream, a read: a cookie never authorises a chat (no cross-site forgery).
    assert_error(api.post("/v1/chat", json={"prompt": "x"}, headers=cookie), 401, "unauthenticated")
