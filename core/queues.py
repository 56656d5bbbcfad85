"""The queues: their names, the actor each one carries, and where they live in Redis.

Two queues, so a slow model never delays identity sync: `identity` carries Clerk
events to `apply_clerk_event`, `chat` carries chat jobs to `run_chat`. Ingest
puts messages on them (ingest/enqueue.py) and the workers take them off
(workers/broker.py); this module is what both sides agree on, with the message
bodies in core/jobs.py.

The Redis layout is Dramatiq's (its brokers/redis/dispatch.lua), under
NAMESPACE; workers/fence.py checks that the installed Dramatiq still lays it
out this way.
"""

from __future__ import annotations

from typing import Final

IDENTITY_QUEUE: Final = "identity"
CHAT_QUEUE: Final = "chat"
QUEUES: Final = (IDENTITY_QUEUE, CHAT_QUEUE)

#: The actor each kind of message is for.
APPLY_CLERK_EVENT: Final = "apply_clerk_event"
RUN_CHAT: Final = "run_chat"

#: Redis key prefix for every key the broker writes.
NAMESPACE: Final = "aiwrap"

#: Wake-up tokens kept per queue; more than the consumers waiting is waste.
MAX_WAKE_TOKENS: Final = 64


def queue_key(queue_name: str) -> str:
    """The list of message ids waiting on a queue (Dramatiq's layout)."""
    return f"{NAMESPACE}:{queue_name}"


def wake_key(queue_name: str) -> str:
    """The Redis list an idle consumer blocks on until a message is enqueued."""
    return f"{NAMESPACE}:{queue_name}.wake"


def depth_keys() -> list[tuple[str, str]]:
    """(queue, hash) pairs whose HLENs add up to each queue's depth: the messages
    waiting or in flight, in the queue itself or in its delay queue (retries not
    yet due). A message leaves its hash when it is acked."""
    return [
        (queue, f"{NAMESPACE}:{queue}{suffix}.msgs") for queue in QUEUES for suffix in ("", ".DQ")
    ]


def queue_depths(hlens: list[int]) -> dict[str, int]:
    """Each queue's depth, from the HLEN of each of depth_keys(), in that order."""
    depths = dict.fromkeys(QUEUES, 0)
    for (queue, _key), size in zip(depth_keys(), hlens, strict=True):
        depths[queue] += int(size)
    return depths
