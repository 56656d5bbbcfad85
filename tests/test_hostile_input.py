"""Hostile and careless input at the edge: a 400 naming the field, never a 500; a clear
401 for the wrong key; a replayed webhook kept off the queue."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from core.settings import Settings
from devstack.clerk import sample_clerk_event, signed_request
from workers.consumer import WakingRedisBroker
from workers.metrics import read_queue_depths

from .chat_support import as_user, assert_error, fake_job


def test_a_lone_surrogate_in_the_prompt_is_400_not_500(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    headers = {**as_user(settings, user_id), "Content-Type": "application/json"}
    response = http.post("/v1/chat", content=b'{"prompt": "hi \\ud800"}', headers=headers)
    assert_error(response, 400, "invalid_request", "prompt:", "surrogate")


@pytest.mark.parametrize(
    "body", [b'{"\\ud800": 1}', b'{"prompt": "x", "\\udfff\\u0000": 1}', b'{"\\ud800": "\\ud800"}']
)
def test_a_field_name_that_is_not_text_is_quoted_in_a_400_that_still_encodes(
    http: httpx.Client, settings: Settings, user_id: str, body: bytes
) -> None:
    # Found by the fuzz test: the message names the field, and the name was a surrogate.
    headers = {**as_user(settings, user_id), "Content-Type": "application/json"}
    response = http.post("/v1/chat", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "\ufffd" in response.json()["error"]["message"]


@pytest.mark.parametrize("limit", ["\u00b2", "9" * 5000, "-1", "1e2", " 5"])
def test_a_limit_that_is_not_ascii_digits_in_range_is_400(
    http: httpx.Client, settings: Settings, user_id: str, limit: str
) -> None:
    response = http.get("/v1/chats", params={"limit": limit}, headers=as_user(settings, user_id))
    assert_error(response, 400, "invalid_request", "limit:")


@pytest.mark.parametrize(
    "payload",
    [b"[" * 3000 + b"]" * 3000, b'["' + b"x" * 40 + b'"]', b"[1, 2]", b'"just a string"'],
)
def test_a_cursor_this_server_did_not_issue_is_400_whatever_it_holds(
    http: httpx.Client, settings: Settings, user_id: str, payload: bytes
) -> None:
    cursor = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    response = http.get("/v1/chats", params={"before": cursor}, headers=as_user(settings, user_id))
    assert_error(response, 400, "invalid_request", "before:")


@pytest.mark.parametrize("event_id", ["99999999999999999999-0", "1-18446744073709551616"])
def test_a_last_event_id_past_64_bits_is_400_before_the_stream_starts(
    http: httpx.Client, settings: Settings, user_id: str, event_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    headers = {**as_user(settings, user_id), "Last-Event-ID": event_id}
    response = http.get(f"/v1/chat/{chat_id}/stream", headers=headers)
    assert_error(response, 400, "invalid_request", "Last-Event-ID")


def test_the_largest_event_id_redis_allows_is_accepted(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    top = f"{2**64 - 1}-{2**64 - 1}"
    with http.stream(
        "GET",
        f"/v1/chat/{chat_id}/stream",
        headers={**as_user(settings, user_id), "Last-Event-ID": top},
    ) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()) == "retry: 1000"


def test_a_wrong_service_key_says_the_key_is_not_valid(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    wrong = {"Authorization": "Bearer aiw_not_one_of_ours_0123456789", "X-User-Id": user_id}
    response = http.get("/v1/usage", headers=wrong)
    assert_error(response, 401, "unauthenticated", "service key is not valid")
    assert "CLERK_JWT_KEY" not in response.json()["error"]["message"]
    # Without X-User-Id, a token that is no JWT is a mistyped key, too.
    response = http.get("/v1/usage", headers={"Authorization": "Bearer aiw_nope_0123456789abc"})
    assert_error(response, 401, "unauthenticated", "not a valid service key")


def test_a_replayed_webhook_is_queued_once(
    http: httpx.Client, settings: Settings, broker: WakingRedisBroker, user_id: str
) -> None:
    broker.flush_all()
    event = sample_clerk_event("user.created", user_id, 1_767_225_600_000)
    svix_id = f"msg_{uuid.uuid4().hex}"
    body, headers = signed_request(settings.clerk_webhook_secret, event, svix_id)
    answers = [http.post("/webhooks/clerk", content=body, headers=headers) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert [a.json()["status"] for a in answers] == ["queued"] + ["duplicate"] * 19
    assert read_queue_depths(broker.client)["identity"] == 1
    # Another delivery (a new svix-id) of the same event is queued: it is Svix's id that
    # says a delivery is the same one.
    body, headers = signed_request(settings.clerk_webhook_secret, event, f"msg_{uuid.uuid4().hex}")
    assert http.post("/webhooks/clerk", content=body, headers=headers).json()["status"] == "queued"
    assert read_queue_depths(broker.client)["identity"] == 2
    broker.flush_all()
