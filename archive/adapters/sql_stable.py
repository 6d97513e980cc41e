"""The StudyStability port on the catalog's database, written once for SQLite and PostgreSQL.

``stable_pending`` (schema version 5) holds, per watcher name and study, when the study is due to
be stable. Indexers ``touch`` it for every instance they index (due = now + N); due rows are
*claimed* with a lease (an UPDATE that only one claimer wins: SQLite's write lock, PostgreSQL's
row locks with SKIP LOCKED), acted upon, then *released* (deleted only if ``due_at`` is still the
one claimed: an instance that arrived meanwhile keeps the row, and the study becomes stable again
later). A claimer that dies lets its lease run out; another one claims the row again: at least once.
The change feed's own watcher ('') is claimed, written to the feed and deleted in one transaction
by each catalog (exactly once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from archive.adapters.sql_catalog import Dialect
from archive.core.changes import STABLE_FEED
from archive.core.ports import StablePending

FEED = STABLE_FEED


class StableTable:
    dialect: Dialect
    skip_locked: str = ""  # PostgreSQL: " FOR UPDATE SKIP LOCKED"
    greatest: str = "MAX"  # SQLite's two-argument MAX; PostgreSQL: GREATEST

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def _write_returning(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _claimable(self) -> str:
        """The due rows of one watcher nobody holds, oldest first: (name, now, now, limit)."""
        m = self.dialect.placeholder
        return (f"SELECT study_uid FROM stable_pending WHERE name = {m} AND due_at <= {m} AND claimed_until <= {m} "
                f"ORDER BY due_at LIMIT {m}{self.skip_locked}")

    async def touch_studies(self, rows: Sequence[StablePending]) -> None:
        if not rows:
            return
        m = self.dialect.placeholder
        last: dict[tuple[str, str], float] = {}
        for r in rows:
            last[(r.name, r.study_uid)] = max(r.due_at, last.get((r.name, r.study_uid), 0.0))
        await self._write_many(
            f"INSERT INTO stable_pending (name, study_uid, due_at) VALUES ({m}, {m}, {m}) "
            f"ON CONFLICT (name, study_uid) DO UPDATE SET due_at = {self.greatest}(stable_pending.due_at, excluded.due_at)",
            [(name, study, due) for (name, study), due in sorted(last.items())])

    async def _any_due(self, name: str, now: float) -> bool:
        """A read first, so that an idle sweep (every indexer, every second) writes nothing."""
        m = self.dialect.placeholder
        rows = await self._fetch(f"SELECT 1 FROM stable_pending WHERE name = {m} AND due_at <= {m} "
                                 f"AND claimed_until <= {m} LIMIT 1", (name, now, now))
        return bool(rows)

    async def claim_stable(self, name: str, now: float, lease: float, limit: int = 100) -> list[tuple[str, float]]:
        if not await self._any_due(name, now):
            return []
        m = self.dialect.placeholder
        rows = await self._write_returning(
            f"UPDATE stable_pending SET claimed_until = {m} WHERE name = {m} AND study_uid IN ({self._claimable()}) "
            "RETURNING study_uid, due_at", (now + lease, name, name, now, now, limit))
        return sorted(((str(study), float(due)) for study, due in rows), key=lambda r: (r[1], r[0]))

    async def release_stable(self, name: str, claimed: Sequence[tuple[str, float]]) -> None:
        m = self.dialect.placeholder
        await self._write_many(f"DELETE FROM stable_pending WHERE name = {m} AND study_uid = {m} AND due_at = {m}",
                               [(name, study, due) for study, due in claimed])

    def _feed_due(self) -> str:
        """DELETE the feed's due rows (name, now, now, now, limit) RETURNING their studies."""
        m = self.dialect.placeholder
        return (f"DELETE FROM stable_pending WHERE name = {m} AND study_uid IN ({self._claimable()}) "
                "RETURNING study_uid")
