"""Hearing that a chat was cancelled: one Pub/Sub subscription per worker process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.logs import get_logger
from core.streams import CANCEL_CHANNEL, cancel_requested, text

log = get_logger(__name__)


class CancelListener:
    """One Pub/Sub subscriber per worker process, waking the chats someone cancelled.

    A chat registers with `watch(job_id)` while it talks to the model and gets an
    asyncio.Event that is set when its id arrives on CANCEL_CHANNEL. A message
    sent while the subscriber was disconnected is caught up from the cancel keys
    when it reconnects.
    """

    #: Seconds between reconnect attempts after Redis went away.
    RECONNECT_S = 0.5

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def start(self, redis: aioredis.Redis) -> None:
        """Start listening on the running event loop."""
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._listen(redis))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: redis-py may swallow a cancellation that lands mid-command.
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None

    async def wait_ready(self, within_s: float) -> bool:
        """Wait until subscribed (so no cancel can be missed); False after `within_s`."""
        try:
            await asyncio.wait_for(self._ready.wait(), within_s)
        except TimeoutError:
            return False
        return True

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when someone cancels `job_id`, for as long as the block runs."""
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(job_id, set())
            watchers.discard(event)
            if not watchers:
                self._watchers.pop(job_id, None)

    def _fire(self, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()

    async def _listen(self, redis: aioredis.Redis) -> None:
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(CANCEL_CHANNEL)
                    self._ready.set()
                    for job_id in list(self._watchers):
                        if await cancel_requested(redis, job_id):
                            self._fire(job_id)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=5.0
                        )
                        if message is not None and message.get("type") == "message":
                            self._fire(text(message["data"]))
            except (RedisError, OSError) as error:
                self._ready.clear()
                log.warning("chat_cancel_listener_disconnected", error=str(error))
                await asyncio.sleep(self.RECONNECT_S)
