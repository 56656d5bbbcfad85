"""Who is calling: a Clerk session JWT, or a service key on behalf of a user.

- `Authorization: Bearer <Clerk session JWT>`: verified offline against CLERK_JWT_KEY,
  RS256 only, `exp`/`nbf` with LEEWAY_S seconds of clock skew, `azp` required to be one of
  CLERK_AUTHORIZED_PARTIES when that is set. The user is the token's `sub`.
- `Authorization: Bearer <one of AIWRAP_API_KEYS>` plus `X-User-Id: <clerk user id>`: a
  trusted backend acting for a user. Keys are compared in constant time, against all of
  them, so timing says nothing about which key came close.
- Browsers' `EventSource` cannot send headers, so the SSE route alone (a read) also takes
  Clerk's same-site `__session` cookie; routes that change anything never do, so a
  cookie can never be used for cross-site request forgery.

Anything else is 401. A user whose Clerk account was deleted (tombstoned) is 403.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.requests import Request

from core.logs import get_logger
from core.messages import USER_ID
from core.settings import Settings
from core.users import is_tombstoned

from .errors import ApiError

log = get_logger(__name__)

#: The ways of calling, as the OpenAPI document names them (its securitySchemes).
SCHEMES: Final = {
    "clerkSession": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A Clerk session JWT, verified offline against CLERK_JWT_KEY: RS256 "
        "only, exp/nbf with 5 s of leeway, azp one of CLERK_AUTHORIZED_PARTIES when set. "
        "The user is its `sub`.",
    },
    "serviceKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "One of AIWRAP_API_KEYS, for a trusted backend. On user routes it "
        "must be sent with `X-User-Id` (userId).",
    },
    "userId": {
        "type": "apiKey",
        "in": "header",
        "name": "X-User-Id",
        "description": "The Clerk user a service key acts for.",
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "__session",
        "description": "Clerk's session cookie (the same JWT), for EventSource; the SSE "
        "route only.",
    },
}
#: Who may call a route: anyone; a user (a session, or a service key naming one); a
#: user, by cookie too (the SSE route); a service key alone.
Requirement = tuple[dict[str, list[str]], ...]
ANYONE: Final[Requirement] = ()
USER: Final[Requirement] = ({"clerkSession": []}, {"serviceKey": [], "userId": []})
USER_OR_COOKIE: Final[Requirement] = (*USER, {"sessionCookie": []})
SERVICE: Final[Requirement] = ({"serviceKey": []},)

#: Seconds of clock skew tolerated on `exp` and `nbf`.
LEEWAY_S = 5
#: Clerk's session cookie, which holds the same JWT as the Authorization header.
SESSION_COOKIE = "__session"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a user (maybe through a service), or a bare service."""

    user_id: str | None
    via_service_key: bool


class Unauthenticated(ApiError):
    """The request did not prove who is calling."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    """The caller is known but may not do this."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(403, code, message)


def authenticate(request: Request, settings: Settings, *, allow_cookie: bool = False) -> Caller:
    """Identify the caller from headers alone (no I/O); raise Unauthenticated otherwise."""
    token = _bearer(request)
    if token is None and allow_cookie:
        token = request.cookies.get(SESSION_COOKIE) or None
    if token is None:
        raise Unauthenticated(
            "Send `Authorization: Bearer <Clerk session token>`, or a service key with X-User-Id."
        )
    if is_service_key(token, settings.api_keys):
        raw = request.headers.get("x-user-id")
        if raw is None:
            return Caller(user_id=None, via_service_key=True)
        user_id = raw.strip()
        if not USER_ID.fullmatch(user_id):
            raise Unauthenticated(
                "X-User-Id must be a Clerk user id: 1 to 128 letters, digits, '_' or '-'."
            )
        return Caller(user_id=user_id, via_service_key=True)
    if "x-user-id" in request.headers:
        # Only a service key names its user: this was meant to be one.
        raise Unauthenticated("The service key is not valid: it is none of AIWRAP_API_KEYS.")
    return Caller(user_id=verify_session_token(token, settings), via_service_key=False)


def require_user(caller: Caller) -> str:
    """The user a request acts for; a service key must name one with X-User-Id."""
    if caller.user_id is None:
        raise Unauthenticated("A service key must name the user it acts for in X-User-Id.")
    return caller.user_id


def require_service(caller: Caller) -> None:
    """Only a service key may call admin routes."""
    if not caller.via_service_key:
        raise Forbidden("service_key_required", "This route takes a service key, not a session.")


def user_deleted() -> Forbidden:
    """The 403 for a user deleted in Clerk."""
    return Forbidden("user_deleted", "This user was deleted and can no longer use aiwrap.")


async def ensure_active(conn: Any, user_id: str) -> None:
    """Raise 403 when the user was deleted in Clerk."""
    if await is_tombstoned(conn, user_id):
        raise user_deleted()


def is_service_key(token: str, keys: tuple[str, ...]) -> bool:
    """Constant-time membership: every key is compared, whichever matches."""
    offered = token.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key.encode())
    return matched


def verify_session_token(token: str, settings: Settings) -> str:
    """The `sub` of a valid Clerk session JWT; raise Unauthenticated for anything else."""
    if not settings.clerk_jwt_key:
        if token.count(".") != 2:  # not shaped like a JWT: a mistyped key, most likely
            raise Unauthenticated("The bearer token is not a valid service key.")
        raise Unauthenticated("This server accepts no session tokens: CLERK_JWT_KEY is not set.")
    key = _public_key(settings.clerk_jwt_key)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            leeway=LEEWAY_S,
            options={"require": ["exp", "sub"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The session token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise Unauthenticated("The session token is not valid yet (nbf).") from None
    except jwt.MissingRequiredClaimError as error:
        raise Unauthenticated(f"The session token has no `{error.claim}` claim.") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated(
            "The bearer token is neither a service key nor a valid Clerk session token."
        ) from None
    parties = settings.clerk_authorized_parties
    if parties and claims.get("azp") not in parties:
        raise Unauthenticated("The session token's azp is not an authorized party.")
    subject = claims["sub"]
    if not isinstance(subject, str) or not USER_ID.fullmatch(subject):
        raise Unauthenticated("The session token's sub is not a Clerk user id.")
    return subject


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("The Authorization header must be `Bearer <token>`.")
    return token


@lru_cache(maxsize=4)
def _public_key(pem: str) -> RSAPublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        log.error("clerk_jwt_key_invalid", detail="CLERK_JWT_KEY is not a PEM public key.")
        raise ApiError(
            500, "auth_misconfigured", "Session tokens cannot be checked: the key is unusable."
        ) from None
    if not isinstance(key, RSAPublicKey):
        log.error("clerk_jwt_key_invalid", detail="CLERK_JWT_KEY is not an RSA public key.")
        raise ApiError(
            500, "auth_misconfigured", "Session tokens cannot be checked: the key is unusable."
        )
    return key
