"""Catalog on SQLite (the embedded default).

One database file in WAL mode with ``synchronous=NORMAL``: a commit is durable
against process crashes and costs no fsync. Writes run on a dedicated
single-thread executor owning the writer connection; reads run on a second
thread with its own connection, so a query never queues behind a batch upsert
(WAL lets readers proceed while the writer commits). Each write transaction
starts with ``BEGIN IMMEDIATE`` so two processes sharing the file serialise on
the lock (waiting up to ``busy_timeout``) instead of failing on lock upgrade.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from archive.adapters import migrations
from archive.adapters._executor import Blocking
from archive.adapters._sqlite import connect as sqlite_connect
from archive.adapters.sql_api_keys import ApiKeyTable
from archive.adapters.sql_forwards import ForwardTable
from archive.adapters.sql_stable import FEED, StableTable
from archive.adapters.sql_catalog import (
    INSTANCE_COLUMNS,
    NOT_MIGRATED,
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    Dialect,
    UpsertPlan,
    catalog_instance,
    instance_values,
    moved_series,
    on_conflict,
    patient_values,
    plan_upsert,
    series_values,
    study_values,
)
from archive.adapters import sql_changes as feed
from archive.adapters.sql_reads import CatalogReads
from archive.core import jsontext
from archive.core.changes import Change, ChangeAction, Deleted, Deletion, UpsertOutcome
from archive.core.errors import BackendUnavailable
from archive.core.records import CatalogEntry

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
_UNAVAILABLE = ("database is locked", "unable to open", "disk i/o error", "disk is full", "readonly database")
_CHUNK = 500  # bound parameters per IN (...) list

DIALECT = Dialect(
    placeholder="?",
    like_escape=" ESCAPE '\\'",
    distinct_list="group_concat(DISTINCT {})",
    decode_json=lambda text: jsontext.loads(text) if text else {},
)


def _upsert_sql(table: str, columns: Sequence[str], returning: str = "") -> str:
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {on_conflict(table, columns)}"
    return f"{sql} RETURNING {returning}" if returning else sql


_PATIENTS = _upsert_sql("patients", PATIENT_COLUMNS, "id")
_STUDIES = _upsert_sql("studies", STUDY_COLUMNS, "id")
_SERIES = _upsert_sql("series", SERIES_COLUMNS, "id")
_INSTANCES = _upsert_sql("instances", INSTANCE_COLUMNS)


def _statements(script: str) -> list[str]:
    """Split a migration script into complete statements (no implicit COMMIT)."""
    out, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    return out


class SqliteCatalog(CatalogReads, ApiKeyTable, ForwardTable, StableTable):
    """The :class:`~archive.core.ports.Catalog` port (and :class:`~archive.core.ports.ApiKeys`) on one SQLite file."""

    name = "sqlite-catalog"
    dialect = DIALECT

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer = Blocking("sqlite-catalog-w", workers=1)
        self._reader = Blocking("sqlite-catalog-r", workers=1)
        self._wcon: sqlite3.Connection | None = None  # lives in the writer thread
        self._rcon: sqlite3.Connection | None = None  # lives in the reader thread
        self._closed = False

    # -- connections (each created and used in its own thread) ---------------
    def _connect(self, reader: bool) -> sqlite3.Connection:
        con = sqlite_connect(self.path, "catalog", busy_timeout=BUSY_TIMEOUT_S, reader=reader)
        try:
            con.execute("PRAGMA foreign_keys=ON")
            # DICOM matching is case sensitive (PS3.4 C.2.2.2.1; names use the folded
            # columns), and a case-sensitive LIKE can use the BINARY indexes.
            con.execute("PRAGMA case_sensitive_like=ON")
        except BaseException:
            con.close()
            raise
        return con

    def _write_con(self) -> sqlite3.Connection:
        if self._wcon is None:
            self._wcon = self._connect(reader=False)
        return self._wcon

    def _read_con(self) -> sqlite3.Connection:
        if self._rcon is None:
            self._rcon = self._connect(reader=True)
        return self._rcon

    async def _run(self, executor: Blocking, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await executor.run(fn, *args)
        except sqlite3.OperationalError as exc:
            if any(s in str(exc).lower() for s in _UNAVAILABLE):
                raise BackendUnavailable("catalog", f"{self.path}: {exc}") from exc
            if str(exc).startswith("no such table"):
                raise BackendUnavailable("catalog", f"{self.path}: {NOT_MIGRATED}") from exc
            raise
        except OSError as exc:  # the directory cannot be created or used
            raise BackendUnavailable("catalog", f"{self.path}: {exc}") from exc

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        con = self._write_con()
        con.execute("BEGIN IMMEDIATE")
        try:
            result = work(con)
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return result

    # -- Backend --------------------------------------------------------------
    async def migrate(self) -> None:
        try:
            await self._writer.run(self.path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable("catalog", f"{self.path.parent}: {exc}") from exc
        applied = await self._run(self._writer, self._transaction, self._migrate)
        if applied:
            log.info("catalog %s migrated to schema versions %s", self.path, applied)

    def _migrate(self, con: sqlite3.Connection) -> list[int]:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in con.execute("SELECT version FROM schema_version")}
        applied = []
        for migration in migrations.load("sqlite"):
            if migration.version in done:
                continue
            for statement in _statements(migration.sql):
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
            applied.append(migration.version)
        return applied

    async def ping(self) -> None:
        try:
            await self._run(self._reader, lambda: self._read_con().execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            raise BackendUnavailable("catalog", f"{self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close_writer() -> None:
            if self._wcon is not None:
                self._wcon.close()
                self._wcon = None

        def close_reader() -> None:
            if self._rcon is not None:
                self._rcon.close()
                self._rcon = None

        await self._writer.run(close_writer)
        await self._reader.run(close_reader)
        self._writer.shutdown()
        self._reader.shutdown()

    # -- Catalog --------------------------------------------------------------
    async def upsert(self, entries: Sequence[CatalogEntry], *, changes: bool = True) -> UpsertOutcome:
        if not entries:
            return UpsertOutcome()
        started = time.perf_counter()
        outcome = await self._run(self._writer, self._transaction, lambda con: self._upsert(con, entries, changes))
        elapsed_ms = (time.perf_counter() - started) * 1e3
        log.debug("catalog upsert of %d instances in %.1f ms", len(entries), elapsed_ms)
        return outcome

    @staticmethod
    def _select_in(con: sqlite3.Connection, sql: str, values: Sequence[str]) -> list[Any]:
        """``sql`` ends in ``IN``: run it over ``values`` in chunks of bound parameters."""
        out: list[Any] = []
        for i in range(0, len(values), _CHUNK):
            chunk = values[i : i + _CHUNK]
            out.extend(con.execute(f"{sql} ({', '.join('?' for _ in chunk)})", chunk).fetchall())
        return out

    @classmethod
    def _upsert(cls, con: sqlite3.Connection, entries: Sequence[CatalogEntry], changes: bool = True) -> UpsertOutcome:
        uids = sorted({e.instance.sop_instance_uid for e in entries})
        tombstones = dict(cls._select_in(
            con, "SELECT sop_instance_uid, deleted_at FROM tombstones WHERE sop_instance_uid IN", uids))
        live, dropped = feed.split_live(entries, tombstones)
        if not live:
            return UpsertOutcome(dropped=dropped)
        plan = plan_upsert(live)
        live_uids = [row.sop_instance_uid for row, _, _ in plan.instances]
        prior = dict(cls._select_in(con, "SELECT sop_instance_uid, sha256 FROM instances WHERE sop_instance_uid IN",
                                    live_uids))
        if changes:  # written by a rebuild the feed never announced: announce it now (schema 6)
            announced = [row[0] for row in cls._select_in(
                con, "SELECT sop_instance_uid FROM rebuilt WHERE sop_instance_uid IN", live_uids)]
            for uid in announced:
                prior.pop(uid, None)
            con.executemany("DELETE FROM rebuilt WHERE sop_instance_uid = ?", [(uid,) for uid in announced])
        else:
            con.executemany("INSERT INTO rebuilt (sop_instance_uid) VALUES (?) ON CONFLICT DO NOTHING",
                            [(uid,) for uid in live_uids if uid not in prior])
        cls._write_plan(con, plan)
        revived = [uid for uid in live_uids if uid in tombstones]  # re-sent after their delete
        if revived:
            con.executemany("DELETE FROM tombstones WHERE sop_instance_uid = ?", [(uid,) for uid in revived])
        rows, outcome = feed.feed_of_upsert(plan, prior)
        if changes:
            cls._append_feed(con, rows, time.time())
        return UpsertOutcome(outcome.created, outcome.updated, dropped)

    @staticmethod
    def _append_feed(con: sqlite3.Connection, rows: Sequence[feed.FeedRow], at: float) -> None:
        """Last in the transaction: BEGIN IMMEDIATE holds the write lock, so MAX(seq) is the last
        committed entry and seq order is commit order (:mod:`archive.adapters.sql_changes`)."""
        if rows:
            (last,) = con.execute(feed.NEXT_SEQ).fetchone()
            con.executemany(feed.insert_change(DIALECT), feed.change_values(int(last), rows, at))

    @staticmethod
    def _write_plan(con: sqlite3.Connection, plan: UpsertPlan) -> None:
        now = time.time()
        stored: dict[str, str] = {}
        uids = [s.series_uid for s, _ in plan.series]
        for i in range(0, len(uids), _CHUNK):
            chunk = uids[i : i + _CHUNK]
            marks = ", ".join("?" for _ in chunk)
            stored.update(con.execute(f"SELECT series_uid, study_uid FROM series WHERE series_uid IN ({marks})", chunk))
        patient_ids = {}
        for p in plan.patients:
            patient_ids[(p.patient_id, p.issuer)] = con.execute(_PATIENTS, patient_values(p)).fetchone()[0]
        study_ids = {}
        for st, pkey in plan.studies:
            study_ids[st.study_uid] = con.execute(_STUDIES, study_values(st, patient_ids[pkey], now)).fetchone()[0]
        series_ids = {}
        for se, study_uid in plan.series:
            values = series_values(se, study_ids[study_uid], study_uid, now)
            series_ids[se.series_uid] = con.execute(_SERIES, values).fetchone()[0]
        for series_uid, study_uid in moved_series(plan, stored):
            log.info("series %s moved to study %s", series_uid, study_uid)
            con.execute("UPDATE instances SET study_uid = ? WHERE series_fk = ?", (study_uid, series_ids[series_uid]))
        con.executemany(
            _INSTANCES,
            [instance_values(row, series_ids[se], st, se, now) for row, st, se in plan.instances],
        )

    async def delete(self, deletion: Deletion, at: float) -> Deleted:
        return await self._run(self._writer, self._transaction, lambda con: self._delete(con, deletion, at))

    @classmethod
    def _delete(cls, con: sqlite3.Connection, deletion: Deletion, at: float) -> Deleted:
        patient = con.execute(feed.patient_of_study(DIALECT), (deletion.study_uid,)).fetchone()
        sql, params = feed.build_delete(deletion, DIALECT)
        found = con.execute(sql, params).fetchall()
        if not found:
            return Deleted([], at)
        instances = [dataclasses.replace(catalog_instance(row), patient_id=patient[0] if patient else "")
                     for row in found]
        series, studies, patients = feed.cleanup(DIALECT)
        con.execute(series, (deletion.study_uid,))
        con.execute(studies, (deletion.study_uid,))
        if patient:
            con.execute(patients, (patient[1],))
        con.executemany(feed.upsert_tombstone(DIALECT),
                        [(i.sop_instance_uid, i.study_uid, i.series_uid, at) for i in instances])
        cls._append_feed(con, feed.feed_of_delete(instances), at)
        return Deleted(instances, at)

    async def tombstoned(self, sop_instance_uids: Sequence[str]) -> set[str]:
        uids = list(sop_instance_uids)
        rows = await self._run(self._reader, lambda: self._select_in(
            self._read_con(), "SELECT sop_instance_uid FROM tombstones WHERE sop_instance_uid IN", uids))
        return {row[0] for row in rows}

    async def changes(self, since: int, limit: int) -> list[Change]:
        return [feed.change(row) for row in await self._fetch(feed.select_changes(DIALECT), (since, limit))]

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._run(self._reader, lambda: self._read_con().execute(sql, params).fetchall())

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._run(self._writer, self._transaction, lambda con: con.execute(sql, params).rowcount)

    async def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._run(self._writer, self._transaction, lambda con: con.executemany(sql, rows))

    async def _write_returning(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._run(self._writer, self._transaction, lambda con: con.execute(sql, params).fetchall())

    async def record_stable(self, now: float, limit: int = 1000) -> list[str]:
        if not await self._any_due(FEED, now):
            return []
        def work(con: sqlite3.Connection) -> list[str]:
            studies = [str(row[0]) for row in con.execute(self._feed_due(), (FEED, FEED, now, now, limit)).fetchall()]
            self._append_feed(con, [(ChangeAction.STABLE.value, s, "", "") for s in sorted(studies)], now)
            return studies

        return await self._run(self._writer, self._transaction, work)
