"""The tree is the architecture: who may import whom, no import circle, modules of a size
a reader can hold, and commands that load only what they run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ingest", "workers", "cli", "devstack")

#: Who may import whom. The core imports none of the others; the two halves only the core.
ALLOWED = {
    "core": {"core"},
    "ingest": {"core", "ingest"},
    "workers": {"core", "workers"},
    "devstack": {"core", "devstack"},
    "cli": {"core", "ingest", "workers", "devstack", "cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    ours = {m for m in found if m.split(".")[0] in PACKAGES}
    return {m for m in ours if m in MODULES} | {
        m.rpartition(".")[0] for m in ours if m not in MODULES and m.rpartition(".")[0] in MODULES
    }


SOURCES = {
    module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
}
MODULES = set(SOURCES)


def test_each_part_imports_only_what_it_may() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, path in SOURCES.items()
        for target in imports_of(path)
        if target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    ]
    assert wrong == []


def test_there_is_no_import_circle_not_even_through_a_late_import() -> None:
    graph = {
        name: {t for t in imports_of(path) if t != name and SOURCES[t].name != "__init__.py"}
        for name, path in SOURCES.items()
    }
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_layout_check_sees_imports_inside_functions() -> None:
    # cli.commands imports the app only inside the command that serves it.
    assert "ingest.app" in imports_of(SOURCES["cli.commands"])


@pytest.mark.parametrize("path", sorted(SOURCES.values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_longer_than_a_reader_can_hold(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 320, f"{lines} lines: split it by what its parts do"


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("test_*.py")), ids=lambda p: p.name)
def test_no_test_file_is_longer_than_a_reader_can_hold(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 520, f"{lines} lines: split it by behaviour"


def loaded_by(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after `statement`."""
    script = (
        f"{statement}\nimport sys\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


def test_ingest_loads_neither_the_model_sdk_nor_the_actors() -> None:
    loaded = loaded_by("import ingest.app")
    assert "ingest" in loaded
    assert {"openai", "workers", "httpx2"} & loaded == set()


def test_the_command_line_loads_no_server_to_print_its_help() -> None:
    loaded = loaded_by("import cli.main; cli.main.build_parser()")
    assert "cli" in loaded
    assert {"starlette", "uvicorn", "dramatiq", "openai", "psycopg", "redis"} & loaded == set()
