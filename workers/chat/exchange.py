"""One run of one chat: lease the job, open its row, relay the model's reply, finish.

The exchange opens its `prompt_logs` row (workers/chat/record.py) while the SDK
builds the model call, which waits at its gate (workers/chat/upstream.py) until
the row is open. It streams the reply, appends each piece of text to the chat's
Redis stream, finishes the row and its `token_usage` row in one transaction, then
writes one terminal stream event.

Exactly once, and what an SSE reader sees when a job runs twice:
- A lease key (`aiwrap:chat:{id}:lease`, renewed every few seconds) lets only
  one worker run a job; a duplicate delivery finds it held and does nothing.
  A crashed worker's lease expires (10 s) before its message is redelivered
  (the broker's 15 s heartbeat timeout).
- A job whose stream already holds its terminal event, or whose row is
  finalised, does nothing (a finalised row whose terminal event was lost in a
  crash gets that event written from the row).
- A job redelivered mid-stream reads the text its stream already holds, calls
  the model again from the start, and publishes only what goes beyond that
  text: a reader has neither a gap nor a repeat. The completion recorded is the
  text readers saw; a retried reply that disagrees with what was already
  streamed is flagged `resume_diverged` in metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import redis as redis_sync

from core import streams
from core.faults import is_transient
from core.jobs import ChatJob
from core.logs import get_logger

from ..runtime import Runtime
from . import record, upstream
from .model_call import CANCEL_WAIT_S, ModelCall, abandon
from .reply import Outcome, Reply, since

log = get_logger(__name__)

T = TypeVar("T")

#: The job lease: long enough to survive a slow Redis, shorter than the broker's
#: heartbeat timeout so a dead worker's lease is gone before its job comes back.
LEASE_MS: Final = 10_000
LEASE_RENEW_S: Final = 3.0

#: Database retries of a transient failure (connection lost, pool timeout).
DB_BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0)

RENEW_LEASE: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
RELEASE_LEASE: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


class Chat:
    """One run of one chat job on one worker."""

    def __init__(self, runtime: Runtime, job: ChatJob) -> None:
        self.rt, self.job = runtime, job
        self.redis = runtime.redis
        self.earlier = ""  # text the stream already held: a previous run's
        self.earlier_tool_deltas = 0  # and the tool-call deltas it held
        self.fresh: list[str] = []  # text this run added to the stream
        self.published_len = 0
        self.diverged = False
        self.started = time.perf_counter()
        #: From enqueue to this run's start: measured now, not when the metadata is written.
        self.queue_ms = since(job.requested_at)
        self.gate = upstream.Gate()

    @property
    def published(self) -> str:
        """All the text the chat's stream holds: what readers saw."""
        return self.earlier + "".join(self.fresh)

    async def run(self) -> None:
        job, cancels = self.job, self.rt.cancels
        token = uuid.uuid4().hex
        lease = streams.lease_key(job.id)
        # The SDK builds the model call (milliseconds of CPU) while the lease is
        # taken and the row opens; the call waits at the gate until the chat is
        # admitted, and is abandoned, having sent nothing, if it is not.
        reply = Reply()
        model_call = ModelCall(self.rt.openai, job, self.gate, self._deliver, self._deliver_tools)
        with upstream.gated(self.gate):
            call = asyncio.create_task(model_call.run(reply))
        try:
            # Watched before the flag is read: a cancel then lands either in the
            # flag, read with the lease, or on the listener, which sets the event.
            with cancels.watch(job.id) as cancel:
                await cancels.wait_ready(1.0)
                taken = await streams.take(self.redis, job.id, lease, token, LEASE_MS)
                if taken is None:
                    log.info("chat_already_running", job_id=job.id)
                    return
                if taken.cancelled:
                    cancel.set()
                # Stopped by an event, not cancelled: redis-py can swallow a
                # cancellation that lands mid-command; the renewer would never end.
                done = asyncio.Event()
                renewer = asyncio.create_task(self._renew_lease(lease, token, done))
                try:
                    await self._run(taken.events, cancel, reply, call)
                finally:
                    done.set()
                    await asyncio.wait({renewer}, timeout=LEASE_RENEW_S)
                    with contextlib.suppress(redis_sync.RedisError):
                        await self.redis.eval(RELEASE_LEASE, 1, lease, token)
        finally:
            if not self.gate.opened_at:
                await abandon(call)  # never admitted: it never got past the gate

    async def _renew_lease(self, lease: str, token: str, done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), LEASE_RENEW_S)
                return
            with contextlib.suppress(redis_sync.RedisError):
                await self.redis.eval(RENEW_LEASE, 1, lease, token, LEASE_MS)

    async def _run(
        self,
        events: list[streams.StreamEvent],
        cancel: asyncio.Event,
        reply: Reply,
        call: asyncio.Task[None],
    ) -> None:
        job = self.job
        if any(e.terminal for e in events):
            log.info("chat_already_finished", job_id=job.id)
            return
        self.earlier = "".join(
            str(e.data.get("content", "")) for e in events if e.event == streams.DELTA
        )
        self.earlier_tool_deltas = sum(
            1 for e in events if e.event == streams.DELTA and "tool_calls" in e.data
        )
        self.published_len = len(self.earlier)
        # The row opens while the record says "running"; a refusal's final
        # status is written only after both.
        outcome, _ = await asyncio.gather(
            with_db_retries(
                lambda: record.begin(
                    self.rt,
                    job,
                    cancelled=cancel.is_set(),
                    refused_metadata=self._metadata(Reply()),
                )
            ),
            streams.write_job_record(
                self.redis,
                job.id,
                streams.JobRecord(job.user_id, job.model, streams.RUNNING, job.requested_at),
                self.rt.settings.stream_ttl_seconds,
            ),
        )
        if outcome is None:
            self.gate.open()
            await self._converse(reply, cancel, call)
            outcome = await self._finish(reply)
        await self._end(outcome)

    async def _finish(self, reply: Reply) -> Outcome:
        """Finish the row and meter the call. Should Postgres refuse the statement for
        good, the exchange is finished as an error with what is known, metered all the
        same, rather than left running with its usage lost."""

        def finish(completion: str, **extra: Any) -> Awaitable[Outcome]:
            return record.finish(
                self.rt,
                self.job,
                reply,
                completion=completion,
                metadata={**self._metadata(reply), **extra},
                latency_ms=int((time.perf_counter() - self.started) * 1e3),
            )

        try:
            return await with_db_retries(lambda: finish(self.published))
        except Exception as error:
            if is_transient(error):
                raise  # the whole run is retried, and resumes
            refused = type(error).__name__
            log.error("chat_finish_refused", job_id=self.job.id, error=refused)
            reply.error = ("internal_error", "The exchange could not be recorded as sent.")
            chars = len(self.published)
            return await with_db_retries(
                lambda: finish("", finish_refused=refused, completion_chars=chars)
            )

    async def _end(self, outcome: Outcome) -> None:
        await streams.finish(
            self.redis,
            self.job.id,
            outcome.event,
            outcome.data,
            outcome.status,
            self.rt.settings.stream_ttl_seconds,
        )
        log.info("chat_finished", job_id=self.job.id, status=outcome.status, terminal=outcome.event)

    async def _converse(
        self, reply: Reply, cancel: asyncio.Event, call: asyncio.Task[None]
    ) -> None:
        """Talk to the model until it is done, fails for good, or the chat is cancelled."""
        waiter = asyncio.create_task(cancel.wait())
        try:
            await asyncio.wait({call, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not call.done():
                # The flag stops publishing even if a library swallows the cancel.
                reply.cancelled = True
                call.cancel()
                await asyncio.wait({call}, timeout=CANCEL_WAIT_S)
        if not reply.cancelled:
            call.result()

    async def _deliver(self, reply: Reply, piece: str) -> None:
        if reply.cancelled:
            raise asyncio.CancelledError
        before = reply.length
        reply.pieces.append(piece)
        after = reply.length = before + len(piece)
        if before < len(self.earlier):  # text a previous run already streamed
            seen = self.earlier[before:after]
            if not piece.startswith(seen):
                self.diverged = True
        if after <= self.published_len:
            return
        fresh = piece[max(self.published_len - before, 0) :]
        # The stream's first entry creates it: give it its time to live at once.
        ttl = self.rt.settings.stream_ttl_seconds if self.published_len == 0 else None
        await streams.publish(
            self.redis, self.job.id, streams.DELTA, {"content": fresh}, ttl_seconds=ttl
        )
        self.fresh.append(fresh)
        self.published_len = after

    async def _deliver_tools(self, reply: Reply, deltas: list[dict[str, Any]]) -> None:
        """Relay a chunk's tool-call deltas as they came; a rerun relays only those beyond
        what the stream already holds, as with text."""
        if reply.cancelled:
            raise asyncio.CancelledError
        reply.add_tool_deltas(deltas)
        reply.tool_deltas += 1
        if reply.tool_deltas <= self.earlier_tool_deltas:
            return
        first = self.published_len == 0 and reply.tool_deltas == 1
        await streams.publish(
            self.redis,
            self.job.id,
            streams.DELTA,
            {"tool_calls": deltas},
            ttl_seconds=self.rt.settings.stream_ttl_seconds if first else None,
        )

    def _metadata(self, reply: Reply) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "state": "finished",
            "request": self.job.request_metadata(),
            "finish_reason": reply.finish_reason,
            "ttft_ms": reply.ttft_ms,
            "queue_ms": self.queue_ms,
            "upstream_calls": reply.upstream_calls,
        }
        if reply.refusal is not None:
            meta["refusal"] = reply.refusal
        if reply.tool_calls:  # the exchange's record keeps what the model asked to call
            meta["tool_calls"] = reply.assembled_tool_calls()
        if reply.cancelled:
            meta["cancelled"] = True
        if self.published_len > reply.length or self.diverged:
            meta["resume_diverged"] = self.diverged
        return meta


async def with_db_retries(step: Callable[[], Awaitable[T]]) -> T:
    """Run `step`, retrying a transient failure a few times with backoff."""
    for backoff in (*DB_BACKOFF_S, None):
        try:
            return await step()
        except Exception as error:
            if backoff is None or not is_transient(error):
                raise
            log.warning("chat_db_retry", error=str(error), delay_s=backoff)
            await asyncio.sleep(backoff)
    raise AssertionError("unreachable")
