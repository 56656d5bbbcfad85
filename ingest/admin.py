"""PUT /v1/admin/users/{user_id}/profile: set a user's monthly token budget and default model.

Service keys only (no X-User-Id needed): a session token is 403 `service_key_required`.
A user aiwrap has not seen yet is provisioned first (core/users.py); a deleted
(tombstoned) user is 410 `user_deleted`, and nothing is written.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core.errors import InvalidInput
from core.messages import USER_ID, UserId
from core.users import set_profile

from . import auth
from .auth import require_service
from .bodies import Profile, ProfileUpdate
from .errors import ApiError
from .openapi import (
    DATABASE_DOWN,
    UNAUTHENTICATED,
    Answer,
    Operation,
    Parameter,
    documented,
    failure,
)
from .requests import caller, check_priced, database, read_model
from .responses import BodyResponse
from .state import IngestState


@documented(
    Operation(
        "putProfile",
        "admin",
        "Set a user's budget and default model",
        security=auth.SERVICE,
        request=ProfileUpdate,
        parameters=[Parameter("user_id", "path", "The Clerk user id.", UserId)],
        answers=[
            Answer(200, "The user's settings now.", Profile),
            failure(
                400,
                "A field or the user id is not valid, the body is not a JSON object, or "
                "the model has no price.",
                "invalid_request",
                "invalid_json",
                "unknown_model",
            ),
            UNAUTHENTICATED,
            failure(403, "A session token, not a service key.", "service_key_required"),
            failure(410, "The user was deleted in Clerk; nothing was written.", "user_deleted"),
            failure(413, "The body is too large.", "request_too_large"),
            DATABASE_DOWN,
        ],
    )
)
async def put_profile(request: Request) -> Response:
    """A user aiwrap has not seen yet is provisioned first, so the setting sticks and
    Clerk's later user.created fills in the rest."""
    state = IngestState.of(request)
    require_service(caller(request))
    user_id = request.path_params["user_id"]
    if not USER_ID.fullmatch(user_id):
        raise InvalidInput("user_id", "must be a Clerk user id: 1 to 128 letters, digits, _ or -.")
    body = await read_model(request, ProfileUpdate, state.settings.max_chat_bytes)
    if body.default_model is not None:
        check_priced(state, body.default_model, "default_model")
    async with database(state) as conn:
        profile = await set_profile(
            conn,
            user_id,
            monthly_token_budget=body.monthly_token_budget,
            default_model=body.default_model,
            default_budget=state.settings.default_monthly_token_budget,
        )
    if profile is None:
        raise ApiError(410, "user_deleted", "This user was deleted in Clerk.")
    return BodyResponse(
        Profile(profile.user_id, profile.monthly_token_budget, profile.default_model)
    )


routes: list[BaseRoute] = [
    Route("/v1/admin/users/{user_id}/profile", put_profile, methods=["PUT"]),
]
