"""What each `aiwrap` command does. Each imports what it runs when it runs, and reads
only the settings it uses."""

from __future__ import annotations

import argparse
import gc
import sys

from core.settings import Settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from core.migrate import apply_schema

    settings = Settings.from_env(require=("DATABASE_URL",))
    print(apply_schema(settings.database_url).describe())
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    import uvicorn

    from core.logs import configure_logging
    from ingest.app import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    # Everything imported so far (nearly all of the objects ingest will ever hold)
    # lives as long as the process. Frozen, it is no longer traversed by every full
    # collection, each of which would otherwise stop ingest for about 0.1 s.
    gc.collect()
    gc.freeze()
    # A young generation ten times the default: a request allocates a few hundred
    # objects and frees nearly all of them itself, so most collections would only
    # traverse the requests in flight to find nothing to free.
    gc.set_threshold(7_000, 10, 10)
    uvicorn.run(
        create_app,
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,  # ours, configured above, renders uvicorn's lines too
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=args.grace,
        proxy_headers=True,
        server_header=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.logs import configure_logging
    from workers.supervisor import WorkerOptions, parse_queues, run_workers

    settings = Settings.from_env()  # fail here, once, rather than in every child
    configure_logging(settings.log_format, settings.log_level)
    try:
        queues = parse_queues(args.queues)
    except ValueError as error:
        print(f"aiwrap worker: {error}", file=sys.stderr)
        return 2
    return run_workers(
        WorkerOptions(
            processes=args.processes,
            threads=args.threads,
            queues=queues,
            grace_seconds=args.grace,
            metrics_port=args.metrics_port or None,
            metrics_host=args.metrics_host,
        )
    )


def cmd_dev(args: argparse.Namespace) -> int:
    from devstack.dev import run_dev

    return run_dev(data_dir=args.data_dir, port=args.port, reset=args.reset)


def cmd_model_server(args: argparse.Namespace) -> int:
    from devstack.model_server import serve

    serve(args.host, args.port)
    return 0


def cmd_send_webhook(args: argparse.Namespace) -> int:
    import os
    import time
    import uuid
    from pathlib import Path

    import httpx

    from devstack.clerk import sample_clerk_event, signed_request
    from devstack.local import DEFAULT_DATA_DIR, dev_env

    dev = dev_env(Path(args.data_dir))
    secret = (
        args.secret
        or os.environ.get("CLERK_WEBHOOK_SECRET", "").strip()
        or dev.get("CLERK_WEBHOOK_SECRET", "")
    )
    if not secret:
        print(
            "aiwrap send-webhook: no secret: pass --secret, set CLERK_WEBHOOK_SECRET, "
            f"or run `aiwrap dev` here so {DEFAULT_DATA_DIR} holds one.",
            file=sys.stderr,
        )
        return 2
    url = args.url or dev.get("AIWRAP_URL", "http://127.0.0.1:8000") + "/webhooks/clerk"
    event = sample_clerk_event(args.event_type, args.user_id, int(time.time() * 1000))
    body, headers = signed_request(secret, event, f"msg_{uuid.uuid4().hex}")
    response = httpx.post(url, content=body, headers=headers, timeout=10)
    print(response.status_code, response.text)
    return 0 if response.is_success else 1


def cmd_openapi(args: argparse.Namespace) -> int:
    import json

    from ingest.app import create_app
    from ingest.openapi import build_document

    # The document depends on the routes and models, not on any setting.
    app = create_app(Settings(log_level="WARNING"))
    print(json.dumps(build_document(app.routes), indent=2))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from pathlib import Path

    from devstack.local import private_key
    from devstack.tokens import session_token

    pem = private_key(Path(args.data_dir))
    if pem is None:
        print(
            f"aiwrap token: no dev key pair in {args.data_dir}: run `aiwrap dev` there first "
            "(its ingest trusts the key's tokens).",
            file=sys.stderr,
        )
        return 2
    print(session_token(pem, args.user_id, minutes=args.minutes, azp=args.azp or ""))
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from core.metering import load_prices, price_for
    from core.users import set_profile_now
    from devstack.local import dev_env

    # Without DATABASE_URL, the stack `aiwrap dev` runs from here.
    dev = {k: v for k, v in dev_env(Path(args.data_dir)).items() if k == "DATABASE_URL"}
    settings = Settings.from_env({**dev, **os.environ}, require=("DATABASE_URL",))
    if args.tokens < 0:
        print("aiwrap budget: TOKENS must be 0 (no cap) or more.", file=sys.stderr)
        return 2
    if args.model is not None and price_for(load_prices(settings.prices_path), args.model) is None:
        print(f"aiwrap budget: {args.model!r} is not a model with a price.", file=sys.stderr)
        return 2
    profile = set_profile_now(
        settings.database_url,
        args.user_id,
        monthly_token_budget=args.tokens,
        default_model=args.model,
        default_budget=settings.default_monthly_token_budget,
    )
    if profile is None:
        print(f"aiwrap budget: {args.user_id} was deleted; nothing changed.", file=sys.stderr)
        return 1
    print(
        f"{profile.user_id}: monthly_token_budget={profile.monthly_token_budget} "
        f"default_model={profile.default_model}"
    )
    return 0
