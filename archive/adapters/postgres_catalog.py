"""Catalog on PostgreSQL (the distributed backend), psycopg 3 async with a pool.

The pool opens lazily (first call or ``migrate``). Each batch upsert is one
transaction: per level one ``INSERT ... ON CONFLICT DO UPDATE`` statement run
over every row with ``executemany`` (pipelined: one round trip per level, about
10x faster than binding ``unnest`` arrays of JSON). Rows are sorted by key so
that concurrent indexers lock them in the same order; deadlocks and
serialization failures that still happen are retried with the archive's jittered
backoff (:mod:`archive.core.retry`, as Orthanc spreads its retries). Connection failures raise
``BackendUnavailable("catalog", ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from archive.adapters import migrations
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
from archive.core.changes import Change, ChangeAction, Deleted, Deletion, UpsertOutcome
from archive.core.errors import BackendUnavailable
from archive.core.records import CatalogEntry
from archive.core.retry import Backoff, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFLICTS = Backoff(first=0.1, cap=1.0, attempts=5)  # transactions that lost a race, tried again
_RETRYABLE = ("40001", "40P01")  # serialization failure, deadlock detected


class _Conflict(Exception):
    """A transaction that lost a race with another indexer's (its SQLSTATE): worth another try."""
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

DIALECT = Dialect(
    placeholder="%s",
    like_escape="",  # backslash is PostgreSQL's default LIKE escape
    distinct_list="string_agg(DISTINCT {}, ',')",
    decode_json=lambda value: value or {},  # psycopg already loads jsonb
    json_text="{}::text",  # jsonb as text: psycopg does not decode it
)


def _upsert_sql(table: str, columns: Sequence[str], returning: str = "") -> str:
    marks = ", ".join("%s::jsonb" if c in ("attrs", "metadata") else "%s" for c in columns)
    text = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {on_conflict(table, columns)}"
    return f"{text} RETURNING {returning}" if returning else text


_PATIENTS = _upsert_sql("patients", PATIENT_COLUMNS, "id, patient_id, issuer")
_STUDIES = _upsert_sql("studies", STUDY_COLUMNS, "id, study_uid")
_SERIES = _upsert_sql("series", SERIES_COLUMNS, "id, series_uid")
_INSTANCES = _upsert_sql("instances", INSTANCE_COLUMNS)


async def _upsert_level(
    conn: AsyncConnection[Any], query: str, rows: Sequence[tuple[Any, ...]], returning: bool = True
) -> list[tuple[Any, ...]]:
    """Run one statement over many rows (pipelined by psycopg); the RETURNING rows."""
    out: list[tuple[Any, ...]] = []
    async with conn.cursor() as cur:
        await cur.executemany(query, rows, returning=returning)
        while returning:
            out.extend(await cur.fetchall())
            if not cur.nextset():
                break
    return out


class PostgresCatalog(CatalogReads, ApiKeyTable, ForwardTable, StableTable):
    """The :class:`~archive.core.ports.Catalog` port (and :class:`~archive.core.ports.ApiKeys`) on PostgreSQL.

    ``schema`` puts every table in that schema (created by ``migrate``) instead
    of the connection's default search path: tests isolate themselves with it.
    """

    name = "postgresql-catalog"
    dialect = DIALECT

    def __init__(
        self,
        dsn: str,
        min_size: int = 1,
        max_size: int = 8,
        *,
        schema: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if schema is not None and not _SCHEMA.fullmatch(schema):
            raise ValueError(f"schema {schema!r}: use lowercase letters, digits and _")
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    # -- pool -----------------------------------------------------------------
    async def _get_pool(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                kwargs: dict[str, Any] = {"connect_timeout": max(1, int(self.connect_timeout))}
                if self.schema:
                    kwargs["options"] = f"-c search_path={self.schema}"
                pool = AsyncConnectionPool(
                    self.dsn,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    kwargs=kwargs,
                    timeout=self.connect_timeout,
                    open=False,
                    name="catalog",
                )
                try:
                    await pool.open(wait=True, timeout=self.connect_timeout)
                except psycopg.OperationalError as exc:  # PoolTimeout included
                    await pool.close()
                    raise BackendUnavailable("catalog", f"cannot connect to PostgreSQL: {exc}") from exc
                self._pool = pool
        assert self._pool is not None
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection (its statements commit when the block ends); errors as the port's."""
        pool = await self._get_pool()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise BackendUnavailable("catalog", NOT_MIGRATED) from exc
        except psycopg.OperationalError as exc:
            raise BackendUnavailable("catalog", str(exc)) from exc

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def _write(self, query: str, params: Sequence[Any] = ()) -> int:
        async with self._connection() as conn:
            return (await conn.execute(query, params)).rowcount

    skip_locked = " FOR UPDATE SKIP LOCKED"
    greatest = "GREATEST"

    async def _write_returning(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._fetch(query, params)  # one statement, committed with its connection's block

    async def record_stable(self, now: float, limit: int = 1000) -> list[str]:
        if not await self._any_due(FEED, now):
            return []
        async def work(conn: AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(self._feed_due(), (FEED, FEED, now, now, limit))
            studies = [str(row[0]) for row in await cur.fetchall()]
            await self._append_feed(conn, [(ChangeAction.STABLE.value, s, "", "") for s in sorted(studies)], now)
            return studies

        return await self._transact("stable", work)

    async def _write_many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._connection() as conn, conn.cursor() as cur:  # one transaction
            await cur.executemany(query, rows)

    # -- Backend --------------------------------------------------------------
    async def migrate(self) -> None:
        """Apply missing schema versions in one transaction under an advisory lock."""
        pool = await self._get_pool()
        key = zlib.crc32(f"dicom-archive catalog {self.schema or ''}".encode()) - 2**31
        try:
            async with pool.connection() as conn, conn.transaction():
                # concurrent migrators wait here, then see the versions applied by the first
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                if self.schema:
                    await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
                )
                done = {row[0] for row in await (await conn.execute("SELECT version FROM schema_version")).fetchall()}
                applied = []
                for migration in migrations.load("postgresql"):
                    if migration.version in done:
                        continue
                    await conn.execute(migration.sql)  # no parameters: several statements at once
                    await conn.execute(
                        "INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)",
                        (migration.version, migration.description, time.time()),
                    )
                    applied.append(migration.version)
        except psycopg.OperationalError as exc:
            raise BackendUnavailable("catalog", str(exc)) from exc
        if applied:
            log.info("catalog migrated to schema versions %s", applied)

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- Catalog --------------------------------------------------------------
    async def _transact(self, what: str, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction; retried (whole) when it lost a race with another writer."""
        pool = await self._get_pool()

        async def attempt() -> T:
            try:
                async with pool.connection() as conn, conn.transaction():
                    return await work(conn)
            except psycopg.errors.UndefinedTable as exc:
                raise BackendUnavailable("catalog", NOT_MIGRATED) from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                # an instance upserted into a series that a concurrent delete removed: do it again
                raise _Conflict(exc.sqlstate) from exc
            except psycopg.OperationalError as exc:
                if exc.sqlstate in _RETRYABLE:
                    raise _Conflict(exc.sqlstate) from exc
                raise BackendUnavailable("catalog", str(exc)) from exc

        def again(attempt: int, delay: float, exc: BaseException | None) -> None:
            log.warning("catalog %s retry %d in %.0f ms (%s)", what, attempt, delay * 1000, exc)

        try:
            return await retrying(CONFLICTS, _Conflict, on_retry=again)(attempt)
        except _Conflict as exc:
            raise BackendUnavailable("catalog", f"{exc.__cause__ or exc}") from exc.__cause__

    async def upsert(self, entries: Sequence[CatalogEntry], *, changes: bool = True) -> UpsertOutcome:
        if not entries:
            return UpsertOutcome()
        return await self._transact("upsert", lambda conn: self._upsert(conn, entries, changes))

    async def _lock_feed(self, conn: AsyncConnection[Any]) -> int:
        """Take the feed lock (until this transaction ends) and return the last committed seq.

        Transaction-scoped: released at commit, after the commit is visible to new snapshots,
        so the next writer's MAX(seq) (a new statement, READ COMMITTED) sees this one's entries.
        Writers thus append in commit order, and a reader never sees entry N+1 before entry N.
        """
        key = zlib.crc32(f"dicom-archive changes {self.schema or ''}".encode()) - 2**31
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        row = await (await conn.execute(feed.NEXT_SEQ)).fetchone()
        return int(row[0]) if row else 0

    async def _append_feed(self, conn: AsyncConnection[Any], rows: Sequence[feed.FeedRow], at: float) -> None:
        if rows:
            last = await self._lock_feed(conn)
            async with conn.cursor() as cur:
                await cur.executemany(feed.insert_change(DIALECT), feed.change_values(last, rows, at))

    @staticmethod
    async def _tombstones(conn: AsyncConnection[Any], uids: Sequence[str]) -> dict[str, float]:
        cur = await conn.execute(
            "SELECT sop_instance_uid, deleted_at FROM tombstones WHERE sop_instance_uid = ANY(%s)", (list(uids),))
        return {row[0]: float(row[1]) for row in await cur.fetchall()}

    async def _upsert(self, conn: AsyncConnection[Any], entries: Sequence[CatalogEntry],
                      changes: bool = True) -> UpsertOutcome:
        uids = sorted({e.instance.sop_instance_uid for e in entries})
        tombstones = await self._tombstones(conn, uids)
        live, dropped = feed.split_live(entries, tombstones)
        if not live:
            return UpsertOutcome(dropped=dropped)
        plan = plan_upsert(live)
        live_uids = [row.sop_instance_uid for row, _, _ in plan.instances]
        cur = await conn.execute(
            "SELECT sop_instance_uid, sha256 FROM instances WHERE sop_instance_uid = ANY(%s)", (live_uids,))
        prior: dict[str, str] = {row[0]: row[1] for row in await cur.fetchall()}
        if changes:  # written by a rebuild the feed never announced: announce it now (schema 6)
            cur = await conn.execute("DELETE FROM rebuilt WHERE sop_instance_uid = ANY(%s) RETURNING sop_instance_uid",
                                     (live_uids,))
            for row in await cur.fetchall():
                prior.pop(row[0], None)
        else:
            async with conn.cursor() as c:
                await c.executemany("INSERT INTO rebuilt (sop_instance_uid) VALUES (%s) ON CONFLICT DO NOTHING",
                                    [(uid,) for uid in live_uids if uid not in prior])
        await self._write_plan(conn, plan)
        revived = [uid for uid in live_uids if uid in tombstones]  # re-sent after their delete
        if revived:
            await conn.execute("DELETE FROM tombstones WHERE sop_instance_uid = ANY(%s)", (revived,))
        # A delete that committed while this transaction ran (its instance rows held ours back):
        # its tombstones are visible to this new statement. Start again, dropping those messages.
        if feed.split_live(live, await self._tombstones(conn, live_uids))[1]:
            raise _Conflict("a concurrent delete tombstoned instances of the batch")
        rows, outcome = feed.feed_of_upsert(plan, prior)
        if changes:
            await self._append_feed(conn, rows, time.time())
        return UpsertOutcome(outcome.created, outcome.updated, dropped)

    async def delete(self, deletion: Deletion, at: float) -> Deleted:
        return await self._transact("delete", lambda conn: self._delete(conn, deletion, at))

    async def _delete(self, conn: AsyncConnection[Any], deletion: Deletion, at: float) -> Deleted:
        patient = await (await conn.execute(feed.patient_of_study(DIALECT), (deletion.study_uid,))).fetchone()
        query, params = feed.build_delete(deletion, DIALECT)
        found = await (await conn.execute(query, params)).fetchall()
        if not found:
            return Deleted([], at)
        instances = [dataclasses.replace(catalog_instance(row), patient_id=patient[0] if patient else "")
                     for row in found]
        series, studies, patients = feed.cleanup(DIALECT)
        await conn.execute(series, (deletion.study_uid,))
        await conn.execute(studies, (deletion.study_uid,))
        if patient:
            await conn.execute(patients, (patient[1],))
        async with conn.cursor() as cur:
            await cur.executemany(feed.upsert_tombstone(DIALECT),
                                  [(i.sop_instance_uid, i.study_uid, i.series_uid, at) for i in instances])
        await self._append_feed(conn, feed.feed_of_delete(instances), at)
        return Deleted(instances, at)

    async def tombstoned(self, sop_instance_uids: Sequence[str]) -> set[str]:
        rows = await self._fetch("SELECT sop_instance_uid FROM tombstones WHERE sop_instance_uid = ANY(%s)",
                                 (list(sop_instance_uids),))
        return {row[0] for row in rows}

    async def changes(self, since: int, limit: int) -> list[Change]:
        return [feed.change(row) for row in await self._fetch(feed.select_changes(DIALECT), (since, limit))]

    @staticmethod
    async def _write_plan(conn: AsyncConnection[Any], plan: UpsertPlan) -> None:
        now = time.time()
        uids = [s.series_uid for s, _ in plan.series]
        cur = await conn.execute("SELECT series_uid, study_uid FROM series WHERE series_uid = ANY(%s)", (uids,))
        stored: dict[str, str] = {row[0]: row[1] for row in await cur.fetchall()}

        rows = await _upsert_level(conn, _PATIENTS, [patient_values(p) for p in plan.patients])
        patient_ids = {(r[1], r[2]): r[0] for r in rows}
        rows = await _upsert_level(conn, _STUDIES, [study_values(st, patient_ids[pk], now) for st, pk in plan.studies])
        study_ids = {r[1]: r[0] for r in rows}
        values = [series_values(se, study_ids[st], st, now) for se, st in plan.series]
        series_ids = {r[1]: r[0] for r in await _upsert_level(conn, _SERIES, values)}
        for series_uid, study_uid in moved_series(plan, stored):
            log.info("series %s moved to study %s", series_uid, study_uid)
            await conn.execute(
                "UPDATE instances SET study_uid = %s WHERE series_fk = %s", (study_uid, series_ids[series_uid])
            )
        values = [instance_values(row, series_ids[se], st, se, now) for row, st, se in plan.instances]
        await _upsert_level(conn, _INSTANCES, values, returning=False)
