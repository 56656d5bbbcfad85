"""The identity actor, `apply_clerk_event(svix_id, event)` on the `identity` queue.

A redelivered `svix-id` does no work; transient failures retry with backoff until
they apply; an event that can never apply is dead-lettered with a log line saying why.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import Broker

from core.errors import InvalidEvent
from core.faults import is_transient, schema_behind
from core.jobs import parse_clerk_event
from core.logs import get_logger
from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE

from .. import metrics
from ..runtime import Runtime
from .grouping import GroupApplier

log = get_logger(__name__)

#: Milliseconds before the first retry of a transient failure, and the most
#: between two; retries go on until the event applies.
MIN_BACKOFF_MS = 100
MAX_BACKOFF_MS = 30_000
#: Retries of an unexpected (non-transient) error before it is dead-lettered;
#: with the backoff above they span a few seconds.
MAX_UNEXPECTED_RETRIES = 5


def should_retry(retries: int, error: BaseException) -> bool:
    """Transient failures retry until they succeed; anything else a few times only."""
    # Before `aiwrap migrate` has run there is no function to call: keep the events.
    return is_transient(error) or schema_behind(error) or retries < MAX_UNEXPECTED_RETRIES


def declare(broker: Broker, runtime: Runtime) -> None:
    """Declare the identity actor on `broker`."""
    applier = GroupApplier(runtime)

    async def apply_clerk_event(svix_id: str, event: dict[str, Any]) -> None:
        try:
            change = parse_clerk_event(event)
        except InvalidEvent as error:
            event_type = event.get("type") if isinstance(event, dict) else None
            metrics.IDENTITY_EVENTS.labels(str(event_type)[:40], "dead_lettered").inc()
            log.error(
                "clerk_event_dead_lettered",
                svix_id=svix_id,
                reason=str(error),
                event_type=event_type,
            )
            raise
        outcome = await applier.apply(svix_id, change)
        result = "duplicate" if outcome.duplicate else "changed" if outcome.changed else "stale"
        metrics.IDENTITY_EVENTS.labels(event["type"], result).inc()
        log.debug(
            "clerk_event_applied",
            svix_id=svix_id,
            user_id=change.user_id,
            duplicate=outcome.duplicate,
            changed=outcome.changed,
        )

    dramatiq.actor(
        broker=broker,
        actor_name=APPLY_CLERK_EVENT,
        queue_name=IDENTITY_QUEUE,
        throws=(InvalidEvent,),
        retry_when=should_retry,
        min_backoff=MIN_BACKOFF_MS,
        max_backoff=MAX_BACKOFF_MS,
    )(apply_clerk_event)
