"""CORS on /v1 for the origins of AIWRAP_CORS_ORIGINS only, never `*`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from core.errors import ConfigurationError
from core.settings import Settings
from ingest.app import create_app

from .support import ServerThread, with_settings

APP = "https://app.example.com"


@pytest.fixture
def browser_api(settings: Settings) -> Iterator[httpx.Client]:
    app = create_app(with_settings(settings, cors_origins=(APP,)))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def preflight(client: httpx.Client, path: str, origin: str) -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_a_listed_origin_may_call_v1_with_its_token_and_read_the_chat_id(
    browser_api: httpx.Client, settings: Settings, user_id: str
) -> None:
    allowed = preflight(browser_api, "/v1/chat/completions", APP)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP  # the origin, never *
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    answer = browser_api.get(
        "/v1/models",
        headers={
            "Origin": APP,
            "Authorization": f"Bearer {settings.api_keys[0]}",
            "X-User-Id": user_id,
        },
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP
    assert "x-chat-id" in answer.headers["access-control-expose-headers"].lower()


def test_another_origin_and_the_routes_outside_v1_get_no_cors(browser_api: httpx.Client) -> None:
    refused = preflight(browser_api, "/v1/chat/completions", "https://evil.example")
    assert "access-control-allow-origin" not in refused.headers
    webhook = preflight(browser_api, "/webhooks/clerk", APP)
    assert "access-control-allow-origin" not in webhook.headers


def test_without_origins_no_page_may_call_v1(http: httpx.Client) -> None:
    assert "access-control-allow-origin" not in preflight(http, "/v1/models", APP).headers


@pytest.mark.parametrize("value", ["*", "app.example.com", "https://app.example.com/"])
def test_a_wildcard_or_a_non_origin_is_refused_at_start(value: str) -> None:
    env = {"DATABASE_URL": "postgresql://x", "REDIS_URL": "redis://x", "AIWRAP_CORS_ORIGINS": value}
    with pytest.raises(ConfigurationError, match="AIWRAP_CORS_ORIGINS"):
        Settings.from_env(env)
