"""Which failures are worth retrying: the one rule ingest and the workers share.

Ingest answers a transient failure with 503 and Retry-After; the workers retry it.
"""

from __future__ import annotations

import psycopg
import redis.exceptions

#: Failures of a server or the network, not of the request. psycopg's OperationalError
#: covers lost connections, server shutdowns, deadlocks and the pool's own PoolTimeout;
#: InterfaceError is a connection closed under us. Redis's ConnectionError and
#: TimeoutError include a server still loading its data; ReadOnlyError is a replica
#: during a failover.
TRANSIENT = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


def is_transient(error: BaseException) -> bool:
    """True when retrying may succeed: a server or the network failed, not the request.

    The one classifier: ingest answers these 503 with Retry-After, the workers retry them.
    """
    return isinstance(error, TRANSIENT)


def schema_behind(error: BaseException) -> bool:
    """True when a function schema.sql defines is missing: a worker deployed before
    `aiwrap migrate` ran. That passes once the schema is applied."""
    return isinstance(error, psycopg.errors.UndefinedFunction)
