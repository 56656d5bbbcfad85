"""Settings are read once from the environment and fail loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigurationError
from core.settings import SETTINGS, Settings

from .test_auth import ClerkSigner

REQUIRED = {"DATABASE_URL": "postgresql://x@/db", "REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL"])
def test_a_missing_required_setting_stops_with_a_sentence_naming_it(missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(ConfigurationError, match=rf"Setting {missing} is missing"):
        Settings.from_env(env)


def test_defaults_apply_when_only_the_required_settings_are_given() -> None:
    settings = Settings.from_env(REQUIRED)
    assert settings.default_monthly_token_budget == 0
    assert settings.api_keys == ()
    assert settings.prices_path is None
    assert settings.log_format == "json"


KEY_1, KEY_2 = "aiw_" + "1" * 24, "aiw_" + "2" * 24


def test_lists_and_numbers_are_parsed() -> None:
    pem = ClerkSigner().public_pem
    settings = Settings.from_env(
        {
            **REQUIRED,
            "AIWRAP_API_KEYS": f" {KEY_1}, {KEY_2} ,,",
            "CLERK_AUTHORIZED_PARTIES": "https://app.example.com",
            "AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET": "50000",
            "AIWRAP_PRICES": "/etc/aiwrap/prices.json",
            "CLERK_JWT_KEY": pem.replace("\n", "\\n"),  # as an env file writes it
        }
    )
    assert settings.api_keys == (KEY_1, KEY_2)
    assert settings.clerk_authorized_parties == ("https://app.example.com",)
    assert settings.default_monthly_token_budget == 50000
    assert settings.prices_path == Path("/etc/aiwrap/prices.json")
    assert settings.clerk_jwt_key == pem


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLERK_JWT_KEY", "-----BEGIN PUBLIC KEY-----\\nabc\\n-----END PUBLIC KEY-----"),
        ("CLERK_JWT_KEY", "not a key at all"),
        ("CLERK_WEBHOOK_SECRET", "whsec_not base64!"),
        ("CLERK_WEBHOOK_SECRET", "c2VjcmV0"),  # base64, but not a whsec_ secret
        ("AIWRAP_API_KEYS", f"{KEY_1},short"),
    ],
)
def test_a_secret_that_cannot_work_stops_the_process_naming_the_setting(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^Setting {name}"):
        Settings.from_env({**REQUIRED, name: value})


def test_aiwrap_ingest_refuses_to_start_with_a_malformed_webhook_secret() -> None:
    env = {**os.environ, **REQUIRED, "CLERK_WEBHOOK_SECRET": "whsec_???"}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "ingest", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Setting CLERK_WEBHOOK_SECRET is not a Svix signing secret" in result.stderr


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_a_bad_budget_is_refused_with_the_variable_named(value: str) -> None:
    with pytest.raises(ConfigurationError, match="AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET"):
        Settings.from_env({**REQUIRED, "AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET": value})


def test_settings_are_frozen_and_their_repr_hides_secrets() -> None:
    settings = Settings.from_env(
        {
            **REQUIRED,
            "CLERK_WEBHOOK_SECRET": "whsec_c2VjcmV0",
            "AIWRAP_API_KEYS": KEY_1,
        }
    )
    with pytest.raises(AttributeError):
        settings.redis_url = "redis://elsewhere"  # type: ignore[misc]
    assert "whsec_" not in repr(settings)
    assert KEY_1 not in repr(settings)


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert not missing, f"README.md does not document {missing}"
