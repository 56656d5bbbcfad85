"""msgspec against pydantic on aiwrap's hot paths: which one the typed models use.

    python -m bench.models [--rounds 20000]

Each row decodes and validates the same bytes, or builds the same job, with aiwrap's
msgspec models (core/jobs.py, ingest/bodies.py) and with pydantic models of the same
fields and constraints, and reports microseconds per call (the best of 5 runs of
`--rounds` calls, so the machine's noise inflates neither). The webhook row is what
ingest does with every Clerk webhook; the chat rows what POST /v1/chat and the chat
worker do with every chat.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from core import decoding, jobs
from devstack.clerk import sample_clerk_event
from ingest.bodies import ChatRequest

# -- the same contracts in pydantic ---------------------------------------------------------


class PClerkEvent(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: str
    data: dict[str, Any]
    timestamp: Annotated[int, Field(ge=0)] | None = None


class PChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class PChatRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    messages: Annotated[list[PChatMessage], Field(min_length=1)] | None = None
    prompt: str | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None


class PChatJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    id: Annotated[str, Field(pattern=r"^[0-9a-f-]{36}$")]
    user_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,128}$")]
    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[PChatMessage], Field(min_length=1)]
    requested_at: str
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None


# -- the calls --------------------------------------------------------------------------------


def best_us(call: Callable[[], object], rounds: int) -> float:
    """Microseconds per call: the best of 5 runs of `rounds` calls."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, time.perf_counter() - started)
    return round(best / rounds * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="calls per run")
    args = parser.parse_args()

    webhook = json.dumps(
        sample_clerk_event("user.created", "user_bench", int(time.time() * 1000))
    ).encode()
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello to the benchmark. " * 8},
    ]
    chat_body = json.dumps(
        {"messages": conversation, "model": "gpt-4o-mini", "max_tokens": 256}
    ).encode()
    job = jobs.new_job("user_bench", conversation, model="gpt-4o-mini", max_tokens=256)
    job_message = json.loads(json.dumps(jobs.msgspec.to_builtins(job)))
    job_fields = {**job_message, "id": str(uuid.uuid4())}
    pydantic_job = PChatJob.model_validate(job_fields)

    rows = {
        "webhook: decode and check the Clerk envelope": (
            lambda: decoding.decode(jobs.ClerkEvent, webhook, root="event"),
            lambda: PClerkEvent.model_validate_json(webhook),
        ),
        "POST /v1/chat: decode and validate the request": (
            lambda: decoding.decode(ChatRequest, chat_body),
            lambda: PChatRequest.model_validate_json(chat_body),
        ),
        "worker: validate the queued job (a decoded dict)": (
            lambda: jobs.read_chat_job(job_fields),
            lambda: PChatJob.model_validate(job_fields),
        ),
        "ingest: encode the job for the queue": (
            lambda: jobs.msgspec.json.encode(job),
            lambda: pydantic_job.model_dump_json(),
        ),
    }
    figures = {
        name: {
            "msgspec_us": best_us(ours, args.rounds),
            "pydantic_us": best_us(theirs, args.rounds),
        }
        for name, (ours, theirs) in rows.items()
    }
    for figure in figures.values():
        figure["ratio"] = round(figure["pydantic_us"] / figure["msgspec_us"], 1)
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "msgspec": jobs.msgspec.__version__,
                "pydantic": pydantic.VERSION,
                "per_call": figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
