"""PUT /v1/admin/users/{user_id}/profile: set a user's monthly token budget and default model.

Service keys only (no X-User-Id needed): a session token is 403 `service_key_required`.
A user aiwrap has not seen yet is provisioned first (workers/profiles.py); a deleted
(tombstoned) user is 410 `user_deleted`, and nothing is written.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from workers.profiles import set_profile

from .auth import require_service
from .errors import ApiError
from .requests import (
    InvalidInput,
    caller,
    check_priced,
    database,
    is_int,
    read_json,
    reject_unknown,
)
from .state import IngestState

PROFILE_FIELDS: Final = frozenset({"monthly_token_budget", "default_model"})
BIGINT_MAX: Final = 2**63 - 1


async def put_profile(request: Request) -> Response:
    state = IngestState.of(request)
    require_service(caller(request))
    user_id = request.path_params["user_id"]
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", user_id):
        raise InvalidInput("user_id", "must be a Clerk user id: 1 to 128 letters, digits, _ or -.")
    body = await read_json(request, state.settings.max_chat_bytes)
    reject_unknown(body, PROFILE_FIELDS)
    budget, model = body.get("monthly_token_budget"), body.get("default_model")
    if not body:
        raise InvalidInput("body", "set monthly_token_budget, default_model or both.")
    if budget is not None and (not is_int(budget) or not 0 <= budget <= BIGINT_MAX):
        raise InvalidInput("monthly_token_budget", "must be an integer, 0 (no cap) or more.")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise InvalidInput("default_model", "must be a model name.")
        check_priced(state, model, "default_model")
    async with database(state) as conn:
        profile = await set_profile(
            conn,
            user_id,
            monthly_token_budget=budget,
            default_model=model,
            default_budget=state.settings.default_monthly_token_budget,
        )
    if profile is None:
        raise ApiError(410, "user_deleted", "This user was deleted in Clerk.")
    return JSONResponse(
        {
            "user_id": profile.user_id,
            "monthly_token_budget": profile.monthly_token_budget,
            "default_model": profile.default_model,
        }
    )


routes: list[BaseRoute] = [
    Route("/v1/admin/users/{user_id}/profile", put_profile, methods=["PUT"]),
]
