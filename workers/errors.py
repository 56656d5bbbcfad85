"""The errors aiwrap raises on purpose. One root, one line of meaning each."""

from __future__ import annotations


class AiwrapError(Exception):
    """Base class for every error aiwrap raises on purpose."""


class ConfigurationError(AiwrapError):
    """A setting is missing or cannot be used."""


class SchemaError(AiwrapError):
    """The database schema could not be applied."""


class InvalidEvent(AiwrapError):
    """A Clerk event that can never apply, whatever the retries."""


class Transient(AiwrapError):
    """A failure that a retry may fix: a database or Redis outage, a pool timeout."""
