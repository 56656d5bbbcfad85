"""POST /webhooks/clerk end to end: signed with the real svix library, row out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest
from svix.webhooks import Webhook

from core.logs import configure_logging
from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE
from core.settings import Settings
from devstack import embedded
from devstack.embedded import EmbeddedRedis
from ingest.app import create_app
from workers.broker import build_broker
from workers.consumer import WakingRedisBroker
from workers.metrics import read_queue_depths

from .clerk_support import T0, Version, delete_event, profile_row, user_event, user_row
from .support import ServerThread, eventually, with_settings


def signed(
    secret: str, body: str | bytes, *, at: datetime | None = None, msg_id: str | None = None
) -> dict[str, str]:
    """Svix headers for `body`, signed with `secret` as Clerk's Svix would."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    text = body if isinstance(body, str) else body.decode()
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, text),
        "content-type": "application/json",
    }


def post_event(http: httpx.Client, secret: str, event: Any, **kw: Any) -> httpx.Response:
    body = json.dumps(event)
    return http.post("/webhooks/clerk", content=body, headers=signed(secret, body, **kw))


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def identity_queue_size(broker: WakingRedisBroker) -> int:
    return read_queue_depths(broker.client)[IDENTITY_QUEUE]


def drain(broker: WakingRedisBroker, worker: dramatiq.Worker) -> None:
    broker.join(IDENTITY_QUEUE, timeout=10_000)
    worker.join()


def test_a_signed_user_created_webhook_becomes_a_user_row_and_profile(
    http: httpx.Client,
    settings: Settings,
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    v = Version(user_id, T0)
    response = post_event(
        http,
        settings.clerk_webhook_secret,
        user_event("user.created", v),
        msg_id="msg_created_" + user_id,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "queued", "svix_id": "msg_created_" + user_id}
    drain(broker, worker)
    assert user_row(db, user_id) == v.row()
    assert profile_row(db, user_id) is not None
    # The svix-id travelled with the job: the worker recorded the delivery.
    assert db.execute(
        "SELECT 1 AS one FROM clerk_deliveries WHERE svix_id = %s", ("msg_created_" + user_id,)
    ).fetchone() == {"one": 1}


def test_a_signed_user_updated_webhook_updates_the_row(
    http: httpx.Client,
    settings: Settings,
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    secret = settings.clerk_webhook_secret
    assert post_event(http, secret, user_event("user.created", Version(user_id, T0))).is_success
    drain(broker, worker)
    newer = Version(user_id, T0 + 60_000, first_name="Grace", email="grace@example.com")
    assert post_event(http, secret, user_event("user.updated", newer)).status_code == 200
    drain(broker, worker)
    assert user_row(db, user_id) == newer.row()


def test_a_signed_user_deleted_webhook_removes_the_user_and_leaves_a_tombstone(
    http: httpx.Client,
    settings: Settings,
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    secret = settings.clerk_webhook_secret
    assert post_event(http, secret, user_event("user.created", Version(user_id, T0))).is_success
    drain(broker, worker)
    assert post_event(http, secret, delete_event(user_id, T0 + 1_000)).status_code == 200
    drain(broker, worker)
    assert user_row(db, user_id) is None
    assert profile_row(db, user_id) is None
    assert db.execute(
        "SELECT 1 AS one FROM user_tombstones WHERE user_id = %s", (user_id,)
    ).fetchone() == {"one": 1}


def test_an_event_type_aiwrap_does_not_handle_is_acknowledged_and_not_queued(
    http: httpx.Client, settings: Settings, broker: WakingRedisBroker
) -> None:
    before = identity_queue_size(broker)
    event = {"type": "session.created", "object": "event", "data": {"id": "sess_1"}}
    response = post_event(http, settings.clerk_webhook_secret, event)
    assert response.status_code == 200
    assert response.json() == {"status": "ignored", "type": "session.created"}
    assert identity_queue_size(broker) == before


def test_several_signatures_are_accepted_when_any_one_is_valid(
    http: httpx.Client, settings: Settings, broker: WakingRedisBroker, user_id: str
) -> None:
    body = json.dumps(user_event("user.created", Version(user_id, T0)))
    headers = signed(settings.clerk_webhook_secret, body)
    old = Webhook("whsec_" + "b2xkIHNlY3JldCBvbGQgc2VjcmV0IG9sZA==")
    at = datetime.fromtimestamp(int(headers["svix-timestamp"]), UTC)
    rotated = old.sign(headers["svix-id"], at, body)
    headers["svix-signature"] = f"{rotated} v2,ignored {headers['svix-signature']}"
    response = http.post("/webhooks/clerk", content=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_a_missing_svix_header_is_a_400_naming_it(
    http: httpx.Client, settings: Settings, missing: str
) -> None:
    body = json.dumps(user_event("user.created", Version("user_x", T0)))
    headers = signed(settings.clerk_webhook_secret, body)
    del headers[missing]
    response = http.post("/webhooks/clerk", content=body, headers=headers)
    assert_error(response, 400, "missing_svix_headers")
    assert missing in response.json()["error"]["message"]


def test_a_body_signed_with_another_secret_is_a_400(http: httpx.Client) -> None:
    other = "whsec_" + "c29tZSBvdGhlciBzZWNyZXQgZW50aXJlbHk="
    response = post_event(http, other, user_event("user.created", Version("user_x", T0)))
    assert_error(response, 400, "bad_signature")


def test_a_body_changed_after_signing_is_a_400(http: httpx.Client, settings: Settings) -> None:
    body = json.dumps(user_event("user.created", Version("user_x", T0)))
    headers = signed(settings.clerk_webhook_secret, body)
    response = http.post("/webhooks/clerk", content=body.replace("Ada", "Eve"), headers=headers)
    assert_error(response, 400, "bad_signature")


@pytest.mark.parametrize(
    ("shift", "code"),
    [(timedelta(minutes=-6), "stale_timestamp"), (timedelta(minutes=6), "future_timestamp")],
)
def test_a_timestamp_outside_five_minutes_is_a_400(
    http: httpx.Client, settings: Settings, shift: timedelta, code: str
) -> None:
    event = user_event("user.created", Version("user_x", T0))
    response = post_event(http, settings.clerk_webhook_secret, event, at=datetime.now(UTC) + shift)
    assert_error(response, 400, code)


def test_a_timestamp_within_five_minutes_is_accepted(
    http: httpx.Client, settings: Settings, broker: WakingRedisBroker, user_id: str
) -> None:
    event = user_event("user.created", Version(user_id, T0))
    response = post_event(
        http, settings.clerk_webhook_secret, event, at=datetime.now(UTC) - timedelta(minutes=4)
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("svix-signature", "v1"),  # no comma: svix raises ValueError, not its own error
        ("svix-signature", "v1,a,b"),
        ("svix-signature", "v1,@@@notbase64"),
        ("svix-timestamp", "yesterday"),
    ],
)
def test_a_malformed_svix_header_is_a_400_not_a_500(
    http: httpx.Client, settings: Settings, header: str, value: str
) -> None:
    body = json.dumps(user_event("user.created", Version("user_x", T0)))
    headers = {**signed(settings.clerk_webhook_secret, body), header: value}
    response = http.post("/webhooks/clerk", content=body, headers=headers)
    assert_error(response, 400, "malformed_svix_headers")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_a_clerk_event"),
        ('{"type": "user.created"}', "not_a_clerk_event"),
        ('{"type": 7, "data": {}}', "not_a_clerk_event"),
    ],
)
def test_a_signed_body_that_is_not_a_clerk_event_is_a_400(
    http: httpx.Client, settings: Settings, body: str, code: str
) -> None:
    response = http.post(
        "/webhooks/clerk", content=body, headers=signed(settings.clerk_webhook_secret, body)
    )
    assert_error(response, 400, code)


def test_a_body_that_is_not_utf8_is_a_400(http: httpx.Client, settings: Settings) -> None:
    headers = signed(settings.clerk_webhook_secret, "x")
    response = http.post("/webhooks/clerk", content=b"\xff\xfe{}", headers=headers)
    assert_error(response, 400, "invalid_body")


def test_a_body_over_one_mebibyte_is_a_413(http: httpx.Client, settings: Settings) -> None:
    event = user_event("user.created", Version("user_x", T0))
    event["data"]["public_metadata"] = {"blob": "x" * 1_048_576}
    response = post_event(http, settings.clerk_webhook_secret, event)
    assert_error(response, 413, "body_too_large")


def test_without_a_secret_the_webhook_is_a_500_with_a_log_line_saying_so(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "INFO")
    with ServerThread(create_app(with_settings(settings, clerk_webhook_secret=""))) as server:
        body = json.dumps(user_event("user.created", Version("user_x", T0)))
        response = httpx.post(
            f"{server.url}/webhooks/clerk",
            content=body,
            headers=signed(settings.clerk_webhook_secret, body),
            timeout=10,
        )
    assert_error(response, 500, "webhook_secret_missing")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    assert any(
        line.get("event") == "clerk_webhook_secret_missing"
        and line.get("logger") == "ingest.webhooks"
        and "CLERK_WEBHOOK_SECRET" in line["detail"]
        for line in lines
    ), lines


def test_with_redis_stopped_the_webhook_is_a_503_and_nothing_is_lost_once_it_is_back(
    settings: Settings,
    private_redis: EmbeddedRedis,
    db: psycopg.Connection[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Restart on the same port: free_port() cannot bind a port whose old
    # connections are in TIME_WAIT, but redis-server (SO_REUSEADDR) can.
    monkeypatch.setattr(embedded, "free_port", lambda preferred=0: preferred)
    private = with_settings(settings, redis_url=private_redis.url)
    secret = settings.clerk_webhook_secret
    before = Version(f"user_{uuid.uuid4().hex[:24]}", T0)
    during = Version(f"user_{uuid.uuid4().hex[:24]}", T0)
    with (
        ServerThread(create_app(private)) as server,
        httpx.Client(base_url=server.url, timeout=15) as http,
    ):
        # Accepted before the outage, with no worker running yet.
        assert post_event(http, secret, user_event("user.created", before)).status_code == 200
        private_redis.stop()
        body = json.dumps(user_event("user.created", during))
        headers = signed(secret, body)
        response = http.post("/webhooks/clerk", content=body, headers=headers)
        assert_error(response, 503, "queue_unavailable")
        assert response.headers["retry-after"]
        private_redis.start()

        # Svix retries the same delivery until it is accepted.
        def accepted() -> bool:
            retried = http.post("/webhooks/clerk", content=body, headers=headers)
            assert retried.status_code in (200, 503), retried.text
            return retried.status_code == 200

        eventually(accepted, 15, "the retried delivery to be accepted", interval=0.1)
    broker = build_broker(private)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        drain(broker, worker)
    finally:
        worker.stop()
        broker.close()
    assert user_row(db, before.user_id) == before.row()
    assert user_row(db, during.user_id) == during.row()


def test_the_actor_name_ingest_sends_to_is_the_identity_actor(broker: WakingRedisBroker) -> None:
    assert broker.get_actor(APPLY_CLERK_EVENT).queue_name == IDENTITY_QUEUE


def test_aiwrap_send_webhook_signs_a_sample_event_that_the_worker_applies(
    ingest_url: str,
    settings: Settings,
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    env = {**os.environ, "CLERK_WEBHOOK_SECRET": settings.clerk_webhook_secret}
    for event_type in ("user.created", "user.updated"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "send-webhook",
                "--url",
                f"{ingest_url}/webhooks/clerk",
                event_type,
                user_id,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("200 "), done.stdout
        drain(broker, worker)
    row = user_row(db, user_id)
    assert row is not None and row["email"] == f"{user_id}@example.com"
