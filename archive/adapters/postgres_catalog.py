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
import logging
import re
import time
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from archive.adapters import migrations
from archive.adapters.sql_api_keys import ApiKeyTable
from archive.adapters.sql_catalog import (
    INSTANCE_COLUMNS,
    NOT_MIGRATED,
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    Dialect,
    UpsertPlan,
    instance_values,
    moved_series,
    on_conflict,
    patient_values,
    plan_upsert,
    series_values,
    study_values,
)
from archive.adapters.sql_reads import CatalogReads
from archive.core.errors import BackendUnavailable
from archive.core.records import CatalogEntry
from archive.core.retry import Backoff, retrying

log = logging.getLogger(__name__)

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


class PostgresCatalog(CatalogReads, ApiKeyTable):
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

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        pool = await self._get_pool()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise BackendUnavailable("catalog", NOT_MIGRATED) from exc
        except psycopg.OperationalError as exc:
            raise BackendUnavailable("catalog", str(exc)) from exc

    async def _write(self, query: str, params: Sequence[Any] = ()) -> int:
        pool = await self._get_pool()
        try:
            async with pool.connection() as conn:  # committed when the block ends
                cur = await conn.execute(query, params)
                return cur.rowcount
        except psycopg.errors.UndefinedTable as exc:
            raise BackendUnavailable("catalog", NOT_MIGRATED) from exc
        except psycopg.OperationalError as exc:
            raise BackendUnavailable("catalog", str(exc)) from exc

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
    async def upsert(self, entries: Sequence[CatalogEntry]) -> None:
        if not entries:
            return
        plan = plan_upsert(entries)
        pool = await self._get_pool()

        async def attempt() -> None:
            try:
                async with pool.connection() as conn, conn.transaction():
                    await self._upsert(conn, plan)
            except psycopg.OperationalError as exc:
                if exc.sqlstate in _RETRYABLE:
                    raise _Conflict(exc.sqlstate) from exc
                raise BackendUnavailable("catalog", str(exc)) from exc

        def again(attempt: int, delay: float, exc: BaseException | None) -> None:
            log.warning("catalog upsert retry %d in %.0f ms (SQLSTATE %s)", attempt, delay * 1000, exc)

        try:
            await retrying(CONFLICTS, _Conflict, on_retry=again)(attempt)
        except _Conflict as exc:
            raise BackendUnavailable("catalog", f"{exc.__cause__}") from exc.__cause__

    @staticmethod
    async def _upsert(conn: AsyncConnection[Any], plan: UpsertPlan) -> None:
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
