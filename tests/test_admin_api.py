"""PUT /v1/admin/users/{user_id}/profile and `aiwrap budget`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis as redis_lib

from cli.main import main as cli_main
from core.settings import Settings

from .chat_support import (
    Db,
    as_service,
    as_user,
    assert_error,
    queued_jobs,
)
from .test_auth import ClerkSigner


def test_the_admin_route_provisions_an_unseen_user_and_sets_their_profile(
    http: httpx.Client, settings: Settings, db: Db, redis: redis_lib.Redis, user_id: str
) -> None:
    path = f"/v1/admin/users/{user_id}/profile"
    response = http.put(
        path,
        json={"monthly_token_budget": 5000, "default_model": "gpt-4o"},
        headers=as_service(settings),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "user_id": user_id,
        "monthly_token_budget": 5000,
        "default_model": "gpt-4o",
    }
    assert db.execute('SELECT 1 FROM "user" WHERE id = %s', (user_id,)).fetchone()
    # A partial update keeps the other field.
    response = http.put(path, json={"monthly_token_budget": 0}, headers=as_service(settings))
    assert response.json()["default_model"] == "gpt-4o"
    assert response.json()["monthly_token_budget"] == 0
    chat = http.post("/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id))
    assert queued_jobs(redis)[chat.json()["id"]]["model"] == "gpt-4o"


def test_the_admin_route_takes_service_keys_only(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    path = f"/v1/admin/users/{user_id}/profile"
    body = {"monthly_token_budget": 1}
    response = api.put(path, json=body, headers=clerk.headers(user_id))
    assert_error(response, 403, "service_key_required")
    assert_error(api.put(path, json=body), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "body", "invalid_request"),
        ({"monthly_token_budget": -1}, "monthly_token_budget", "invalid_request"),
        ({"monthly_token_budget": "5"}, "monthly_token_budget", "invalid_request"),
        ({"monthly_token_budget": True}, "monthly_token_budget", "invalid_request"),
        ({"monthly_token_budget": 2**63}, "monthly_token_budget", "invalid_request"),
        ({"default_model": "nope-1"}, "default_model", "unknown_model"),
        ({"default_model": ""}, "default_model", "invalid_request"),
        ({"display_name": "x"}, "display_name", "invalid_request"),
    ],
)
def test_bad_profile_input_is_400_naming_the_field(
    http: httpx.Client,
    settings: Settings,
    user_id: str,
    body: dict[str, Any],
    field: str,
    code: str,
) -> None:
    response = http.put(
        f"/v1/admin/users/{user_id}/profile", json=body, headers=as_service(settings)
    )
    assert_error(response, 400, code, f"{field}:")


def test_a_deleted_user_profile_cannot_be_set(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    db.execute("INSERT INTO user_tombstones (user_id, deleted_at) VALUES (%s, now())", (user_id,))
    response = http.put(
        f"/v1/admin/users/{user_id}/profile",
        json={"monthly_token_budget": 1},
        headers=as_service(settings),
    )
    assert_error(response, 410, "user_deleted")
    assert db.execute('SELECT 1 FROM "user" WHERE id = %s', (user_id,)).fetchone() is None


def test_aiwrap_budget_sets_the_budget_from_the_command_line(
    settings: Settings,
    db: Db,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    assert cli_main(["budget", user_id, "777", "--model", "gpt-4o"]) == 0
    assert "monthly_token_budget=777" in capsys.readouterr().out
    row = db.execute(
        "SELECT monthly_token_budget, default_model FROM user_profiles WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert row == {"monthly_token_budget": 777, "default_model": "gpt-4o"}
    assert cli_main(["budget", user_id, "5", "--model", "nope-1"]) == 2
    assert cli_main(["budget", user_id, "-5"]) == 2
