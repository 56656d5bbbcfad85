"""Logging: structlog renders everything, aiwrap's own lines and its libraries'.

JSON by default, one object a line; readable console output for `aiwrap dev`.
Request ids (ingest) and message ids (workers) are bound through contextvars.
Secrets never reach the output: a processor redacts them by key and by shape.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

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


def redact(value: Any) -> Any:
    """Return `value` with every secret in it replaced by a marker."""
    if isinstance(value, str):
        return SECRET_SHAPES.sub(REDACTED, value)
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def _redact_event(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = REDACTED if key.lower() in SECRET_KEYS else redact(value)
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so a redirected stderr is honoured."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_configured: tuple[str, str] | None = None


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Send structlog and stdlib logging (Dramatiq, uvicorn, psycopg) through one renderer."""
    global _configured
    if _configured == (log_format, level):
        return
    _configured = (log_format, level)

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_event,
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that install their own handlers would print twice.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq", "psycopg", "pgserver"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    # Quiet by default; one line per request comes from our own middleware.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return aiwrap's logger for a module."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
