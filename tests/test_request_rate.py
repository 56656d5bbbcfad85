"""AIWRAP_USER_REQUESTS_PER_MINUTE: chat requests per user per minute, counted in Redis
and so shared by every ingest process; past it a 429 with Retry-After, counted in metrics."""

from __future__ import annotations

import time

import httpx

from core.settings import Settings
from ingest.app import create_app

from .chat_support import as_user, assert_error, other_user
from .support import ServerThread, with_settings
from .test_metrics import sample, scrape

CHAT = {"prompt": "hi"}


def inside_one_minute(seconds: float) -> None:
    """Wait (at most `seconds`) for a minute to start if this one has less than that left:
    a count that straddles two windows would start again."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def limited(http: httpx.Client, settings: Settings) -> float:
    return sample(scrape(http, settings), "aiwrap_limited_total", limit="requests_per_minute") or 0


def test_past_the_limit_a_users_chats_are_429_and_others_still_202(settings: Settings) -> None:
    settings = with_settings(settings, user_requests_per_minute=5)
    user = other_user()
    inside_one_minute(20)
    # Two ingest apps, each with its own state: the count is Redis's, not a process's.
    with (
        ServerThread(create_app(settings)) as one,
        ServerThread(create_app(settings)) as two,
        httpx.Client(base_url=one.url) as first,
        httpx.Client(base_url=two.url) as second,
    ):
        before = limited(first, settings)
        for http in (first, second, first, second, first):
            response = http.post("/v1/chat", json=CHAT, headers=as_user(settings, user))
            assert response.status_code == 202, response.text
        refused = second.post("/v1/chat", json=CHAT, headers=as_user(settings, user))
        assert_error(refused, 429, "rate_limited", "5 chat requests this minute")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # The Chat Completions route shares the count, and answers in OpenAI's shape.
        completion = first.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers=as_user(settings, user),
        )
        assert completion.status_code == 429, completion.text
        assert 1 <= int(completion.headers["retry-after"]) <= 60
        error = completion.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
        # Another user is not limited by this one.
        other = second.post("/v1/chat", json=CHAT, headers=as_user(settings, other_user()))
        assert other.status_code == 202, other.text
        assert limited(first, settings) == before + 2


def test_zero_turns_the_limit_off(settings: Settings) -> None:
    settings = with_settings(settings, user_requests_per_minute=0)
    user = other_user()
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
        for _ in range(12):
            response = http.post("/v1/chat", json=CHAT, headers=as_user(settings, user))
            assert response.status_code == 202, response.text
