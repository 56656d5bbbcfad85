"""Secrets never reach a log line: redacted by key and by shape, at any depth."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

#: Keys whose values are never written, at any depth.
SECRET_KEYS = frozenset(
    {
        "authorization",
        "api_key",
        "api_keys",
        "openai_api_key",
        "secret",
        "webhook_secret",
        "clerk_webhook_secret",
        "password",
        "token",
        "jwt",
        "signature",
        "svix-signature",
        "svix_signature",
        "private_metadata",
        "cookie",
        "set-cookie",
        "x-api-key",
    }
)

#: Values that look like a secret wherever they appear in a string.
SECRET_SHAPES = re.compile(
    r"whsec_[A-Za-z0-9+/=]+"  # Svix signing secrets
    r"|v1,[A-Za-z0-9+/=]{20,}"  # Svix signatures
    r"|\bsk-[A-Za-z0-9_\-]{8,}"  # OpenAI-style API keys
    r"|\baiw_[A-Za-z0-9_\-]{8,}"  # aiwrap service keys
    r"|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"  # JWTs
    r"|(?<=://)[^:/@\s]+:[^@\s]+(?=@)"  # credentials inside URLs
)
REDACTED = "[redacted]"


#: Every shape above contains one of these; a string without any is left as it is
#: without running the (much slower) expression over it.
_SHAPE_MARKERS = re.compile("whsec_|v1,|sk-|aiw_|eyJ|://")


# Tuples, not `X | Y`: a union written in a function is built anew at every call.
_SEQUENCES = (list, tuple)
_MAY_HOLD_SECRETS = (str, dict, list, tuple)


def redact(value: Any) -> Any:
    """Return `value` with every secret in it replaced by a marker."""
    if isinstance(value, str):
        if _SHAPE_MARKERS.search(value) is None:
            return value
        return SECRET_SHAPES.sub(REDACTED, value)
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()
        }
    if isinstance(value, _SEQUENCES):
        return type(value)(redact(v) for v in value)
    return value


def redact_event(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The structlog processor: every secret in a line's values, by key and by shape."""
    for key, value in event_dict.items():
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        # A plain str first: nearly every value is one, and most hold no marker.
        elif type(value) is str:
            if _SHAPE_MARKERS.search(value) is not None:
                event_dict[key] = SECRET_SHAPES.sub(REDACTED, value)
        elif isinstance(value, _MAY_HOLD_SECRETS):
            event_dict[key] = redact(value)
    return event_dict
