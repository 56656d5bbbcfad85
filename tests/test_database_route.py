"""The code under test reaches Postgres the way this run says: directly or through PgBouncer.

`scripts/test` runs the identity and chat end-to-end tests a second time with
`--via-pgbouncer`; this test, in both runs, makes sure that switch is real.
"""

from __future__ import annotations

import httpx
import psycopg
import pytest

from core.settings import Settings


def pgbouncer_transactions(admin_url: str) -> int:
    with psycopg.connect(admin_url, autocommit=True, prepare_threshold=None) as conn:
        rows = conn.execute("SHOW STATS").fetchall()
        columns = [c.name for c in conn.execute("SHOW STATS").description or []]
    index = columns.index("total_xact_count")
    return sum(int(row[index]) for row in rows)


def test_ingest_and_workers_use_the_database_route_of_this_run(
    request: pytest.FixtureRequest, settings: Settings, migrated: str, http: httpx.Client
) -> None:
    if not request.config.getoption("--via-pgbouncer"):
        assert settings.database_url == migrated
        return
    bouncer = request.getfixturevalue("pgbouncer")
    assert settings.database_url == bouncer.url
    before = pgbouncer_transactions(bouncer.admin_url)
    assert http.get("/readyz").status_code == 200  # ingest runs SELECT 1 on its pool
    assert pgbouncer_transactions(bouncer.admin_url) > before
