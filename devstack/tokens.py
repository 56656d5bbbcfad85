"""Clerk-shaped session tokens, signed with a dev key pair: the end-user path to try
without Clerk (`aiwrap token USER_ID`)."""

from __future__ import annotations

import secrets
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

#: The `iss` of a dev token: no Clerk instance issued it.
DEV_ISSUER = "https://clerk.aiwrap.dev.local"


def new_key_pair() -> tuple[str, str]:
    """A new RSA key pair, as (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def session_token(private_pem: str, user_id: str, minutes: int = 60, azp: str = "") -> str:
    """A session JWT for `user_id` with the claims Clerk's have (RS256)."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "iss": DEV_ISSUER,
        "sid": f"sess_{secrets.token_hex(12)}",
        "iat": now,
        "nbf": now - 5,
        "exp": now + minutes * 60,
    }
    if azp:
        claims["azp"] = azp
    return jwt.encode(claims, private_pem, algorithm="RS256")
