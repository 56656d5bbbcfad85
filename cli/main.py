"""The `aiwrap` command: migrate, ingest, worker, dev, and a few helpers.

Each command imports what it runs when it runs, and reads only the settings it uses:
`aiwrap --help` loads no server, and `aiwrap migrate` needs only DATABASE_URL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from core.errors import AiwrapError

from . import commands


def dev_data(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--data-dir",
        default=".aiwrap",
        help="the data folder of `aiwrap dev`, whose settings fill in what is not set "
        "(default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    from core.queues import QUEUES

    parser = argparse.ArgumentParser(
        prog="aiwrap",
        description="The backend for AI wrappers: Clerk sync, streamed chat, metering, budgets.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = subcommands.add_parser("migrate", help="apply schema.sql to DATABASE_URL")
    migrate.set_defaults(handler=commands.cmd_migrate)

    ingest = subcommands.add_parser("ingest", help="serve the HTTP API (uvicorn)")
    ingest.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    ingest.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    ingest.add_argument(
        "--grace",
        type=int,
        default=30,
        help="seconds open requests get to finish on shutdown (default %(default)s)",
    )
    ingest.set_defaults(handler=commands.cmd_ingest)

    worker = subcommands.add_parser("worker", help="run Dramatiq worker processes")
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
    worker.set_defaults(handler=commands.cmd_worker)

    dev = subcommands.add_parser(
        "dev", help="run the whole stack locally, embedded services included"
    )
    dev.add_argument(
        "--data-dir",
        default=".aiwrap",
        help="where embedded Postgres and Redis keep their data (default %(default)s)",
    )
    dev.add_argument("--port", type=int, default=8000, help="ingest port (default %(default)s)")
    dev.add_argument(
        "--reset",
        action="store_true",
        help="remove the data folder first: an empty database and queue, new local secrets",
    )
    dev.set_defaults(handler=commands.cmd_dev)

    model = subcommands.add_parser("model-server", help="serve the local OpenAI-compatible model")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=8001)
    model.set_defaults(handler=commands.cmd_model_server)

    openapi = subcommands.add_parser(
        "openapi", help="print the HTTP API's OpenAPI 3.1 document (as GET /openapi.json)"
    )
    openapi.set_defaults(handler=commands.cmd_openapi)

    budget = subcommands.add_parser(
        "budget", help="set a user's monthly token budget (0 = no cap) and default model"
    )
    budget.add_argument("user_id", metavar="USER_ID", help="Clerk user id")
    budget.add_argument("tokens", metavar="TOKENS", type=int, help="tokens a month; 0 = no cap")
    budget.add_argument("--model", help="also set the user's default model")
    dev_data(budget)
    budget.set_defaults(handler=commands.cmd_budget)

    send = subcommands.add_parser(
        "send-webhook", help="sign a sample Clerk event with the local secret and POST it"
    )
    send.add_argument(
        "event_type", metavar="EVENT_TYPE", choices=["user.created", "user.updated", "user.deleted"]
    )
    send.add_argument("user_id", metavar="USER_ID", help="Clerk user id, e.g. user_demo")
    send.add_argument(
        "--url",
        help="the webhook endpoint (default: that of the `aiwrap dev` run from here, or "
        "http://127.0.0.1:8000/webhooks/clerk)",
    )
    send.add_argument(
        "--secret",
        help="whsec_ secret (default: CLERK_WEBHOOK_SECRET, then that of `aiwrap dev`)",
    )
    dev_data(send)
    send.set_defaults(handler=commands.cmd_send_webhook)

    token = subcommands.add_parser(
        "token", help="print a Clerk-shaped session token for USER_ID that `aiwrap dev` accepts"
    )
    token.add_argument("user_id", metavar="USER_ID", help="Clerk user id, e.g. user_demo")
    token.add_argument(
        "--minutes", type=int, default=60, help="until it expires (default %(default)s)"
    )
    token.add_argument("--azp", help="the authorized party (origin) to put in the token")
    dev_data(token)
    token.set_defaults(handler=commands.cmd_token)

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
