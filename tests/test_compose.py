"""docker-compose.yml, .env.example and docs/operations.md agree with each other and with aiwrap.

No Docker engine runs in CI, so this is the compose file's only check: its
structure, its variables and its commands, parsed, not run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from cli.main import build_parser
from core.settings import SETTINGS
from workers.supervisor import parse_queues

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Variables docker-compose.yml itself uses that are not aiwrap settings.
COMPOSE_ONLY = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "PGBOUNCER_POOL_SIZE",
    "AIWRAP_PORT",
}
SETTING_NAMES = {setting.name for setting in SETTINGS}

#: ${NAME}, ${NAME:-default}, ${NAME:?error} and friends; `$${...}` is a literal `$`.
SUBSTITUTION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
SERVICE_ROW = re.compile(r"^\|\s*`([a-z][a-z0-9-]*)`\s*\|")

APP_SERVICES = ("migrate", "ingest", "worker")
RESTARTING = {"always", "unless-stopped", "on-failure"}


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def env_example() -> dict[str, str]:
    """Every variable .env.example names, set (`X=1`) or only described (`# X=`)."""
    names = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := ENV_LINE.match(line):
            names[match.group(1)] = match.group(2)
    return names


def documented_services() -> list[str]:
    """The service names in the first column of docs/operations.md's Services table."""
    text = OPERATIONS.read_text()
    section = text.split("### Services", 1)[1].split("\n#", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := SERVICE_ROW.match(line))]


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${...} substitution, enough to read the URLs this file builds."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        current = env.get(name, "")
        if operator in (":-", "-"):
            return current or argument
        if operator in (":?", "?"):
            assert current, f"{name} is required: {argument}"
        return current

    return SUBSTITUTION.sub(substitute, value).replace("$$", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def example_env() -> dict[str, str]:
    return {**env_example(), "POSTGRES_PASSWORD": "example-password"}


def test_every_service_the_operations_guide_names_exists_and_no_other() -> None:
    documented = documented_services()
    assert documented, "docs/operations.md has no Services table"
    assert sorted(documented) == sorted(services())
    assert set(documented) >= {"postgres", "pgbouncer", "redis", *APP_SERVICES}


def test_every_variable_compose_uses_is_a_setting_or_a_documented_compose_variable() -> None:
    used = {m.group(1) for m in SUBSTITUTION.finditer(COMPOSE.read_text())}
    assert used
    assert used <= SETTING_NAMES | COMPOSE_ONLY, used - SETTING_NAMES - COMPOSE_ONLY
    assert used <= set(env_example()), f"undocumented in .env.example: {used - set(env_example())}"


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    names = set(env_example())
    assert names - SETTING_NAMES <= COMPOSE_ONLY, names - SETTING_NAMES - COMPOSE_ONLY
    assert names >= SETTING_NAMES, f"settings missing from .env.example: {SETTING_NAMES - names}"
    assert names >= COMPOSE_ONLY
    operations = OPERATIONS.read_text()
    assert all(f"`{name}`" in operations for name in COMPOSE_ONLY)


def test_env_example_holds_no_secret_values() -> None:
    secrets = {setting.name for setting in SETTINGS if setting.secret} | {"POSTGRES_PASSWORD"}
    assert {name: env_example()[name] for name in secrets} == dict.fromkeys(secrets, "")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_runs_a_real_aiwrap_subcommand(name: str) -> None:
    command = services()[name]["command"]
    assert isinstance(command, list) and command[0] == "aiwrap", command
    parser = build_parser()
    try:
        args = parser.parse_args(command[1:])
    except SystemExit:
        pytest.fail(f"{name}: `{' '.join(command)}` is not a valid aiwrap command")
    assert args.command == name
    if name == "worker":
        assert parse_queues(args.queues)


def test_the_pgbouncer_image_is_pinned_to_a_release_tag_of_its_repository() -> None:
    # edoburu/pgbouncer publishes its repository's tags (v1.24.1-p1), not bare versions.
    image = services()["pgbouncer"]["image"]
    assert re.fullmatch(r"edoburu/pgbouncer:v\d+\.\d+\.\d+-p\d+", image), image


def test_ingest_and_workers_reach_postgres_only_through_pgbouncer() -> None:
    env = example_env()
    for name in ("ingest", "worker"):
        service = services()[name]
        url = interpolate(environment(service)["DATABASE_URL"], env)
        assert urlsplit(url).hostname == "pgbouncer", url
        assert conninfo_to_dict(url)["host"] == "pgbouncer"
        assert "postgres" not in service["depends_on"]
        assert service["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"

    migrate = interpolate(environment(services()["migrate"])["DATABASE_URL"], env)
    assert urlsplit(migrate).hostname == "postgres"
    pgbouncer = environment(services()["pgbouncer"])
    assert pgbouncer["DB_HOST"] == "postgres"
    assert pgbouncer["POOL_MODE"] == "transaction"


def test_app_services_share_one_redis_and_read_secrets_from_the_env_file() -> None:
    for name in APP_SERVICES:
        service = services()[name]
        assert service["env_file"] in (".env", [".env"])
        assert urlsplit(environment(service)["REDIS_URL"]).hostname == "redis"
        assert service["build"] == "."


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services()
            assert condition["condition"] in ("service_healthy", "service_completed_successfully")


def test_long_running_services_restart_and_workers_can_be_scaled() -> None:
    for name, service in services().items():
        if name != "migrate":
            assert service.get("restart") in RESTARTING, f"{name} does not restart"
    worker = services()["worker"]
    # `--scale worker=N` needs no fixed container name and no fixed host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert services()["migrate"].get("restart", "no") == "no"


def test_the_image_runs_as_a_non_root_user_from_an_installed_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim\b", dockerfile, re.MULTILINE)
    # The versions the tests ran, then the package itself.
    assert re.search(
        r"^RUN pip install -r requirements/embedded\.lock && pip install --no-deps \. ",
        dockerfile,
        re.MULTILINE,
    )
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored
