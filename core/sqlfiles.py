"""SQL lives in .sql files named after what they do, read once at import.

A module's statements are the files in the `sql/` folder beside it, by name:
`SQL = statements(__file__)`, then `SQL["finish_chat"]` is `sql/finish_chat.sql`.
The PL/pgSQL functions of the schema are `core/sql/functions/*.sql`, one each,
applied by `aiwrap migrate` after schema.sql (core/migrate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

#: The schema's functions, one file each, named after the function.
FUNCTIONS_DIR = Path(__file__).with_name("sql") / "functions"


def statements(module_file: str) -> Mapping[str, str]:
    """The statements in the `sql/` folder beside `module_file`, by file name."""
    folder = Path(module_file).with_name("sql")
    found = {path.stem: path.read_text() for path in sorted(folder.glob("*.sql"))}
    if not found:
        raise FileNotFoundError(f"No .sql files in {folder}.")
    return MappingProxyType(found)


def functions() -> list[tuple[str, str]]:
    """(name, CREATE OR REPLACE FUNCTION ...) for each of the schema's functions."""
    return [(path.stem, path.read_text()) for path in sorted(FUNCTIONS_DIR.glob("*.sql"))]
