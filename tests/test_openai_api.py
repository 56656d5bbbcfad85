"""POST /v1/chat/completions and GET /v1/models, driven by the openai Python SDK itself,
sync and async, streamed and whole, against the real ingest, worker and model server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import dramatiq
import httpx
import openai
import psycopg
import pytest

from core.settings import Settings
from devstack.replies import count_tokens, reply_text
from ingest.app import create_app
from workers.broker import build_broker

from .chat_worker_support import Row
from .support import ServerThread, behind_model, eventually
from .test_metrics import sample

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"prompt": {"type": "string"}}},
        },
    }
]


@dataclass
class Stack:
    """Ingest, a worker and the model server, and the settings they share."""

    settings: Settings
    url: str
    model_url: str


@pytest.fixture
def stack(settings: Settings, model_url: str) -> Iterator[Stack]:
    worker_settings = behind_model(settings, model_url)
    broker = build_broker(worker_settings)
    dramatiq.set_broker(broker)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        with ServerThread(create_app(settings)) as server:
            yield Stack(settings, f"{server.url}/v1", model_url)
    finally:
        worker.stop()
        broker.close()


def client(stack: Stack, user_id: str | None, **options: Any) -> openai.OpenAI:
    headers = {"X-User-Id": user_id} if user_id else {}
    return openai.OpenAI(
        api_key=stack.settings.api_keys[0],
        base_url=stack.url,
        default_headers=headers,
        **options,
    )


def refusals(stack: Stack) -> float:
    """How many 402s ingest has answered on the route, from its /metrics."""
    text = httpx.get(
        stack.url.removesuffix("/v1") + "/metrics",
        headers={"Authorization": f"Bearer {stack.settings.api_keys[0]}"},
    ).text
    return (
        sample(text, "aiwrap_http_requests_total", route="/v1/chat/completions", status="402")
        or 0.0
    )


def exchange(db: psycopg.Connection[Row], chat_id: str) -> tuple[Row, Row | None]:
    row = db.execute("SELECT * FROM prompt_logs WHERE id = %s", (chat_id,)).fetchone()
    usage = db.execute("SELECT * FROM token_usage WHERE prompt_log_id = %s", (chat_id,)).fetchone()
    assert row is not None
    return row, usage


def test_a_whole_completion_is_the_models_answer_logged_and_metered(
    stack: Stack, db: psycopg.Connection[Row], user_id: str
) -> None:
    sdk = client(stack, user_id)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=40,
        seed=7,
        top_p=0.5,
    )
    completion = raw.parse()
    chat_id = raw.headers["x-chat-id"]
    assert completion.id == f"chatcmpl-{chat_id}"
    assert completion.choices[0].message.content == reply_text("hi")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    row, usage = exchange(db, chat_id)
    assert row["completion"] == reply_text("hi") and row["status"] == "ok"
    assert usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert completion.usage.completion_tokens == count_tokens(reply_text("hi"))
    # The parameters reached the model as they were sent.
    recent = httpx.get(f"{stack.model_url.removesuffix('/v1')}/_stats").json()["recent"]
    fields = next(
        r["fields"]
        for r in reversed(recent)
        if r["completion_tokens"] == usage["completion_tokens"]
    )
    assert {"seed", "top_p", "max_tokens", "stream"} <= set(fields)


def test_a_streamed_completion_arrives_in_chunks_then_usage_then_done(
    stack: Stack, db: psycopg.Connection[Row], user_id: str
) -> None:
    sdk = client(stack, user_id)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chat_id = raw.headers["x-chat-id"]
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text("stream me")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    row, usage = exchange(db, chat_id)
    assert usage is not None and usage["completion_tokens"] == chunks[-1].usage.completion_tokens
    assert row["completion"] == text


def test_the_async_client_streams_too(stack: Stack, user_id: str) -> None:
    async def go() -> str:
        sdk = openai.AsyncOpenAI(
            api_key=stack.settings.api_keys[0],
            base_url=stack.url,
            default_headers={"X-User-Id": user_id},
        )
        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await sdk.close()
        return text

    assert asyncio.run(go()) == reply_text("async")


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_call_is_relayed_and_kept_in_the_record(
    stack: Stack, db: psycopg.Connection[Row], user_id: str, streamed: bool
) -> None:
    sdk = client(stack, user_id)
    messages: Any = [{"role": "user", "content": "find cats [[tool_call=1]]"}]
    if streamed:
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS, stream=True
        )
        chat_id = raw.headers["x-chat-id"]
        chunks = list(raw.parse())
        deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
        name = deltas[0].function.name if deltas[0].function else None
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        raw_whole = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS
        )
        chat_id = raw_whole.headers["x-chat-id"]
        choice = raw_whole.parse().choices[0]
        [call] = choice.message.tool_calls or []
        assert call.type == "function"
        name, arguments, finish = call.function.name, call.function.arguments, choice.finish_reason
    assert (name, json.loads(arguments), finish) == (
        "lookup",
        {"prompt": "find cats"},
        "tool_calls",
    )
    row, usage = exchange(db, chat_id)
    [kept] = row["metadata"]["tool_calls"]
    assert kept["function"] == {"name": "lookup", "arguments": arguments}
    assert usage is not None and usage["completion_tokens"] > 0


def test_a_model_cut_mid_stream_makes_the_sdk_raise_and_the_exchange_is_still_metered(
    stack: Stack, db: psycopg.Connection[Row], user_id: str
) -> None:
    sdk = client(stack, user_id)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "cut [[cut_after=3]]"}],
        stream=True,
    )
    chat_id = raw.headers["x-chat-id"]
    with pytest.raises(openai.APIError, match=r"finish reason|failed"):
        for _ in raw.parse():
            pass
    row, usage = exchange(db, chat_id)
    assert row["status"] == "error" and usage is not None


def test_errors_arrive_as_the_sdks_own_exceptions(
    stack: Stack, db: psycopg.Connection[Row], user_id: str
) -> None:
    sdk = client(stack, user_id, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"logit_bias_typo": {}},
        )
    assert bad.value.param == "logit_bias_typo"
    with pytest.raises(openai.BadRequestError, match="no-such-model"):
        sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    wrong = openai.OpenAI(
        api_key="aiw_not_a_key_0123456789abcdef", base_url=stack.url, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    # A spent budget is 402, which the SDK does not retry: one request, one refusal.
    db.execute('INSERT INTO "user" (id) VALUES (%s) ON CONFLICT DO NOTHING', (user_id,))
    db.execute(
        "INSERT INTO user_profiles (user_id, monthly_token_budget) VALUES (%s, 1)"
        " ON CONFLICT (user_id) DO UPDATE SET monthly_token_budget = 1",
        (user_id,),
    )
    db.execute(
        "INSERT INTO token_usage (user_id, model, prompt_tokens) VALUES (%s, 'gpt-4o-mini', 5)",
        (user_id,),
    )
    retrying = client(stack, user_id)  # the SDK's default: 2 retries
    with pytest.raises(openai.APIStatusError) as spent:
        retrying.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert spent.value.status_code == 402 and spent.value.code == "budget_exceeded"
    db.execute("INSERT INTO user_tombstones VALUES (%s, now())", (user_id,))
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


def test_a_service_key_may_name_its_user_in_the_request(
    stack: Stack, db: psycopg.Connection[Row], user_id: str
) -> None:
    sdk = client(stack, None)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user=user_id
    )
    row, _ = exchange(db, raw.headers["x-chat-id"])
    assert row["user_id"] == user_id
    with pytest.raises(openai.AuthenticationError, match="X-User-Id"):
        client(stack, None, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


def test_the_models_are_the_priced_ones(stack: Stack, user_id: str) -> None:
    names = [m.id for m in client(stack, user_id).models.list()]
    assert "gpt-4o-mini" in names and names == sorted(names)


def test_a_client_that_goes_away_mid_stream_stops_nothing(
    stack: Stack, db: psycopg.Connection[Row], user_id: str
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "leave early [[delay_ms=30 words=20]]"}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {stack.settings.api_keys[0]}", "X-User-Id": user_id}
    with httpx.stream("POST", f"{stack.url}/chat/completions", json=body, headers=headers) as r:
        chat_id = r.headers["x-chat-id"]
        next(r.iter_lines())  # the first chunk, then the client hangs up
    finished = eventually(
        lambda: exchange(db, chat_id)[0]["completion"] is not None, 20, "the exchange to end"
    )
    row, usage = exchange(db, chat_id)
    assert finished and row["status"] == "ok"
    assert row["completion"] == reply_text("leave early", 20)
    assert usage is not None


def test_the_chat_id_reads_resumes_and_cancels_through_the_native_routes(
    stack: Stack, user_id: str
) -> None:
    raw = client(stack, user_id).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "by id"}]
    )
    chat_id = raw.headers["x-chat-id"]
    native = stack.url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {stack.settings.api_keys[0]}", "X-User-Id": user_id}
    recorded = httpx.get(f"{native}/v1/chat/{chat_id}", headers=headers).json()
    assert (recorded["status"], recorded["completion"]) == ("ok", reply_text("by id"))
    replayed = httpx.get(f"{native}/v1/chat/{chat_id}/stream", headers=headers).text
    assert "event: done" in replayed
    cancelled = httpx.delete(f"{native}/v1/chat/{chat_id}", headers=headers)
    assert cancelled.status_code == 409  # it already finished


def test_a_body_over_the_limit_is_413_and_redis_down_is_503_in_openais_shape(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    sdk = client(stack, user_id, max_retries=0)
    huge: Any = [{"role": "user", "content": "x" * (settings.max_chat_bytes + 1)}]
    with pytest.raises(openai.APIStatusError) as too_large:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=huge)
    assert too_large.value.status_code == 413
    assert too_large.value.code == "request_too_large"
    # An ingest whose Redis is gone: nothing accepted, a 503 the SDK may retry.
    away = replace(settings, redis_url="redis://127.0.0.1:1/0")
    with ServerThread(create_app(away)) as server:
        down = openai.OpenAI(
            api_key=settings.api_keys[0],
            base_url=f"{server.url}/v1",
            default_headers={"X-User-Id": user_id},
            max_retries=0,
        )
        with pytest.raises(openai.InternalServerError) as unavailable:
            down.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "queue_unavailable"
