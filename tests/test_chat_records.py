"""GET /v1/chat/{id} and DELETE: a chat as recorded, only to its owner, and cancelling it."""

from __future__ import annotations

import uuid

import httpx
import redis as redis_lib

from core import streams
from core.settings import Settings

from .chat_support import (
    Db,
    add_exchange,
    as_user,
    assert_error,
    other_user,
)


def test_a_queued_chat_is_read_from_its_job_record(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = http.post(
        "/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id)
    ).json()["id"]
    body = http.get(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id)).json()
    assert body["id"] == chat_id
    assert body["status"] == "queued"
    assert body["model"] == "gpt-4o-mini"
    assert body["completion"] is None


def test_a_recorded_chat_is_read_from_prompt_logs_with_its_cost(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion="Hello there.", tokens=(3, 4), cost=285)
    body = http.get(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id)).json()
    assert body["status"] == "ok"
    assert body["prompt"] == "hi" and body["completion"] == "Hello there."
    assert (body["prompt_tokens"], body["completion_tokens"]) == (3, 4)
    assert body["cost_microcents"] == 285
    assert body["latency_ms"] == 12
    assert body["finish_reason"] == "stop"
    assert body["created_at"].endswith("Z")


def test_an_in_flight_row_reads_as_running(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion=None, metadata={"state": "running"}, cost=None)
    body = http.get(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id)).json()
    assert body["status"] == "running"
    assert body["cost_microcents"] == 0


def test_nobody_sees_another_users_chat(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    recorded = add_exchange(db, user_id)
    queued = http.post(
        "/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id)
    ).json()["id"]
    stranger = as_user(settings, other_user())
    for chat_id in (recorded, queued, str(uuid.uuid4()), "not-a-uuid"):
        assert_error(http.get(f"/v1/chat/{chat_id}", headers=stranger), 404, "not_found")
        assert_error(http.delete(f"/v1/chat/{chat_id}", headers=stranger), 404, "not_found")
        stream = http.get(f"/v1/chat/{chat_id}/stream", headers=stranger)
        assert_error(stream, 404, "not_found")


def test_cancelling_sets_the_flag_and_tells_the_workers(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    chat_id = http.post("/v1/chat", json={"prompt": "hi"}, headers=headers).json()["id"]
    pubsub = redis.pubsub()
    pubsub.subscribe(streams.CANCEL_CHANNEL)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        response = http.delete(f"/v1/chat/{chat_id}", headers=headers)
        assert response.status_code == 202, response.text
        assert response.json() == {"id": chat_id, "status": "cancelling"}
        assert redis.get(streams.cancel_key(chat_id)) == b"1"
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == chat_id.encode()
    finally:
        pubsub.close()


def test_cancelling_a_finished_chat_is_409(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id)
    response = http.delete(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id))
    assert_error(response, 409, "already_finished", "ok")
    assert not redis.exists(streams.cancel_key(chat_id))
