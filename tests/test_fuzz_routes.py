"""Every /v1 route and the webhook route, fed arbitrary JSON and hostile strings (NUL,
lone surrogates, control characters, huge numbers): never a 5xx, and every chat that was
accepted ends final and metered."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import dramatiq
import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.settings import Settings
from devstack.clerk import signed_request
from ingest.app import create_app

from .chat_worker_support import Row
from .support import ServerThread, behind_model

#: Strings a careless or hostile client sends: NUL, lone surrogates, control characters,
#: right-to-left marks, emoji, and plain text.
HOSTILE_CHARS = st.sampled_from(["\x00", "\ud800", "\udfff", "\x07", "\u202e", "\U0001f600", "\n"])
hostile_text = st.lists(st.one_of(HOSTILE_CHARS, st.characters()), max_size=30).map("".join)
huge_numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_infinity=False)
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), huge_numbers, hostile_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=12,
)
chat_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"prompt": hostile_text}),
    st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.one_of(
                            st.sampled_from(["user", "system", "assistant"]), hostile_text
                        ),
                        "content": st.one_of(hostile_text, json_values),
                    }
                ),
                min_size=1,
                max_size=3,
            )
        },
        optional={"max_tokens": huge_numbers, "temperature": huge_numbers, "model": hostile_text},
    ),
)
#: Header and query values: what HTTP can carry at all (latin-1, no line breaks).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
).map(str.strip)
query_text = hostile_text.filter(lambda t: "\ud800" not in t and "\udfff" not in t)

FUZZ = hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    """The real ingest app on loopback."""
    with (
        ServerThread(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=15) as http,
    ):
        yield http


def body_bytes(value: Any) -> bytes:
    # json.dumps writes lone surrogates as \\ud800 escapes and huge floats as they are:
    # exactly what a careless client sends.
    return json.dumps(value).encode()


def no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.method, response.url, response.text)


@FUZZ
@given(
    chat_id=st.one_of(query_text, st.uuids().map(str)),
    last_event_id=header_text,
    limit=query_text,
    before=query_text,
)
def test_reading_routes_never_fail_with_a_server_error(
    client: httpx.Client,
    settings: Settings,
    user_id: str,
    chat_id: str,
    last_event_id: str,
    limit: str,
    before: str,
) -> None:
    user = {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id}
    path_id = f"/v1/chat/{quote(chat_id, safe='')}"
    no_server_error(client.get(path_id, headers=user))
    no_server_error(client.delete(path_id, headers=user))
    no_server_error(
        client.get(
            f"/v1/chat/{uuid.uuid4()}/stream",
            headers=[
                *((k.encode(), v.encode()) for k, v in user.items()),
                (b"last-event-id", last_event_id.encode("latin-1")),
            ],
        )
    )
    no_server_error(
        client.get("/v1/chats", params={"limit": limit, "before": before}, headers=user)
    )
    no_server_error(client.get("/v1/usage", headers=user))


@FUZZ
@given(body=json_values, user=query_text, signed=st.booleans())
def test_the_webhook_and_admin_routes_never_fail_with_a_server_error(
    client: httpx.Client, settings: Settings, body: Any, user: str, signed: bool
) -> None:
    service = {
        "Authorization": f"Bearer {settings.api_keys[0]}",
        "Content-Type": "application/json",
    }
    path = f"/v1/admin/users/{quote(user, safe='')}/profile"
    no_server_error(client.put(path, content=body_bytes(body), headers=service))
    if signed and isinstance(body, dict):
        content, headers = signed_request(settings.clerk_webhook_secret, body, "msg_fuzz")
    else:
        content, headers = body_bytes(body), {"svix-id": "msg_fuzz", "svix-timestamp": "1"}
    no_server_error(client.post("/webhooks/clerk", content=content, headers=headers))


def test_every_fuzzed_chat_that_was_accepted_ends_final_and_metered(
    settings: Settings,
    model_url: str,
    db: psycopg.Connection[Row],
    user_id: str,
) -> None:
    # The chats of a fuzz run of its own, then a real worker drains them all.
    from workers.broker import build_broker

    worker_settings = behind_model(settings, model_url)
    broker = build_broker(worker_settings)
    dramatiq.set_broker(broker)
    broker.flush_all()
    accepted: list[str] = []

    @FUZZ
    @given(body=chat_bodies)
    def post(http: httpx.Client, body: Any) -> None:
        headers = {
            "Authorization": f"Bearer {settings.api_keys[0]}",
            "X-User-Id": user_id,
            "Content-Type": "application/json",
        }
        response = http.post("/v1/chat", content=body_bytes(body), headers=headers)
        no_server_error(response)
        if response.status_code == 202:
            accepted.append(response.json()["id"])

    with (
        ServerThread(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=15) as http,
    ):
        post(http)
        # Some bodies are certain to pass: hostile text in valid places.
        for prompt in ("NUL \x00 inside", "bell \x07 and \u202e flip", "\U0001f600" * 20):
            response = http.post(
                "/v1/chat",
                json={"prompt": prompt},
                headers={"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id},
            )
            assert response.status_code == 202, response.text
            accepted.append(response.json()["id"])
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        broker.join("chat", timeout=120_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    rows = db.execute(
        "SELECT p.id::text AS id, p.status, p.completion, u.id AS usage_id"
        "  FROM prompt_logs p LEFT JOIN token_usage u ON u.prompt_log_id = p.id"
        " WHERE p.id = ANY(%s::uuid[])",
        (accepted,),
    ).fetchall()
    assert {row["id"] for row in rows} == set(accepted)
    for row in rows:
        assert row["status"] in ("ok", "error", "filtered") and row["completion"] is not None, row
        assert row["usage_id"] is not None, row
