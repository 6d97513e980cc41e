"""Fixtures shared by the contract tests of the ports the SQL catalogs implement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from archive.adapters.postgres_catalog import PostgresCatalog
from archive.adapters.sqlite_catalog import SqliteCatalog
from tests.conftest import service_setting


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql_catalog(request: pytest.FixtureRequest, tmp_path: Path,
                      unique: str) -> AsyncIterator[SqliteCatalog | PostgresCatalog]:
    """A migrated catalog: SQLite in the test's directory, or PostgreSQL in a schema of its own (dropped after)."""
    dsn = service_setting("ARCHIVE_CATALOG") if request.param == "postgresql" else ""
    store: SqliteCatalog | PostgresCatalog = (
        PostgresCatalog(dsn, schema=unique) if dsn else SqliteCatalog(tmp_path / "catalog.db"))
    await store.migrate()
    yield store
    await store.close()
    if dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {unique} CASCADE")
