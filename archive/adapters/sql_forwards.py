"""The ForwardLedger port on the catalog's database, written once for SQLite and PostgreSQL.

The table (``forwards``) comes with the catalog's schema migrations (version 4): one row per
destination and instance, its last outcome. Each catalog gives its
:class:`~archive.adapters.sql_catalog.Dialect`, ``_fetch`` and ``_write_many`` (one statement
for many rows in one write transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from archive.adapters.sql_catalog import Dialect
from archive.core.ports import ForwardRecord

_COLUMNS = "destination, sop_instance_uid, study_uid, series_uid, rule, sha256, outcome, detail, at, attempts"


def _record(row: Sequence[Any]) -> ForwardRecord:
    text = [str(v) for v in row[:8]]
    return ForwardRecord(text[0], text[1], text[2], text[3], text[4], text[5], text[6], text[7], float(row[8]),
                         int(row[9]))


class ForwardTable:
    dialect: Dialect

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def record_forwards(self, records: Sequence[ForwardRecord]) -> None:
        if not records:
            return
        last: dict[tuple[str, str], ForwardRecord] = {}
        for r in records:
            last[(r.destination, r.sop_instance_uid)] = r
        marks = ", ".join(self.dialect.placeholder for _ in range(10))
        updates = ", ".join(f"{c} = excluded.{c}" for c in ("study_uid", "series_uid", "rule", "sha256", "outcome",
                                                             "detail", "at", "attempts"))
        await self._write_many(
            f"INSERT INTO forwards ({_COLUMNS}) VALUES ({marks}) "
            f"ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET {updates}",
            [(r.destination, r.sop_instance_uid, r.study_uid, r.series_uid, r.rule, r.sha256, r.outcome,
              r.detail[:500], r.at, r.attempts) for r in last.values()])

    async def delivered(self, destination: str, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        mark = self.dialect.placeholder
        uids = list(dict.fromkeys(sop_instance_uids))
        for start in range(0, len(uids), 500):
            chunk = uids[start:start + 500]
            rows = await self._fetch(
                f"SELECT sop_instance_uid, sha256 FROM forwards WHERE destination = {mark} AND outcome = 'sent' "
                f"AND sop_instance_uid IN ({', '.join(mark for _ in chunk)})", (destination, *chunk))
            out.update({str(uid): str(sha) for uid, sha in rows})
        return out

    async def forwards(self, study_uid: str | None = None, limit: int = 100) -> list[ForwardRecord]:
        mark = self.dialect.placeholder
        if study_uid is None:
            rows = await self._fetch(f"SELECT {_COLUMNS} FROM forwards ORDER BY at DESC LIMIT {mark}", (limit,))
        else:
            rows = await self._fetch(f"SELECT {_COLUMNS} FROM forwards WHERE study_uid = {mark} "
                                     f"ORDER BY at DESC LIMIT {mark}", (study_uid, limit))
        return [_record(row) for row in rows]
