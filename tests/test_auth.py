"""Who is calling: Clerk session JWTs and service keys, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.settings import Settings
from ingest.app import create_app
from ingest.auth import LEEWAY_S, is_service_key

from .support import ServerThread, with_settings

APP_ORIGIN = "https://app.example.com"


class ClerkSigner:
    """Signs Clerk-style session tokens with an RSA key pair of the test's own."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def claims(self, sub: str, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "iat": now - 1,
            "nbf": now - 1,
            "exp": now + 60,
            "azp": APP_ORIGIN,
            "iss": "https://clerk.app.example.com",
            "sid": "sess_test",
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str, *, algorithm: str = "RS256", **changes: Any) -> str:
        return jwt.encode(self.claims(sub, **changes), self.private_key, algorithm=algorithm)

    def headers(self, sub: str, **changes: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, **changes)}"}


@pytest.fixture(scope="module")
def clerk() -> ClerkSigner:
    return ClerkSigner()


def serve(settings: Settings, **changes: Any) -> Iterator[httpx.Client]:
    with (
        ServerThread(create_app(with_settings(settings, **changes))) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client


@pytest.fixture
def api(settings: Settings, clerk: ClerkSigner) -> Iterator[httpx.Client]:
    """Ingest accepting the test key's session tokens, any azp."""
    yield from serve(settings, clerk_jwt_key=clerk.public_pem)


@pytest.fixture
def strict_api(settings: Settings, clerk: ClerkSigner) -> Iterator[httpx.Client]:
    """Ingest accepting session tokens only from APP_ORIGIN."""
    yield from serve(
        settings, clerk_jwt_key=clerk.public_pem, clerk_authorized_parties=(APP_ORIGIN,)
    )


def b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def assert_401(response: httpx.Response, words: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "unauthenticated"
    assert words in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_valid_session_token_identifies_its_subject(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    response = api.get("/v1/usage", headers=clerk.headers(user_id))
    assert response.status_code == 200, response.text
    assert response.json()["tokens_used"] == 0


def test_clock_skew_within_the_leeway_is_tolerated(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    now = int(time.time())
    skewed = clerk.headers(user_id, exp=now - (LEEWAY_S - 2), nbf=now + (LEEWAY_S - 2))
    assert api.get("/v1/usage", headers=skewed).status_code == 200


def test_an_expired_token_is_refused(api: httpx.Client, clerk: ClerkSigner, user_id: str) -> None:
    expired = clerk.headers(user_id, exp=int(time.time()) - LEEWAY_S - 5)
    assert_401(api.get("/v1/usage", headers=expired), "expired")


def test_a_token_not_valid_yet_is_refused(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    early = clerk.headers(user_id, nbf=int(time.time()) + LEEWAY_S + 30)
    assert_401(api.get("/v1/usage", headers=early), "not valid yet")


def test_a_token_without_exp_is_refused(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    assert_401(api.get("/v1/usage", headers=clerk.headers(user_id, exp=None)), "exp")


def test_a_token_signed_by_another_key_is_refused(api: httpx.Client, user_id: str) -> None:
    stranger = ClerkSigner()
    assert_401(api.get("/v1/usage", headers=stranger.headers(user_id)), "valid Clerk session")


@pytest.mark.parametrize("algorithm", ["RS512", "PS256"])
def test_only_rs256_is_accepted(
    api: httpx.Client, clerk: ClerkSigner, user_id: str, algorithm: str
) -> None:
    token = clerk.token(user_id, algorithm=algorithm)
    response = api.get("/v1/usage", headers={"Authorization": f"Bearer {token}"})
    assert_401(response, "valid Clerk session")


def test_an_unsigned_or_hmac_token_is_refused(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    unsigned = jwt.encode(clerk.claims(user_id), None, algorithm="none")
    # The classic confusion attack: HMAC keyed with the public key's own text.
    signing_input = b".".join(
        b64url(json.dumps(part).encode())
        for part in ({"alg": "HS256", "typ": "JWT"}, clerk.claims(user_id))
    )
    signature = hmac.new(clerk.public_pem.encode(), signing_input, hashlib.sha256).digest()
    hmac_token = (signing_input + b"." + b64url(signature)).decode()
    for token in (unsigned, hmac_token):
        response = api.get("/v1/usage", headers={"Authorization": f"Bearer {token}"})
        assert_401(response, "valid Clerk session")


def test_azp_must_be_an_authorized_party_when_parties_are_set(
    strict_api: httpx.Client, api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    assert strict_api.get("/v1/usage", headers=clerk.headers(user_id)).status_code == 200
    evil = clerk.headers(user_id, azp="https://evil.example")
    assert_401(strict_api.get("/v1/usage", headers=evil), "azp")
    assert_401(strict_api.get("/v1/usage", headers=clerk.headers(user_id, azp=None)), "azp")
    # Without CLERK_AUTHORIZED_PARTIES any azp is accepted.
    assert api.get("/v1/usage", headers=evil).status_code == 200


def test_session_tokens_are_refused_when_no_key_is_configured(
    http: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    assert_401(http.get("/v1/usage", headers=clerk.headers(user_id)), "CLERK_JWT_KEY")


def test_a_service_key_acts_for_the_user_in_x_user_id(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id}
    assert http.get("/v1/usage", headers=headers).status_code == 200


def test_a_service_key_without_x_user_id_cannot_act_for_nobody(
    http: httpx.Client, settings: Settings
) -> None:
    response = http.get("/v1/usage", headers={"Authorization": f"Bearer {settings.api_keys[0]}"})
    assert_401(response, "X-User-Id")


def test_a_malformed_x_user_id_is_refused(http: httpx.Client, settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": "a b/c"}
    assert_401(http.get("/v1/usage", headers=headers), "X-User-Id")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz", "Token abc", "bearer"],
    ids=["missing", "unknown-key", "basic", "other-scheme", "scheme-only"],
)
def test_anything_else_is_401_with_a_json_error(
    http: httpx.Client, user_id: str, authorization: str | None
) -> None:
    headers = {"X-User-Id": user_id}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = http.get("/v1/usage", headers=headers)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"code", "message"}


def test_a_deleted_user_is_403_by_either_kind_of_auth(
    api: httpx.Client,
    clerk: ClerkSigner,
    settings: Settings,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    db.execute("INSERT INTO user_tombstones (user_id, deleted_at) VALUES (%s, now())", (user_id,))
    service = {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id}
    for headers in (clerk.headers(user_id), service):
        response = api.post("/v1/chat", json={"prompt": "hi"}, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "user_deleted"


def test_service_keys_are_matched_against_every_configured_key() -> None:
    keys = ("aiw_first_key", "aiw_second_key")
    assert is_service_key("aiw_second_key", keys)
    assert is_service_key("aiw_first_key", keys)
    assert not is_service_key("aiw_second_ke", keys)
    assert not is_service_key("aiw_second_key", ())
