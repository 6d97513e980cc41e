"""The ApiKeys port, run against the SQLite and the PostgreSQL catalog (the table comes with migrate)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from archive.adapters.postgres_catalog import PostgresCatalog
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.errors import ApiKeyExists, BackendUnavailable
from archive.core.identity import Role
from archive.core.ports import ApiKey, ApiKeys
from tests.conftest import service_setting


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def keys(sql_catalog: SqliteCatalog | PostgresCatalog) -> ApiKeys:
    return sql_catalog


async def test_create_find_list_revoke(keys: ApiKeys) -> None:
    created = await keys.create_key("ci-upload", Role.WRITER, digest("k1"))
    await keys.create_key("backup", Role.READER, digest("k2"))
    assert created.name == "ci-upload" and created.role is Role.WRITER and created.last_used_at is None
    found = await keys.key_by_digest(digest("k1"))
    assert found == ApiKey("ci-upload", Role.WRITER, created.created_at)
    assert await keys.key_by_digest(digest("unknown")) is None
    assert [(k.name, k.role) for k in await keys.list_keys()] == [("backup", Role.READER), ("ci-upload", Role.WRITER)]

    assert await keys.revoke_key("ci-upload") is True
    assert await keys.key_by_digest(digest("k1")) is None
    assert await keys.revoke_key("ci-upload") is False
    assert [k.name for k in await keys.list_keys()] == ["backup"]


async def test_names_are_unique_and_a_clash_changes_nothing(keys: ApiKeys) -> None:
    await keys.create_key("ci", Role.READER, digest("first"))
    with pytest.raises(ApiKeyExists, match="ci"):
        await keys.create_key("ci", Role.ADMIN, digest("second"))
    assert await keys.key_by_digest(digest("second")) is None
    assert (await keys.key_by_digest(digest("first"))) is not None
    assert [(k.name, k.role) for k in await keys.list_keys()] == [("ci", Role.READER)]


async def test_last_used_is_recorded(keys: ApiKeys) -> None:
    await keys.create_key("script", Role.ADMIN, digest("k"))
    await keys.touch_key("script", 1_700_000_000.5)
    assert (await keys.key_by_digest(digest("k"))) == ApiKey(
        "script", Role.ADMIN, (await keys.list_keys())[0].created_at, 1_700_000_000.5)
    await keys.touch_key("nobody", 1.0)  # an unknown (revoked) key: nothing happens


async def test_concurrent_creations_of_one_name_store_one(keys: ApiKeys) -> None:
    results = await asyncio.gather(*(keys.create_key("race", Role.READER, digest(f"k{i}")) for i in range(6)),
                                   return_exceptions=True)
    assert sum(isinstance(r, ApiKey) for r in results) == 1
    assert all(isinstance(r, (ApiKey, ApiKeyExists)) for r in results)
    assert len(await keys.list_keys()) == 1


async def test_the_table_holds_digests_only(tmp_path: Path) -> None:
    store = SqliteCatalog(tmp_path / "catalog.db")
    await store.migrate()
    await store.create_key("k", Role.READER, digest("dka_secret"))
    await store.close()
    with sqlite3.connect(tmp_path / "catalog.db") as con:
        rows = con.execute("SELECT * FROM api_keys").fetchall()
    assert rows and all("dka_secret" not in str(value) for value in rows[0])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_catalog_not_migrated_yet_is_unavailable(backend: str, tmp_path: Path, unique: str) -> None:
    """A role that does not migrate the catalog (``scp``) looks keys up in one that may have no
    schema yet: that is BackendUnavailable (503, "run migrate"), not a failure of ours (500)."""
    dsn = service_setting("ARCHIVE_CATALOG") if backend == "postgresql" else ""
    store = PostgresCatalog(dsn, schema=unique) if dsn else SqliteCatalog(tmp_path / "catalog.db")
    try:
        with pytest.raises(BackendUnavailable, match="dicom-archive migrate"):
            await store.key_by_digest(digest("dka_anything"))
        with pytest.raises(BackendUnavailable, match="dicom-archive migrate"):
            await store.touch_key("script", 1.0)
    finally:
        await store.close()
