"""The `aiwrap` command: migrate, ingest, worker, dev, and a few helpers.

Each command imports what it runs when it runs, and reads only the settings it uses:
`aiwrap --help` loads no server, and `aiwrap migrate` needs only DATABASE_URL.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from core.errors import AiwrapError
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

    return run_dev(data_dir=args.data_dir, port=args.port)


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
    from devstack.dev import dev_secrets

    dev_file = Path(".aiwrap") / "dev-secrets.json"
    secret = args.secret or os.environ.get("CLERK_WEBHOOK_SECRET", "").strip()
    if not secret and dev_file.exists():
        secret = dev_secrets(dev_file.parent)["CLERK_WEBHOOK_SECRET"]
    if not secret:
        print(
            "aiwrap send-webhook: no secret: pass --secret, set CLERK_WEBHOOK_SECRET, "
            f"or run `aiwrap dev` here so {dev_file} exists.",
            file=sys.stderr,
        )
        return 2
    event = sample_clerk_event(args.event_type, args.user_id, int(time.time() * 1000))
    body, headers = signed_request(secret, event, f"msg_{uuid.uuid4().hex}")
    response = httpx.post(args.url, content=body, headers=headers, timeout=10)
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


def cmd_budget(args: argparse.Namespace) -> int:
    from core.metering import load_prices, price_for
    from core.users import set_profile_now

    settings = Settings.from_env(require=("DATABASE_URL",))
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


def build_parser() -> argparse.ArgumentParser:
    from core.queues import QUEUES

    parser = argparse.ArgumentParser(
        prog="aiwrap",
        description="The backend for AI wrappers: Clerk sync, streamed chat, metering, budgets.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="apply schema.sql to DATABASE_URL")
    migrate.set_defaults(handler=cmd_migrate)

    ingest = commands.add_parser("ingest", help="serve the HTTP API (uvicorn)")
    ingest.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    ingest.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    ingest.add_argument(
        "--grace",
        type=int,
        default=30,
        help="seconds open requests get to finish on shutdown (default %(default)s)",
    )
    ingest.set_defaults(handler=cmd_ingest)

    worker = commands.add_parser("worker", help="run Dramatiq worker processes")
    worker.add_argument(
        "--processes", type=int, default=1, help="worker processes (default %(default)s)"
    )
    worker.add_argument(
        "--threads",
        type=int,
        default=32,  # WorkerOptions.threads, not imported here: it loads the broker
        help="threads per process = messages in flight per process (default %(default)s)",
    )
    worker.add_argument(
        "--queues",
        nargs="+",
        default=list(QUEUES),
        metavar="QUEUE",
        help=f"queues to consume (default: {' '.join(QUEUES)})",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds in-flight messages get to finish on SIGTERM (default %(default)s)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=9191,
        help="serve Prometheus metrics of all processes here; 0 turns them off "
        "(default %(default)s)",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for metrics (default %(default)s)"
    )
    worker.set_defaults(handler=cmd_worker)

    dev = commands.add_parser("dev", help="run the whole stack locally, embedded services included")
    dev.add_argument(
        "--data-dir",
        default=".aiwrap",
        help="where embedded Postgres and Redis keep their data (default %(default)s)",
    )
    dev.add_argument("--port", type=int, default=8000, help="ingest port (default %(default)s)")
    dev.set_defaults(handler=cmd_dev)

    model = commands.add_parser("model-server", help="serve the local OpenAI-compatible model")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=8001)
    model.set_defaults(handler=cmd_model_server)

    openapi = commands.add_parser(
        "openapi", help="print the HTTP API's OpenAPI 3.1 document (as GET /openapi.json)"
    )
    openapi.set_defaults(handler=cmd_openapi)

    budget = commands.add_parser(
        "budget", help="set a user's monthly token budget (0 = no cap) and default model"
    )
    budget.add_argument("user_id", metavar="USER_ID", help="Clerk user id")
    budget.add_argument("tokens", metavar="TOKENS", type=int, help="tokens a month; 0 = no cap")
    budget.add_argument("--model", help="also set the user's default model")
    budget.set_defaults(handler=cmd_budget)

    send = commands.add_parser(
        "send-webhook", help="sign a sample Clerk event with the local secret and POST it"
    )
    send.add_argument(
        "event_type", metavar="EVENT_TYPE", choices=["user.created", "user.updated", "user.deleted"]
    )
    send.add_argument("user_id", metavar="USER_ID", help="Clerk user id, e.g. user_demo")
    send.add_argument(
        "--url",
        default="http://127.0.0.1:8000/webhooks/clerk",
        help="the webhook endpoint (default %(default)s)",
    )
    send.add_argument(
        "--secret",
        help="whsec_ secret (default: CLERK_WEBHOOK_SECRET, then .aiwrap/dev-secrets.json)",
    )
    send.set_defaults(handler=cmd_send_webhook)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except AiwrapError as error:
        print(f"aiwrap {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
