"""Open streams, bounded: per process and per user, each stream on a pool of its own.

A stream holds a Redis connection in a blocking read for as long as it is open. Streams
read through a pool of their own, sized to the process's cap, so no number of them can
take the connections that webhooks and chats are queued with. Past either cap a new
stream is a 429 with Retry-After; a slot is freed when its response ends, however it
ends (finished, cut, or a client that went away).
"""

from __future__ import annotations

from typing import Any, Final

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import ApiError
from .refusals import LIMITED

#: Seconds a client is told to wait before it tries a stream again.
RETRY_AFTER_S: Final = "2"


class TooManyStreams(ApiError):
    """The caller, or the process, holds as many streams open as it may."""

    def __init__(self, whose: str) -> None:
        super().__init__(
            429,
            "too_many_streams",
            f"{whose} holds as many open streams as allowed; close one, or retry shortly.",
            headers={"Retry-After": RETRY_AFTER_S},
        )


class Slot:
    """One open stream's place, given back once (release is idempotent)."""

    def __init__(self, slots: StreamSlots, user_id: str) -> None:
        self.slots, self.user_id, self.held = slots, user_id, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.give_back(self.user_id)

    def pass_on(self) -> Slot:
        """This hold, moved to a new owner (the response that streams); this one lets go."""
        self.held = False
        return Slot(self.slots, self.user_id)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class StreamSlots:
    """How many streams the process and each user hold open. One event loop touches it."""

    def __init__(self, per_process: int, per_user: int) -> None:
        self.per_process, self.per_user = per_process, per_user
        self.open = 0
        self.by_user: dict[str, int] = {}

    def take(self, user_id: str) -> Slot:
        """A slot for a new stream of `user_id`, or TooManyStreams."""
        if self.by_user.get(user_id, 0) >= self.per_user:
            LIMITED.labels("streams").inc()
            raise TooManyStreams("This user")
        if self.open >= self.per_process:
            LIMITED.labels("streams").inc()
            raise TooManyStreams("This server")
        self.open += 1
        self.by_user[user_id] = self.by_user.get(user_id, 0) + 1
        return Slot(self, user_id)

    def give_back(self, user_id: str) -> None:
        self.open -= 1
        left = self.by_user[user_id] - 1
        if left:
            self.by_user[user_id] = left
        else:
            del self.by_user[user_id]


class HeldStream(StreamingResponse):
    """A streamed response that gives its slot back when it ends, even if it never began."""

    def __init__(self, content: Any, slot: Slot, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
