"""`aiwrap migrate`: apply schema.sql and the schema's functions, and say what changed.

schema.sql holds the tables, indexes and constraints; each function is a file of its
own in core/sql/functions/. All of it applies in one transaction, idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg

from .db import connect
from .errors import SchemaError
from .sqlfiles import functions, statements

SQL = statements(__file__)


@dataclass(frozen=True)
class MigrationReport:
    """What one application of the schema changed."""

    created: tuple[str, ...]
    #: Functions that existed and now have another definition.
    replaced: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.replaced)

    def summary(self) -> str:
        """One line: how many objects were created and replaced."""
        if not self.changed:
            return "Schema is up to date: nothing to do."
        return (
            f"Applied the schema: created {len(self.created)} objects, replaced "
            f"{len(self.replaced)} functions (`aiwrap migrate` lists them)."
        )

    def describe(self) -> str:
        if not self.changed:
            return "Schema is up to date: nothing to do."
        lines = [
            f"Applied schema.sql: created {len(self.created)} objects"
            + (f", replaced {len(self.replaced)} functions." if self.replaced else ".")
        ]
        lines += [f"  + {item}" for item in self.created]
        lines += [f"  ~ {item}" for item in self.replaced]
        return "\n".join(lines)


def schema_path() -> Path:
    """Where schema.sql is: inside the installed package, or at the repository root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema.sql", here.parent / "schema.sql"):
        if candidate.exists():
            return candidate
    raise SchemaError("schema.sql is missing from this installation.")


def apply_schema(database_url: str) -> MigrationReport:
    """Apply schema.sql and the functions in one transaction; report the objects it
    created or replaced."""
    sql = schema_path().read_text()
    try:
        with connect(database_url, autocommit=False) as conn, conn.transaction():
            conn.execute(SQL["migration_lock"])
            before = {row[0] for row in conn.execute(SQL["catalog_objects"])}
            functions_before = dict(conn.execute(SQL["catalog_functions"]).fetchall())
            conn.execute(sql.encode())
            for _name, definition in functions():
                conn.execute(definition.encode())
            after = {row[0] for row in conn.execute(SQL["catalog_objects"])}
            functions_after = dict(conn.execute(SQL["catalog_functions"]).fetchall())
    except psycopg.Error as error:
        raise SchemaError(f"Could not apply schema.sql: {error}") from error
    created = (after - before) | (functions_after.keys() - functions_before.keys())
    replaced = [
        name
        for name, digest in functions_after.items()
        if functions_before.get(name, digest) != digest
    ]
    return MigrationReport(created=tuple(sorted(created)), replaced=tuple(sorted(replaced)))
