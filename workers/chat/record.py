"""A chat's row in Postgres: opened before the model call, finished and metered after it.

Opening is one call of aiwrap_begin_chat, which refuses a chat that must not call the
model (deleted user, unpriced model, budget used up, cancelled first). Finishing is
one statement that finalises the `prompt_logs` row and inserts its `token_usage` row,
priced here: the usage row exists exactly when the row is finalised, and a second
run can add neither.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg.types.json import Jsonb

from core import metering, streams
from core.jobs import ChatJob
from core.logs import get_logger
from core.sqlfiles import statements
from core.storable import replaced_counts, storable, storable_json

from .. import metrics
from ..runtime import Runtime
from .reply import Outcome, Reply, estimate_tokens, outcome_of_row

log = get_logger(__name__)

SQL = statements(__file__)

#: What aiwrap_begin_chat's refusals say, for the row and the stream's error event.
REFUSALS: Final = {
    "user_deleted": "This user has been deleted.",
    "cancelled": "The chat was cancelled before it started.",
    "model_not_priced": "The model has no price.",
    "budget_exceeded": "The monthly token budget is used up.",
}


async def begin(
    rt: Runtime, job: ChatJob, *, cancelled: bool, refused_metadata: dict[str, Any]
) -> Outcome | None:
    """Open the exchange's row (None: go on and call the model), or say how it ended."""
    start = metering.month_start()
    opened = {"state": "running", "attempt": 1, "request": job.request_metadata()}
    if replaced := replaced_counts(prompt=job.prompt):
        opened["unstorable_replaced"] = replaced
    params: dict[str, Any] = {
        "id": job.id,
        "user_id": job.user_id,
        "model": job.model,
        "prompt": storable(job.prompt)[0],
        "metadata": Jsonb(storable_json(opened)),
        "default_budget": rt.settings.default_monthly_token_budget,
        "priced": metering.price_for(rt.prices, job.model) is not None,
        "cancelled": cancelled,
        "month_start": start,
        "month_end": metering.next_month(start),
    }
    # BEGIN, the call and COMMIT go out together; the row is read after.
    async with rt.pool.connection() as conn:
        async with conn.pipeline(), conn.transaction():
            cur = await conn.execute(SQL["begin_chat"], params)
        row = await cur.fetchone()
    assert row is not None
    if row["outcome"] == "started":
        return None
    if row["outcome"] == "finished":
        return outcome_of_row(row)
    code = row["outcome"]
    error = {"code": code, "message": REFUSALS[code]}
    if code == "user_deleted":  # nothing to log: the user row is gone for good
        log.warning("chat_refused_deleted_user", job_id=job.id, user_id=job.user_id)
        return Outcome("error", streams.ERROR, error)
    if code == "model_not_priced":
        error["message"] = f"Model {job.model!r} has no price."
    if code == "budget_exceeded":
        metrics.BUDGET_REFUSALS.inc()
    meta = {**refused_metadata, **_replaced(job, ""), "error": error}
    async with rt.pool.connection() as conn, conn.pipeline(), conn.transaction():
        await conn.execute(
            SQL["log_refused_chat"], {**params, "metadata": Jsonb(storable_json(meta))}
        )
    return Outcome("error", streams.ERROR, error)


async def finish(
    rt: Runtime,
    job: ChatJob,
    reply: Reply,
    *,
    completion: str,
    metadata: dict[str, Any],
    latency_ms: int,
) -> Outcome:
    """Finalise the row and meter the call, in one statement; say how the exchange ended."""
    price = metering.price_for(rt.prices, job.model)
    if reply.usage is not None:
        prompt_tokens, completion_tokens = reply.usage
    else:
        prompt_tokens = sum(estimate_tokens(m.text) for m in job.messages)
        completion_tokens = estimate_tokens(reply.text)
    cost = metering.cost_microcents(price, prompt_tokens, completion_tokens) if price else 0
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
        **metadata,
        **_replaced(job, completion),
        "usage_estimated": reply.usage is None and metered,
        "cost_microcents": cost,
        "status": status,
        "error": None if error is None else {"code": error[0], "message": error[1]},
    }
    # BEGIN, the statement and COMMIT in one round trip.
    async with rt.pool.connection() as conn, conn.pipeline(), conn.transaction():
        await conn.execute(
            SQL["finish_chat"],
            {
                "id": job.id,
                "completion": storable(completion)[0],
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_microcents": cost,
                "latency_ms": latency_ms,
                "status": status,
                "metadata": Jsonb(storable_json(meta)),
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


def _replaced(job: ChatJob, completion: str) -> dict[str, Any]:
    """The metadata that says which texts the row holds with characters replaced."""
    replaced = replaced_counts(prompt=job.prompt, completion=completion)
    return {"unstorable_replaced": replaced} if replaced else {}
