"""Logs are structlog JSON, libraries included, and never carry a secret."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import structlog

from core.logs import configure_logging, get_logger
from core.settings import Settings
from ingest.app import create_app

from .support import ServerThread

SECRETS = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    "sk-proj-abcdefghijklmnop",
    "aiw_dev_0123456789abcdef",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyXzEyMyJ9.c2lnbmF0dXJl",
]


@pytest.fixture
def json_logs() -> None:
    configure_logging("json", "INFO")


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_our_lines_are_json_with_bound_context(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        get_logger("aiwrap.test").info("something_happened", count=3)
    [line] = lines(capsys.readouterr().err)
    assert line["event"] == "something_happened"
    assert line["request_id"] == "req-1"
    assert line["count"] == 3
    assert line["level"] == "info"


def test_library_lines_go_through_the_same_renderer(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with structlog.contextvars.bound_contextvars(message_id="m-1"):
        logging.getLogger("dramatiq.worker.Worker").warning("Consumer %s stopped.", "identity")
    [line] = lines(capsys.readouterr().err)
    assert line["event"] == "Consumer identity stopped."
    assert line["logger"] == "dramatiq.worker.Worker"
    assert line["message_id"] == "m-1"


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_never_reach_the_output(
    json_logs: None, capsys: pytest.CaptureFixture[str], secret: str
) -> None:
    log = get_logger("aiwrap.test")
    log.info("header_seen", authorization=f"Bearer {secret}")
    log.info(f"a message that quotes {secret} inline")
    log.info("event_body", data={"private_metadata": {"plan": "pro"}, "note": secret})
    logging.getLogger("uvicorn.error").info("client said %s", secret)
    output = capsys.readouterr().err
    assert secret not in output
    assert "pro" not in output
    assert output.count("[redacted]") >= 4


def test_database_url_passwords_are_redacted(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    get_logger("aiwrap.test").info("connecting", url="postgresql://app:hunter2@db:5432/app")
    output = capsys.readouterr().err
    assert "hunter2" not in output
    assert "db:5432/app" in output


def test_ingest_writes_one_line_per_request_carrying_its_id(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        given = client.get("/healthz", headers={"x-request-id": "req-from-caller"})
        generated = client.get("/healthz")
        missing = client.get("/no/such/route?token=sk-abcdefghijklmnop")
    assert given.headers["x-request-id"] == "req-from-caller"
    assert generated.headers["x-request-id"] not in ("", "req-from-caller")
    # Written in batches, one write per event-loop turn: all there once the server stopped.
    requests = [line for line in lines(capsys.readouterr().err) if line["event"] == "request"]
    assert [(line["request_id"], line["path"], line["status"]) for line in requests] == [
        ("req-from-caller", "/healthz", 200),
        (generated.headers["x-request-id"], "/healthz", 200),
        (missing.headers["x-request-id"], "/no/such/route", 404),
    ]
    for line in requests:
        assert line["logger"] == "ingest"
        assert line["level"] == "info"
        assert line["method"] == "GET"
        assert isinstance(line["duration_ms"], float)
        assert line["timestamp"].endswith("Z")


def test_a_processor_added_to_the_logging_chain_reaches_request_lines_too(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "INFO")

    def stamp(_logger: object, _name: str, event_dict: dict[str, object]) -> dict[str, object]:
        event_dict["stamped"] = True
        return event_dict

    chain = structlog.get_config()["processors"]
    structlog.configure(processors=[stamp, *chain])
    try:
        with ServerThread(create_app(settings)) as server:
            assert httpx.get(f"{server.url}/healthz").status_code == 200
        get_logger("aiwrap.test").info("something_else")
    finally:
        structlog.configure(processors=chain)
    written = lines(capsys.readouterr().err)
    requests = [line for line in written if line["event"] == "request"]
    assert requests and all(line.get("stamped") is True for line in requests)
    assert next(line for line in written if line["event"] == "something_else")["stamped"]


def test_request_ids_from_callers_are_redacted_and_only_kept_when_well_formed(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = ["r" * 65, 'x" "level":"error', "tab\there", "ünïcode"]
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        client.get("/healthz", headers={"x-request-id": "sk-proj-abcdefghijklmnop"})
        kept = client.get("/healthz", headers={"x-request-id": "req-2026.12:a_b"})
        replaced = [
            client.get("/healthz", headers=[(b"x-request-id", value.encode())]) for value in odd
        ]
    output = capsys.readouterr().err
    assert "sk-proj-abcdefghijklmnop" not in output
    [redacted, well_formed, *others] = [
        line for line in lines(output) if line["event"] == "request"
    ]
    assert redacted["request_id"] == "[redacted]"
    assert well_formed["request_id"] == kept.headers["x-request-id"] == "req-2026.12:a_b"
    for line, response, sent in zip(others, replaced, odd, strict=True):
        assert line["request_id"] == response.headers["x-request-id"] != sent
        assert len(line["request_id"]) == 22  # one of ours
