"""The errors aiwrap raises on purpose: one root, one line of meaning each.

Which failures of others (Postgres, Redis) are worth retrying is core/faults.py.
"""

from __future__ import annotations


class AiwrapError(Exception):
    """Base class for every error aiwrap raises on purpose."""


class ConfigurationError(AiwrapError):
    """A setting is missing or cannot be used."""


class SchemaError(AiwrapError):
    """The database schema could not be applied."""


class InvalidInput(AiwrapError):
    """A field of a request body or a queued job is missing, malformed or out of range."""

    def __init__(self, field: str, reason: str, code: str = "invalid_request") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        #: The stable code the HTTP API answers it with.
        self.code = code


class InvalidEvent(InvalidInput):
    """A Clerk event that can never apply, whatever the retries."""


class InvalidChatJob(InvalidInput):
    """A chat job message that can never run, whatever the retries."""
