"""The StudyStability port against the SQLite and the PostgreSQL catalog: due times, claims that two
claimers never share, releases that keep a study a new instance moved, and the change feed's
``stable`` entries written once however many indexers sweep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from archive.adapters.postgres_catalog import PostgresCatalog
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.ports import StablePending
from tests.conftest import service_setting

Catalogs = Callable[[], SqliteCatalog | PostgresCatalog]


@pytest.fixture(params=["sqlite", "postgresql"])
async def catalogs(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[Catalogs]:
    """A factory of catalog objects on one database (as several indexers have)."""
    dsn = service_setting("ARCHIVE_CATALOG") if request.param == "postgresql" else ""
    made: list[SqliteCatalog | PostgresCatalog] = []

    def make() -> SqliteCatalog | PostgresCatalog:
        made.append(PostgresCatalog(dsn, schema=unique) if dsn else SqliteCatalog(tmp_path / "catalog.db"))
        return made[-1]

    await make().migrate()
    yield make
    for c in made:
        await c.close()
    if dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {unique} CASCADE")


async def test_a_study_is_due_after_its_last_touch_and_claimed_once(catalogs: Catalogs) -> None:
    a, b = catalogs(), catalogs()
    await a.touch_studies([StablePending("rule:x", "1.1", 10.0), StablePending("rule:x", "1.2", 20.0),
                           StablePending("rule:y", "1.1", 10.0)])
    await b.touch_studies([StablePending("rule:x", "1.1", 15.0), StablePending("rule:x", "1.1", 12.0)])
    assert await a.claim_stable("rule:x", now=14.0, lease=60) == []  # 1.1 moved to 15
    assert await a.claim_stable("rule:x", now=16.0, lease=60) == [("1.1", 15.0)]
    assert await b.claim_stable("rule:x", now=16.0, lease=60) == []  # held by a's lease
    # a's lease ran out: 1.1 again, and 1.2 due meanwhile, oldest first
    assert await b.claim_stable("rule:x", now=77.0, lease=60) == [("1.1", 15.0), ("1.2", 20.0)]
    await b.release_stable("rule:x", [("1.1", 15.0)])
    assert await a.claim_stable("rule:x", now=200.0, lease=60) == [("1.2", 20.0)]  # not released: leased again
    assert await a.claim_stable("rule:x", now=300.0, lease=60) == [("1.2", 20.0)]
    assert await a.claim_stable("rule:y", now=100.0, lease=60) == [("1.1", 10.0)]


async def test_a_new_instance_during_the_claim_keeps_the_study(catalogs: Catalogs) -> None:
    a = catalogs()
    await a.touch_studies([StablePending("rule:x", "1.1", 10.0)])
    claimed = await a.claim_stable("rule:x", now=11.0, lease=5)
    await a.touch_studies([StablePending("rule:x", "1.1", 30.0)])  # more arrived while it was sent
    await a.release_stable("rule:x", claimed)
    assert await a.claim_stable("rule:x", now=25.0, lease=5) == []
    assert await a.claim_stable("rule:x", now=31.0, lease=5) == [("1.1", 30.0)]


async def test_concurrent_claims_never_share_a_study(catalogs: Catalogs) -> None:
    claimers = [catalogs() for _ in range(4)]
    await claimers[0].touch_studies([StablePending("rule:x", f"1.{n}", 1.0) for n in range(300)])
    results = await asyncio.gather(*(c.claim_stable("rule:x", now=2.0, lease=60, limit=50) for c in claimers * 2))
    got = [study for result in results for study, _ in result]
    assert len(got) == len(set(got)) == 300


async def test_the_feed_says_stable_once_per_quiet_period(catalogs: Catalogs) -> None:
    sweepers = [catalogs() for _ in range(3)]
    await sweepers[0].touch_studies([StablePending("", f"2.{n}", 5.0) for n in range(40)])
    assert await sweepers[0].record_stable(now=4.0) == []
    found = await asyncio.gather(*(s.record_stable(now=6.0, limit=15) for s in sweepers * 2))
    studies = [s for batch in found for s in batch]
    assert sorted(studies) == sorted(f"2.{n}" for n in range(40)) and len(studies) == 40
    changes = await sweepers[0].changes(0, 1000)
    assert [(c.action, c.series_uid, c.sop_instance_uid) for c in changes] == [("stable", "", "")] * 40
    assert [c.seq for c in changes] == list(range(1, 41))
    # more instances later: stable again
    await sweepers[1].touch_studies([StablePending("", "2.7", 50.0)])
    assert await sweepers[2].record_stable(now=51.0) == ["2.7"]
    assert (await sweepers[0].changes(40, 10))[0].study_uid == "2.7"
