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
from .sqlfiles import functions

#: Functions in the public schema, by signature, with a digest of their definition:
#: `CREATE OR REPLACE` changes a function without creating anything.
FUNCTIONS = """
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       md5(pg_get_functiondef(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'public' AND p.prokind = 'f'
"""

#: Other objects in the public schema, as `kind name` strings, for the before/after diff.
CATALOG = """
SELECT 'table ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'r'
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'i'
UNION ALL
SELECT 'view ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'v'
UNION ALL
SELECT 'constraint ' || con.conname FROM pg_constraint con
  JOIN pg_namespace n ON n.oid = con.connamespace WHERE n.nspname = 'public'
"""

#: Serializes concurrent migrations; transaction-scoped, so PgBouncer-safe.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('aiwrap.migrate'))"


@dataclass(frozen=True)
class MigrationReport:
    """What one application of the schema changed."""

    created: tuple[str, ...]
    #: Functions that existed and now have another definition.
    replaced: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.replaced)

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
            conn.execute(MIGRATION_LOCK)
            before = {row[0] for row in conn.execute(CATALOG)}
            functions_before = dict(conn.execute(FUNCTIONS).fetchall())
            conn.execute(sql.encode())
            for _name, definition in functions():
                conn.execute(definition.encode())
            after = {row[0] for row in conn.execute(CATALOG)}
            functions_after = dict(conn.execute(FUNCTIONS).fetchall())
    except psycopg.Error as error:
        raise SchemaError(f"Could not apply schema.sql: {error}") from error
    created = (after - before) | (functions_after.keys() - functions_before.keys())
    replaced = [
        name
        for name, digest in functions_after.items()
        if functions_before.get(name, digest) != digest
    ]
    return MigrationReport(created=tuple(sorted(created)), replaced=tuple(sorted(replaced)))
