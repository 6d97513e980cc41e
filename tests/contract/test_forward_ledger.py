"""The ForwardLedger port, run against the SQLite and the PostgreSQL catalog (the table comes with migrate)."""

from __future__ import annotations


import pytest

from archive.adapters.postgres_catalog import PostgresCatalog
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.ports import ForwardLedger, ForwardRecord


@pytest.fixture
def ledger(sql_catalog: SqliteCatalog | PostgresCatalog) -> ForwardLedger:
    return sql_catalog


def record(uid: str, outcome: str = "sent", *, destination: str = "PACS", sha: str = "a" * 64, at: float = 1.0,
           study: str = "1.2.3", attempts: int = 1) -> ForwardRecord:
    return ForwardRecord(destination, uid, study, "1.2.3.4", "ct-to-pacs", sha, outcome, "0x0000", at, attempts)


async def test_delivered_names_what_was_sent_with_its_checksum(ledger: ForwardLedger) -> None:
    await ledger.record_forwards([record("1.1"), record("1.2", "failed"), record("1.3", destination="AI")])
    assert await ledger.delivered("PACS", ["1.1", "1.2", "1.3", "1.9"]) == {"1.1": "a" * 64}
    assert await ledger.delivered("AI", ["1.1", "1.3"]) == {"1.3": "a" * 64}
    assert await ledger.delivered("PACS", []) == {}


async def test_the_last_outcome_wins_and_a_new_object_is_not_delivered(ledger: ForwardLedger) -> None:
    await ledger.record_forwards([record("1.1", "failed", at=1.0)])
    await ledger.record_forwards([record("1.1", "sent", at=2.0, attempts=2)])
    assert await ledger.delivered("PACS", ["1.1"]) == {"1.1": "a" * 64}
    await ledger.record_forwards([record("1.1", "failed", sha="b" * 64, at=3.0, attempts=1)])
    assert await ledger.delivered("PACS", ["1.1"]) == {}
    rows = await ledger.forwards("1.2.3")
    assert len(rows) == 1 and rows[0].outcome == "failed" and rows[0].sha256 == "b" * 64 and rows[0].at == 3.0
    # within one call, the last record of an instance and destination wins
    await ledger.record_forwards([record("1.1", "failed", at=4.0), record("1.1", "sent", at=5.0)])
    assert (await ledger.forwards("1.2.3"))[0].outcome == "sent"


async def test_forwards_lists_newest_first_by_study_and_limit(ledger: ForwardLedger) -> None:
    await ledger.record_forwards([record(f"1.{n}", at=float(n), study="1.2.3" if n % 2 else "1.2.5")
                                  for n in range(1, 11)])
    rows = await ledger.forwards()
    assert [r.at for r in rows] == [float(n) for n in range(10, 0, -1)]
    assert [r.sop_instance_uid for r in await ledger.forwards("1.2.5", limit=2)] == ["1.10", "1.8"]
    assert {r.study_uid for r in await ledger.forwards("1.2.3")} == {"1.2.3"}
    many = [f"2.{n}" for n in range(1200)]  # more than one IN list
    await ledger.record_forwards([record(uid) for uid in many])
    assert len(await ledger.delivered("PACS", many)) == 1200
