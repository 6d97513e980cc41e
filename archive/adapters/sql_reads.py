"""The read side of the Catalog port, written once for the SQLite and PostgreSQL catalogs.

Each catalog gives its :class:`Dialect` and a ``_fetch`` that runs one SELECT
where that backend runs reads (SQLite: its reader thread; PostgreSQL: the pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from archive.adapters.sql_catalog import (
    INSTANCE_LIST_COLUMNS,
    LIST_BATCH,
    Dialect,
    assemble,
    build_find,
    build_locate,
    build_metadata,
    build_get_instance,
    catalog_instance,
    instance_metadata,
)
from archive.core.models import DicomJson
from archive.core.ports import InstanceMetadata
from archive.core.query import Query
from archive.core.records import CatalogInstance


class CatalogReads:
    dialect: Dialect

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def find(self, query: Query) -> list[DicomJson]:
        """Match ``query`` at its level (PS3.4 C.2.2.2, C.6) in one SELECT.

        Every result holds all the attributes stored at the query level and the
        levels above, plus the computed attributes of the level; ``return_keys``
        and ``include_all`` are not applied here (the query service filters).
        Person names match case- and accent-insensitively; ``fuzzy`` matches a
        name when any of its components starts with the value.
        """
        sql, params = build_find(query, self.dialect)
        return [assemble(query, row, self.dialect) for row in await self._fetch(sql, params)]

    async def count_instances(self) -> int:
        rows = await self._fetch("SELECT COUNT(*) FROM instances")
        return int(rows[0][0])

    async def instances(self) -> AsyncIterator[CatalogInstance]:
        """Every instance, in keyset-paginated batches (never the whole table at once)."""
        mark = self.dialect.placeholder
        sql = f"SELECT {INSTANCE_LIST_COLUMNS} FROM instances WHERE id > {mark} ORDER BY id LIMIT {mark}"
        last = 0
        while True:
            rows = await self._fetch(sql, (last, LIST_BATCH))
            for row in rows:
                yield catalog_instance(row)
            if len(rows) < LIST_BATCH:
                return
            last = rows[-1][0]

    async def get_instance(self, sop_instance_uid: str) -> CatalogInstance | None:
        rows = await self._fetch(build_get_instance(self.dialect), (sop_instance_uid,))
        return catalog_instance(rows[0]) if rows else None

    async def locate(self, query: Query) -> list[CatalogInstance]:
        sql, params = build_locate(query, self.dialect)
        return [catalog_instance(row) for row in await self._fetch(sql, params)]

    async def metadata(self, query: Query) -> list[InstanceMetadata]:
        sql, params = build_metadata(query, self.dialect)
        return [instance_metadata(row) for row in await self._fetch(sql, params)]
