"""Settings: read once from the environment into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError


@dataclass(frozen=True)
class Setting:
    """One environment variable aiwrap reads, as the README's table documents it."""

    name: str
    default: str | None
    meaning: str
    secret: bool = False


#: Every variable aiwrap reads. `None` as a default means required by the commands that
#: use it (`Settings.from_env(require=...)`): all of them but `aiwrap migrate` and
#: `aiwrap budget` need both URLs, and those two only DATABASE_URL.
SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", None, "Postgres URL (Neon's pooled endpoint works)."),
    Setting("REDIS_URL", None, "Redis URL for the Dramatiq broker and chat streams."),
    Setting(
        "CLERK_WEBHOOK_SECRET",
        "",
        "Svix signing secret of the Clerk webhook (whsec_...).",
        secret=True,
    ),
    Setting("OPENAI_API_KEY", "", "API key for the OpenAI-compatible endpoint.", secret=True),
    Setting("OPENAI_BASE_URL", "", "Base URL of the OpenAI-compatible endpoint (default OpenAI)."),
    Setting("AIWRAP_API_KEYS", "", "Comma-separated service API keys.", secret=True),
    Setting("CLERK_JWT_KEY", "", "PEM public key that verifies Clerk session JWTs."),
    Setting("CLERK_AUTHORIZED_PARTIES", "", "Comma-separated origins allowed as a JWT's azp."),
    Setting(
        "AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET",
        "0",
        "Token budget given to new users each calendar month; 0 means no cap.",
    ),
    Setting("AIWRAP_PRICES", "", "Path to a JSON price file that overrides the built-in prices."),
    Setting("AIWRAP_LOG_FORMAT", "json", "`json` (one object a line) or `console`."),
    Setting("AIWRAP_LOG_LEVEL", "INFO", "Lowest log level written."),
    Setting("AIWRAP_STREAM_TTL_SECONDS", "3600", "How long a finished chat stream stays readable."),
    Setting("AIWRAP_MAX_CHAT_BYTES", "262144", "Largest chat request body accepted, in bytes."),
    Setting("AIWRAP_MAX_STREAMS", "500", "Streams one ingest process holds open at most."),
    Setting("AIWRAP_USER_MAX_STREAMS", "20", "Streams one user may hold open in one process."),
    Setting(
        "AIWRAP_USER_REQUESTS_PER_MINUTE",
        "120",
        "Chat requests one user may send per minute; 0: no limit.",
    ),
    Setting(
        "AIWRAP_CORS_ORIGINS",
        "",
        "Comma-separated origins whose pages may call /v1 from a browser; empty: none.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Everything aiwrap is configured with, read once at start-up."""

    database_url: str = ""
    redis_url: str = ""
    clerk_webhook_secret: str = ""
    openai_api_key: str = ""
    openai_base_url: str = ""
    api_keys: tuple[str, ...] = ()
    clerk_jwt_key: str = ""
    clerk_authorized_parties: tuple[str, ...] = ()
    default_monthly_token_budget: int = 0
    prices_path: Path | None = None
    log_format: str = "json"
    log_level: str = "INFO"
    stream_ttl_seconds: int = 3600
    max_chat_bytes: int = 262144
    cors_origins: tuple[str, ...] = ()
    max_streams: int = 500
    user_max_streams: int = 20
    user_requests_per_minute: int = 120

    def __repr__(self) -> str:
        # Never let a secret reach a log line or a traceback through repr().
        return f"Settings(database_url=<set>, redis_url={self.redis_url!r}, ...)"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        require: tuple[str, ...] = ("DATABASE_URL", "REDIS_URL"),
    ) -> Settings:
        """Build settings from `environ` (default: the process environment).

        `require` names the settings without a default that the caller uses: each
        must be set. One the caller does not use stays empty.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            spec = next(s for s in SETTINGS if s.name == name)
            value = env.get(name, "").strip()
            if value:
                return value
            if spec.default is None:
                if name in require:
                    raise ConfigurationError(
                        f"Setting {name} is missing, and has no default: {spec.meaning}"
                    )
                return ""
            return spec.default

        return cls(
            database_url=get("DATABASE_URL"),
            redis_url=get("REDIS_URL"),
            clerk_webhook_secret=_webhook_secret(get("CLERK_WEBHOOK_SECRET")),
            openai_api_key=get("OPENAI_API_KEY"),
            openai_base_url=get("OPENAI_BASE_URL"),
            api_keys=_api_keys(_csv(get("AIWRAP_API_KEYS"))),
            clerk_jwt_key=_jwt_key(get("CLERK_JWT_KEY").replace("\\n", "\n")),
            clerk_authorized_parties=_csv(get("CLERK_AUTHORIZED_PARTIES")),
            default_monthly_token_budget=_int(
                "AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET",
                get("AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET"),
                minimum=0,
            ),
            prices_path=Path(p) if (p := get("AIWRAP_PRICES")) else None,
            log_format=_choice("AIWRAP_LOG_FORMAT", get("AIWRAP_LOG_FORMAT"), ("json", "console")),
            log_level=get("AIWRAP_LOG_LEVEL").upper(),
            stream_ttl_seconds=_int(
                "AIWRAP_STREAM_TTL_SECONDS", get("AIWRAP_STREAM_TTL_SECONDS"), minimum=1
            ),
            max_chat_bytes=_int(
                "AIWRAP_MAX_CHAT_BYTES", get("AIWRAP_MAX_CHAT_BYTES"), minimum=1024
            ),
            cors_origins=_origins(_csv(get("AIWRAP_CORS_ORIGINS"))),
            max_streams=_int("AIWRAP_MAX_STREAMS", get("AIWRAP_MAX_STREAMS"), minimum=1),
            user_max_streams=_int(
                "AIWRAP_USER_MAX_STREAMS", get("AIWRAP_USER_MAX_STREAMS"), minimum=1
            ),
            user_requests_per_minute=_int(
                "AIWRAP_USER_REQUESTS_PER_MINUTE",
                get("AIWRAP_USER_REQUESTS_PER_MINUTE"),
                minimum=0,
            ),
        )


#: Characters a service key must have at least: guessing one must be hopeless.
MIN_API_KEY_CHARS = 24


def _api_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    for index, key in enumerate(keys):
        if len(key) < MIN_API_KEY_CHARS:
            raise ConfigurationError(
                f"Setting AIWRAP_API_KEYS: key {index + 1} has {len(key)} characters; each "
                f"needs at least {MIN_API_KEY_CHARS} (e.g. `python -c 'import secrets; "
                'print("aiw_" + secrets.token_urlsafe(24))\'`).'
            )
    return keys


def _jwt_key(pem: str) -> str:
    """The key, if it is a PEM RSA public key; a key that is not would make every session
    token a 500, so the process refuses to start instead."""
    if not pem:
        return pem
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        key = None
    if not isinstance(key, RSAPublicKey):
        raise ConfigurationError(
            "Setting CLERK_JWT_KEY is not a PEM RSA public key: paste the PEM public key "
            "from Clerk's dashboard (API keys, JWKS public key), newlines as \\n."
        )
    return pem


def _webhook_secret(secret: str) -> str:
    """The secret, if svix can verify signatures with it; else the process refuses to
    start rather than answer every webhook 500."""
    if not secret:
        return secret
    import base64

    from svix.webhooks import Webhook

    try:
        # Strictly: svix's own decoding skips characters outside base64 and signs with
        # whatever is left, so a mangled secret would only fail at the first webhook.
        if not secret.startswith("whsec_") or not base64.b64decode(secret[6:], validate=True):
            raise ValueError("not whsec_ and base64")
        Webhook(secret)
    except Exception:  # svix raises errors of its own, not only ValueError
        raise ConfigurationError(
            "Setting CLERK_WEBHOOK_SECRET is not a Svix signing secret: use the endpoint's "
            "secret from Clerk's dashboard, `whsec_` then base64."
        ) from None
    return secret


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    for origin in origins:
        if origin == "*" or "://" not in origin or origin.endswith("/"):
            raise ConfigurationError(
                f"Setting AIWRAP_CORS_ORIGINS: {origin!r} is not an origin; name each one, "
                "as a browser sends it (https://app.example.com), never *."
            )
    return origins


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _int(name: str, raw: str, *, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"Setting {name} must be an integer, not {raw!r}.") from None
    if value < minimum:
        raise ConfigurationError(f"Setting {name} must be at least {minimum}, not {value}.")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.lower()
    if value not in choices:
        raise ConfigurationError(f"Setting {name} must be one of {', '.join(choices)}.")
    return value
