"""One chat's call to the model: streamed, retried while it has produced no text.

Upstream errors (429, 5xx, timeouts, dropped connections) are retried with backoff
while the call has produced no text; after text, the exchange ends `error` with
what was received kept and metered. A refused request (400) is not retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import httpx2
import msgspec
import openai
from openai.types.chat import ChatCompletionMessageParam

from core.jobs import ChatJob
from core.logs import get_logger

from .. import metrics
from . import upstream
from .reply import Reply

log = get_logger(__name__)

#: Upstream calls per exchange while no text has arrived, and the waits between.
UPSTREAM_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0)
#: A Retry-After longer than this is not worth holding a stream open for.
MAX_RETRY_AFTER_S: Final = 5.0
#: Seconds a cancelled upstream call gets to close its connection.
CANCEL_WAIT_S: Final = 2.0

#: What the chat does with each piece of text as it arrives.
Deliver = Callable[[Reply, str], Awaitable[None]]
#: What the chat does with each chunk's tool-call deltas.
DeliverTools = Callable[[Reply, list[dict[str, Any]]], Awaitable[None]]


class ModelCall:
    """The model call of one run of a chat, delivering its text piece by piece."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        job: ChatJob,
        gate: upstream.Gate,
        deliver: Deliver,
        deliver_tools: DeliverTools,
    ) -> None:
        self.client, self.job, self.gate = client, job, gate
        self.deliver, self.deliver_tools = deliver, deliver_tools

    async def run(self, reply: Reply) -> None:
        """Call the model, retrying while no text has arrived; say how it ended in `reply`."""
        for attempt, backoff in enumerate((*UPSTREAM_BACKOFF_S, None)):
            try:
                await self._call(reply)
                return
            except openai.BadRequestError as error:
                metrics.UPSTREAM_ERRORS.labels(error_kind(error)).inc()
                if error.code == "content_policy_violation":
                    reply.refusal = error.message
                else:
                    reply.error = ("upstream_rejected", error.message)
                return
            except openai.APIStatusError as error:
                metrics.UPSTREAM_ERRORS.labels(error_kind(error)).inc()
                retryable = error.status_code in (408, 409, 429) or error.status_code >= 500
                reply.error = ("upstream_error", f"The model answered {error.status_code}.")
                wait = retry_after(error.response.headers.get("retry-after"))
            except (openai.APIError, httpx2.HTTPError) as error:
                metrics.UPSTREAM_ERRORS.labels(error_kind(error)).inc()
                retryable = True
                reply.error = ("upstream_unavailable", f"The model stream failed: {error!r}")
                wait = None
            if not retryable or reply.pieces or reply.tool_deltas or backoff is None:
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
        messages = [msgspec.to_builtins(m) for m in job.messages]
        async with self.client.chat.completions.with_streaming_response.create(
            model=job.model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=openai.omit if job.max_tokens is None else job.max_tokens,
            temperature=openai.omit if job.temperature is None else job.temperature,
            **job.params.given(),
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
                    await self.deliver(reply, piece.content)
                if piece.tool_calls:
                    await self.deliver_tools(reply, piece.tool_calls)
                if piece.refusal:
                    reply.refusal = (reply.refusal or "") + piece.refusal
                if piece.finish_reason:
                    reply.finish_reason = piece.finish_reason


def error_kind(error: Exception) -> str:
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


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds, bounded by MAX_RETRY_AFTER_S."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def abandon(call: asyncio.Task[None]) -> None:
    """Cancel a model call that must not go on, and wait (a while) for it to stop."""
    call.cancel()
    await asyncio.wait({call}, timeout=CANCEL_WAIT_S)
    if call.done() and not call.cancelled():
        call.exception()  # retrieved: a call that failed before its gate says nothing
