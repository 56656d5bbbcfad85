"""Health and readiness of the ingest process."""

from __future__ import annotations

import httpx

from core.settings import Settings
from devstack.embedded import EmbeddedRedis
from ingest.app import create_app

from .support import ServerThread, with_settings


def test_healthz_answers_ok(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_readyz_reports_both_dependencies_reachable(http: httpx.Client) -> None:
    response = http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "postgres": "ok"}}


def test_readyz_names_what_failed_when_redis_is_down(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    app = create_app(with_settings(settings, redis_url=private_redis.url))
    with ServerThread(app) as server:
        private_redis.stop()
        response = httpx.get(f"{server.url}/readyz", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"redis": "unavailable", "postgres": "ok"}  # no exception text


def test_unknown_routes_answer_json_errors(http: httpx.Client) -> None:
    response = http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
