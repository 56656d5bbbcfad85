"""Clerk events shaped like the ones Clerk sends, signed as Svix signs them.

For trying a deployment by hand (`aiwrap send-webhook`), the tests and the benchmarks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook


def sample_clerk_event(event_type: str, user_id: str, now_ms: int) -> dict[str, Any]:
    """A Clerk event shaped like the ones Clerk sends, for trying a deployment by hand."""
    envelope: dict[str, Any] = {
        "object": "event",
        "type": event_type,
        "timestamp": now_ms,
        "instance_id": "ins_aiwrap_sample",
        "event_attributes": {
            "http_request": {"client_ip": "127.0.0.1", "user_agent": "aiwrap send-webhook"}
        },
    }
    if event_type == "user.deleted":
        return {**envelope, "data": {"object": "user", "id": user_id, "deleted": True}}
    email_id = f"idn_{user_id.removeprefix('user_')}"
    return {
        **envelope,
        "data": {
            "object": "user",
            "id": user_id,
            "username": None,
            "first_name": "Sample",
            "last_name": "User",
            "image_url": "https://img.clerk.com/sample.png",
            "email_addresses": [
                {
                    "object": "email_address",
                    "id": email_id,
                    "email_address": f"{user_id}@example.com",
                    "verification": {"status": "verified", "strategy": "email_code"},
                    "linked_to": [],
                }
            ],
            "primary_email_address_id": email_id,
            "phone_numbers": [],
            "primary_phone_number_id": None,
            "external_accounts": [],
            "public_metadata": {},
            "private_metadata": {},
            "unsafe_metadata": {},
            "password_enabled": True,
            "two_factor_enabled": False,
            "banned": False,
            "last_sign_in_at": None,
            "created_at": now_ms,
            "updated_at": now_ms,
        },
    }


def signed_request(secret: str, event: dict[str, Any], msg_id: str) -> tuple[bytes, dict[str, str]]:
    """`event` as a body and the Svix headers that sign it with `secret`."""
    body = json.dumps(event)
    now = datetime.now(UTC)
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    return body.encode(), headers
