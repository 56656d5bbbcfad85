"""Open streams are capped per user and per process, and however many are open, webhooks,
chats and readiness answer: streams read Redis on connections of their own (ingest/slots.py).

Every stream here is a real HTTP connection to uvicorn on loopback, held open in the
relay's blocking read of a chat that has no worker behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from core.settings import Settings
from ingest.app import create_app

from .chat_support import as_user, fake_job, other_user
from .clerk_support import T0, Version, new_user_id, user_event
from .support import ServerThread, with_settings
from .test_identity_http import signed

#: Seconds any one step here may take; each step is bounded, and so is the whole test.
STEP_S = 30


async def open_streams(
    client: httpx.AsyncClient, settings: Settings, owners: list[tuple[str, str]]
) -> list[httpx.Response]:
    """One stream per (user, chat id), all at once; each response is open until closed."""

    async def one(user_id: str, chat_id: str) -> httpx.Response:
        request = client.build_request(
            "GET", f"/v1/chat/{chat_id}/stream", headers=as_user(settings, user_id)
        )
        return await client.send(request, stream=True)

    return list(await asyncio.gather(*(one(user, chat) for user, chat in owners)))


def streaming(responses: list[httpx.Response]) -> list[httpx.Response]:
    return [r for r in responses if r.status_code == 200]


async def assert_refused(responses: list[httpx.Response], whose: str) -> None:
    for response in responses:
        await response.aread()
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "2"
        error = response.json()["error"]
        assert error["code"] == "too_many_streams"
        assert error["message"].startswith(whose)


async def assert_others_answer(client: httpx.AsyncClient, settings: Settings) -> None:
    """A webhook, a chat and readiness, from callers who hold no stream, all succeed."""
    event = user_event("user.created", Version(new_user_id(), T0))
    body = json.dumps(event)
    webhook = await client.post(
        "/webhooks/clerk", content=body, headers=signed(settings.clerk_webhook_secret, body)
    )
    assert webhook.status_code == 200, webhook.text
    chat = await client.post(
        "/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, other_user())
    )
    assert chat.status_code == 202, chat.text
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text


def against_ingest(settings: Settings, test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> Any:
    async def go() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP_S, limits=limits) as client:
            await asyncio.wait_for(test(client), 4 * STEP_S)

    with ServerThread(create_app(settings)) as server:
        asyncio.run(go())


def test_one_user_with_300_streams_holds_its_cap_and_stalls_no_one(settings: Settings) -> None:
    settings = with_settings(settings, user_max_streams=20)
    user_id = other_user()
    owners = [(user_id, fake_job(settings, user_id)) for _ in range(300)]

    async def test(client: httpx.AsyncClient) -> None:
        responses = await open_streams(client, settings, owners)
        held = streaming(responses)
        assert len(held) == 20
        await assert_refused([r for r in responses if r not in held], "This user")
        await assert_others_answer(client, settings)
        # Its streams closed, the user may open as many again.
        for response in held:
            await response.aclose()
        again = await open_streams(client, settings, owners[:20])
        assert len(streaming(again)) == 20
        for response in again:
            await response.aclose()

    against_ingest(settings, test)


def test_past_the_process_cap_a_stream_is_refused_until_one_closes(settings: Settings) -> None:
    # More streams than redis-py's default pool of 100, from users each under their cap.
    settings = with_settings(settings, max_streams=150, user_max_streams=20)
    users = [other_user() for _ in range(8)]
    owners = [(user, fake_job(settings, user)) for user in users for _ in range(20)]

    async def test(client: httpx.AsyncClient) -> None:
        responses = await open_streams(client, settings, owners)
        held = streaming(responses)
        assert len(held) == 150
        await assert_refused([r for r in responses if r not in held], "This server")
        await assert_others_answer(client, settings)
        await held[0].aclose()
        # The slot is back once the server sees the client gone: poll, bounded.
        for _ in range(50):
            (late,) = await open_streams(client, settings, owners[-1:])
            if late.status_code == 200:
                break
            await late.aclose()
            await asyncio.sleep(0.1)
        assert late.status_code == 200
        for response in [*held[1:], late]:
            await response.aclose()

    against_ingest(settings, test)
