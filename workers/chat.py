"""The chat actor: one exchange with the model, streamed to Redis, logged and metered.

`run_chat(job)` (queue `chat`) takes the job dict of docs/chat-contract.md. It
opens the `prompt_logs` row (completion NULL) in one call of aiwrap_begin_chat,
which refuses a chat that must not call the model; meanwhile the SDK builds the
model call, held at its gate (workers/upstream.py) until the row is open. It
streams the reply, appends each piece of text to the chat's Redis stream, and
ends with one transaction that finalises the row and inserts the `token_usage`
row, then one terminal stream event.

Concurrency. `run_chat` is async: every chat a process runs shares its one
event loop, its one database connection (held only for the two short
transactions, never while the model talks) and its one HTTP connection pool.
Dramatiq runs one message per worker thread, so the thread count is the limit
on concurrent chats per process: `aiwrap worker --queues chat --threads 500`
holds 500 upstream streams in one process.

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
- The finalising statement inserts `token_usage` with ON CONFLICT
  (prompt_log_id) DO NOTHING, and only while the row is still unfinalised.

Upstream errors (429, 5xx, timeouts, dropped connections) are retried with
backoff while the call has produced no text; after text, the exchange ends
`error` with what was received kept and metered.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

import dramatiq
import httpx2
import openai
import redis as redis_sync
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from openai.types.chat import ChatCompletionMessageParam
from psycopg.types.json import Jsonb

from . import metrics, streams, upstream
from .broker import CHAT_QUEUE
from .db import is_transient, schema_behind
from .errors import AiwrapError
from .logs import get_logger
from .metering import cost_microcents, month_start, next_month, price_for
from .runtime import Runtime

log = get_logger(__name__)

ACTOR_NAME: Final = "run_chat"
ROLES: Final = frozenset({"system", "developer", "user", "assistant"})

#: The job lease: long enough to survive a slow Redis, shorter than the broker's
#: heartbeat timeout so a dead worker's lease is gone before its job comes back.
LEASE_MS: Final = 10_000
LEASE_RENEW_S: Final = 3.0

#: Upstream calls per exchange while no text has arrived, and the waits between.
UPSTREAM_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0)
#: A Retry-After longer than this is not worth holding a stream open for.
MAX_RETRY_AFTER_S: Final = 5.0
#: Database retries of a transient failure (connection lost, pool timeout).
DB_BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0)

#: Whole runs of a job after an infrastructure failure, and how long one may take.
MAX_RUN_RETRIES: Final = 5
TIME_LIMIT_MS: Final = 30 * 60_000

#: Seconds a cancelled upstream call gets to close its connection.
CANCEL_WAIT_S: Final = 2.0

#: Tokens as the estimate counts them when the upstream sends no usage.
TOKEN = re.compile(r"\w+|[^\w\s]")

RENEW_LEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
RELEASE_LEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)

#: Open the exchange: see aiwrap_begin_chat in schema.sql. One statement, so one
#: round trip, with its plans cached in the server backend (PgBouncer-safe).
BEGIN_CHAT = """
SELECT * FROM aiwrap_begin_chat(
    %(id)s, %(user_id)s, %(model)s, %(prompt)s, %(metadata)s, %(default_budget)s,
    %(priced)s, %(cancelled)s, %(month_start)s, %(month_end)s)
"""

#: What aiwrap_begin_chat's refusals say, for the row and the stream's error event.
REFUSALS: Final = {
    "user_deleted": "This user has been deleted.",
    "cancelled": "The chat was cancelled before it started.",
    "model_not_priced": "The model has no price.",
    "budget_exceeded": "The monthly token budget is used up.",
}

#: An exchange refused before any model call: logged, finished, never metered.
REFUSED_LOG = """
INSERT INTO prompt_logs (id, user_id, model, prompt, completion, status, latency_ms, metadata)
VALUES (%(id)s, %(user_id)s, %(model)s, %(prompt)s, '', 'error', 0, %(metadata)s)
ON CONFLICT (id) DO NOTHING
"""

#: Finalise the row and meter the call in one statement: the usage row exists
#: exactly when the row is finalised, and a second run can add neither.
FINISH_LOG = """
WITH finished AS (
    UPDATE prompt_logs
       SET completion = %(completion)s, prompt_tokens = %(prompt_tokens)s,
           completion_tokens = %(completion_tokens)s, latency_ms = %(latency_ms)s,
           status = %(status)s,
           metadata = %(metadata)s::jsonb
               || jsonb_strip_nulls(jsonb_build_object('attempt', metadata->'attempt'))
     WHERE id = %(id)s AND completion IS NULL
 RETURNING id, user_id, model
)
INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens, cost_microcents,
                         prompt_log_id)
SELECT user_id, model, %(prompt_tokens)s, %(completion_tokens)s, %(cost_microcents)s, id
  FROM finished
 WHERE %(metered)s
ON CONFLICT (prompt_log_id) DO NOTHING
"""


class InvalidChatJob(AiwrapError):
    """A chat job message that can never run, whatever the retries."""


@dataclass(frozen=True)
class ChatJob:
    """One chat request, as the `run_chat` message carries it."""

    id: str
    user_id: str
    model: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int | None
    temperature: float | None
    requested_at: str

    @classmethod
    def parse(cls, data: Any) -> ChatJob:
        """Read a job message; raise InvalidChatJob saying what is wrong with it."""
        if not isinstance(data, dict):
            raise InvalidChatJob("the job is not a JSON object")
        try:
            job_id = str(uuid.UUID(str(data.get("id"))))
        except ValueError:
            raise InvalidChatJob("id is not a UUID") from None
        for name in ("user_id", "model", "requested_at"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise InvalidChatJob(f"{name} must be a non-empty string")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidChatJob("messages must be a non-empty list")
        for i, m in enumerate(messages):
            if not (
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            ):
                raise InvalidChatJob(
                    f"messages[{i}] needs a role ({', '.join(sorted(ROLES))}) and string content"
                )
        max_tokens, temperature = data.get("max_tokens"), data.get("temperature")
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise InvalidChatJob("max_tokens must be a positive integer")
        if temperature is not None and (
            type(temperature) not in (int, float) or not 0 <= temperature <= 2
        ):
            raise InvalidChatJob("temperature must be a number from 0 to 2")
        return cls(
            id=job_id,
            user_id=data["user_id"],
            model=data["model"],
            messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
            max_tokens=max_tokens,
            temperature=None if temperature is None else float(temperature),
            requested_at=data["requested_at"],
        )

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "model": self.model,
            "messages": [dict(m) for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "requested_at": self.requested_at,
        }

    @property
    def prompt(self) -> str:
        """The text logged as the prompt: the last user message."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]

    def request_metadata(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "messages": len(self.messages),
            "requested_at": self.requested_at,
        }


def new_job(
    user_id: str,
    messages: Sequence[dict[str, str]],
    *,
    model: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
    job_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Build a `run_chat` job message; raise InvalidChatJob when it could never run."""
    data = {
        "id": job_id or str(uuid.uuid4()),
        "user_id": user_id,
        "model": model,
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "requested_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
    }
    return ChatJob.parse(data).as_message()


def enqueue_chat(
    broker: RedisBroker, job: dict[str, Any], *, stream_ttl_seconds: int = 3600
) -> str:
    """Queue a chat for a Python app and return its id (blocking; use from sync code).

    `job` comes from `new_job`. The answer streams to `aiwrap:chat:{id}:events`
    (read it with `workers.streams.read_events`), and is logged in prompt_logs.
    """
    chat = ChatJob.parse(job)
    client: redis_sync.Redis = broker.client
    record = streams.JobRecord(chat.user_id, chat.model, streams.QUEUED, chat.requested_at)
    with client.pipeline(transaction=True) as pipe:
        for command in streams.job_record_commands(chat.id, record, stream_ttl_seconds):
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        pipe.execute()
    broker.enqueue(
        dramatiq.Message(
            queue_name=CHAT_QUEUE,
            actor_name=ACTOR_NAME,
            args=(chat.as_message(),),
            kwargs={},
            options={},
        )
    )
    return chat.id


def estimate_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks), for when usage is missing."""
    return len(TOKEN.findall(text))


@dataclass
class Reply:
    """What came back from the model, kept as it arrives so a cancel loses nothing."""

    pieces: list[str] = field(default_factory=list)
    length: int = 0  # of the text in pieces, kept as they arrive
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None
    ttft_ms: float | None = None
    opened: bool = False  # the upstream accepted the call, so it is metered
    upstream_calls: int = 0
    error: tuple[str, str] | None = None
    refusal: str | None = None
    cancelled: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class Outcome:
    """How an exchange ended: its status and the terminal stream event."""

    status: str
    event: streams.EventName
    data: dict[str, Any]


class Chat:
    """One run of one chat job on one worker."""

    def __init__(self, runtime: Runtime, job: ChatJob) -> None:
        self.rt, self.job = runtime, job
        self.redis = runtime.redis
        self.earlier = ""  # text the stream already held: a previous run's
        self.fresh: list[str] = []  # text this run added to the stream
        self.published_len = 0
        self.diverged = False
        self.started = time.perf_counter()
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
        with upstream.gated(self.gate):
            call = asyncio.create_task(self._call_with_retries(reply))
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
                await _abandon(call)  # never admitted: it never got past the gate

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
        self.published_len = len(self.earlier)
        # The row opens while the record says "running"; a refusal's final
        # status is written only after both.
        outcome, _ = await asyncio.gather(
            _with_db_retries(lambda: self._begin(cancel.is_set())),
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
            outcome = await _with_db_retries(lambda: self._finish(reply))
        await self._end(outcome)

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

    async def _begin(self, cancelled: bool) -> Outcome | None:
        """Open the exchange's row, or say why it must not call the model."""
        job = self.job
        start = month_start()
        opened = {"state": "running", "attempt": 1, "request": job.request_metadata()}
        params: dict[str, Any] = {
            "id": job.id,
            "user_id": job.user_id,
            "model": job.model,
            "prompt": job.prompt,
            "metadata": Jsonb(opened),
            "default_budget": self.rt.settings.default_monthly_token_budget,
            "priced": price_for(self.rt.prices, job.model) is not None,
            "cancelled": cancelled,
            "month_start": start,
            "month_end": next_month(start),
        }
        # BEGIN, the call and COMMIT go out together; the row is read after.
        async with self.rt.pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                cur = await conn.execute(BEGIN_CHAT, params)
            row = await cur.fetchone()
        assert row is not None
        if row["outcome"] == "started":
            return None
        if row["outcome"] == "finished":
            return _outcome_of_row(row)
        code = row["outcome"]
        error = {"code": code, "message": REFUSALS[code]}
        if code == "user_deleted":  # nothing to log: the user row is gone for good
            log.warning("chat_refused_deleted_user", job_id=job.id, user_id=job.user_id)
            return Outcome("error", streams.ERROR, error)
        if code == "model_not_priced":
            error["message"] = f"Model {job.model!r} has no price."
        if code == "budget_exceeded":
            metrics.BUDGET_REFUSALS.inc()
        meta = {**self._metadata(Reply()), "error": error}
        async with self.rt.pool.connection() as conn, conn.pipeline(), conn.transaction():
            await conn.execute(REFUSED_LOG, {**params, "metadata": Jsonb(meta)})
        return Outcome("error", streams.ERROR, error)

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

    async def _call_with_retries(self, reply: Reply) -> None:
        for attempt, backoff in enumerate((*UPSTREAM_BACKOFF_S, None)):
            try:
                await self._call(reply)
                return
            except openai.BadRequestError as error:
                metrics.UPSTREAM_ERRORS.labels(_error_kind(error)).inc()
                if error.code == "content_policy_violation":
                    reply.refusal = error.message
                else:
                    reply.error = ("upstream_rejected", error.message)
                return
            except openai.APIStatusError as error:
                metrics.UPSTREAM_ERRORS.labels(_error_kind(error)).inc()
                retryable = error.status_code in (408, 409, 429) or error.status_code >= 500
                reply.error = ("upstream_error", f"The model answered {error.status_code}.")
                wait = _retry_after(error.response.headers.get("retry-after"))
            except (openai.APIError, httpx2.HTTPError) as error:
                metrics.UPSTREAM_ERRORS.labels(_error_kind(error)).inc()
                retryable = True
                reply.error = ("upstream_unavailable", f"The model stream failed: {error!r}")
                wait = None
            if not retryable or reply.pieces or backoff is None:
                return
            delay = backoff * (0.5 + random.random()) if wait is None else wait  # noqa: S311
            log.info(
                "chat_upstream_retry",
                job_id=self.job.id,
                attempt=attempt + 1,
                error=reply.error[0],
                delay_s=round(delay, 3),
            )
            reply.error = None
            await asyncio.sleep(delay)

    async def _call(self, reply: Reply) -> None:
        job = self.job
        called = time.perf_counter()
        reply.upstream_calls += 1
        async with self.rt.openai.chat.completions.with_streaming_response.create(
            model=job.model,
            messages=cast("list[ChatCompletionMessageParam]", [dict(m) for m in job.messages]),
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=openai.omit if job.max_tokens is None else job.max_tokens,
            temperature=openai.omit if job.temperature is None else job.temperature,
        ) as response:
            reply.opened = True
            async for piece in upstream.pieces(response):
                if piece.usage is not None:
                    reply.usage = piece.usage
                if piece.content:
                    if reply.ttft_ms is None:
                        sent = max(called, self.gate.opened_at or called)
                        reply.ttft_ms = round((time.perf_counter() - sent) * 1e3, 3)
                        metrics.TIME_TO_FIRST_TOKEN.labels(job.model).observe(reply.ttft_ms / 1e3)
                    await self._deliver(reply, piece.content)
                if piece.refusal:
                    reply.refusal = (reply.refusal or "") + piece.refusal
                if piece.finish_reason:
                    reply.finish_reason = piece.finish_reason

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

    async def _finish(self, reply: Reply) -> Outcome:
        """Finalise the row and meter the call, in one statement."""
        job = self.job
        price = price_for(self.rt.prices, job.model)
        if reply.usage is not None:
            prompt_tokens, completion_tokens = reply.usage
        else:
            prompt_tokens = sum(estimate_tokens(m["content"]) for m in job.messages)
            completion_tokens = estimate_tokens(reply.text)
        cost = cost_microcents(price, prompt_tokens, completion_tokens) if price else 0
        status, error = "ok", reply.error
        if reply.cancelled:
            status, error = "error", ("cancelled", "The chat was cancelled.")
        elif reply.refusal is not None or reply.finish_reason == "content_filter":
            status, error = "filtered", None
        elif error is None and reply.finish_reason is None:
            error = ("upstream_incomplete", "The model stream ended without a finish reason.")
            metrics.UPSTREAM_ERRORS.labels("cut_off").inc()
        if error is not None and status == "ok":
            status = "error"
        metered = reply.opened
        if not metered:
            prompt_tokens = completion_tokens = cost = 0
        meta = {
            **self._metadata(reply),
            "usage_estimated": reply.usage is None and metered,
            "cost_microcents": cost,
            "status": status,
            "error": None if error is None else {"code": error[0], "message": error[1]},
        }
        # BEGIN, the statement and COMMIT in one round trip.
        async with self.rt.pool.connection() as conn, conn.pipeline(), conn.transaction():
            await conn.execute(
                FINISH_LOG,
                {
                    "id": job.id,
                    "completion": self.published,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "cost_microcents": cost,
                    "latency_ms": int((time.perf_counter() - self.started) * 1e3),
                    "status": status,
                    "metadata": Jsonb(meta),
                    "metered": metered,
                },
            )
        if metered:
            metrics.TOKENS.labels(job.model, "prompt").inc(prompt_tokens)
            metrics.TOKENS.labels(job.model, "completion").inc(completion_tokens)
            metrics.COST.labels(job.model).inc(cost)
        if error is not None and status == "error":
            return Outcome(status, streams.ERROR, {"code": error[0], "message": error[1]})
        return Outcome(
            status,
            streams.DONE,
            {
                "status": status,
                "finish_reason": reply.finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_microcents": cost,
            },
        )

    def _metadata(self, reply: Reply) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "state": "finished",
            "request": self.job.request_metadata(),
            "finish_reason": reply.finish_reason,
            "ttft_ms": reply.ttft_ms,
            "queue_ms": _since(self.job.requested_at),
            "upstream_calls": reply.upstream_calls,
        }
        if reply.refusal is not None:
            meta["refusal"] = reply.refusal
        if reply.cancelled:
            meta["cancelled"] = True
        if self.published_len > reply.length or self.diverged:
            meta["resume_diverged"] = self.diverged
        return meta


def _error_kind(error: Exception) -> str:
    """The `kind` label of aiwrap_upstream_errors_total for a failed model call."""
    if isinstance(error, openai.BadRequestError):
        return "refused" if error.code == "content_policy_violation" else "bad_request"
    if isinstance(error, openai.APIStatusError):
        if error.status_code == 429:
            return "rate_limited"
        return "server_error" if error.status_code >= 500 else "client_error"
    if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException):
        return "timeout"
    return "connection"


def _outcome_of_row(row: dict[str, Any]) -> Outcome:
    """The terminal event of an exchange already finalised, rebuilt from its row."""
    meta = row["metadata"] or {}
    error = meta.get("error")
    if row["status"] == "error" and isinstance(error, dict):
        return Outcome(
            "error", streams.ERROR, {"code": error.get("code"), "message": error.get("message")}
        )
    return Outcome(
        row["status"],
        streams.DONE,
        {
            "status": row["status"],
            "finish_reason": meta.get("finish_reason"),
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost_microcents": meta.get("cost_microcents", 0),
        },
    )


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _since(iso: str) -> float | None:
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - then).total_seconds() * 1e3, 3)


async def _abandon(call: asyncio.Task[None]) -> None:
    """Cancel a model call that must not go on, and wait (a while) for it to stop."""
    call.cancel()
    await asyncio.wait({call}, timeout=CANCEL_WAIT_S)
    if call.done() and not call.cancelled():
        call.exception()  # retrieved: a call that failed before its gate says nothing


async def _with_db_retries(step: Any) -> Any:
    for backoff in (*DB_BACKOFF_S, None):
        try:
            return await step()
        except Exception as error:
            if backoff is None or not is_transient(error):
                raise
            log.warning("chat_db_retry", error=str(error), delay_s=backoff)
            await asyncio.sleep(backoff)
    raise AssertionError("unreachable")


def declare(broker: Broker, runtime: Runtime) -> None:
    """Declare the chat actor on `broker`."""

    async def run_chat(job: dict[str, Any]) -> None:
        try:
            chat = ChatJob.parse(job)
        except InvalidChatJob as error:
            log.error(
                "chat_job_invalid",
                reason=str(error),
                job_id=job.get("id") if isinstance(job, dict) else None,
            )
            return
        await Chat(runtime, chat).run()

    dramatiq.actor(
        actor_name=ACTOR_NAME,
        queue_name=CHAT_QUEUE,
        broker=broker,
        # Model errors are handled inside; only an outage of Postgres or Redis
        # longer than the in-run retries fails a run, and a new run resumes it.
        retry_when=_should_retry,
        min_backoff=1_000,
        max_backoff=30_000,
        # Dramatiq's default limit (10 min) would cut a long generation short.
        time_limit=TIME_LIMIT_MS,
    )(run_chat)


def _should_retry(retries: int, error: BaseException) -> bool:
    transient = (
        is_transient(error)
        or schema_behind(error)  # aiwrap_begin_chat is missing until `aiwrap migrate` runs
        or isinstance(error, redis_sync.RedisError | OSError)
    )
    return transient and retries < MAX_RUN_RETRIES
