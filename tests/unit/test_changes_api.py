"""``GET /api/changes``: the JSON shape (a fixed interface), paging by ``since``, refused parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.changes import Deletion
from archive.query.routes import add_routes
from archive.web import base_app
from tests.factories import clones


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[SqliteCatalog]:
    found = SqliteCatalog(tmp_path / "catalog.db")
    await found.migrate()
    yield found
    await found.close()


@pytest.fixture
async def client(catalog: SqliteCatalog) -> AsyncIterator[TestClient]:
    app = base_app([catalog])
    add_routes(app, catalog, 100)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_the_feed_pages_by_seq(client: TestClient, catalog: SqliteCatalog, tmp_path: Path) -> None:
    entries = clones(tmp_path, 3)
    await catalog.upsert(entries)
    await catalog.delete(Deletion(entries[0].study.study_uid, entries[0].series.series_uid,
                                  entries[0].instance.sop_instance_uid), 1_764_936_000.5)
    response = await client.get("/api/changes")
    assert response.status == 200 and response.content_type == "application/json"
    changes = (await response.json())["changes"]
    assert [(c["seq"], c["action"]) for c in changes] == [(1, "created"), (2, "created"), (3, "created"),
                                                          (4, "deleted")]
    assert set(changes[3]) == {"seq", "action", "study", "series", "instance", "time"}
    assert (changes[3]["study"], changes[3]["series"], changes[3]["instance"]) == (
        entries[0].study.study_uid, entries[0].series.series_uid, entries[0].instance.sop_instance_uid)
    assert changes[3]["time"] == "2025-12-05T12:00:00.500Z"
    page = await (await client.get("/api/changes?since=1&limit=2")).json()
    assert [c["seq"] for c in page["changes"]] == [2, 3]
    assert (await (await client.get("/api/changes?since=4")).json()) == {"changes": []}


@pytest.mark.parametrize("query", ["since=-1", "since=x", "limit=0", "limit=1001", "limit=1e3", "since=%D9%A5",
                                   "since=1000000000000000000"])
async def test_bad_parameters_are_400_naming_them(client: TestClient, query: str) -> None:
    response = await client.get(f"/api/changes?{query}")
    assert response.status == 400
    assert (await response.json())["parameter"] == query.split("=")[0]
