"""The ApiKeys port on the catalog's database, written once for SQLite and PostgreSQL.

The table (``api_keys``) comes with the catalog's schema migrations (version 2), so
``migrate`` creates it wherever the catalog lives. Each catalog gives its
:class:`~archive.adapters.sql_catalog.Dialect`, a ``_fetch`` (one SELECT where it runs
reads) and a ``_write`` (one statement in its own write transaction, the rows it changed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from archive.adapters.sql_catalog import Dialect
from archive.core.errors import ApiKeyExists
from archive.core.identity import Role
from archive.core.ports import ApiKey

_COLUMNS = "name, role, created_at, last_used_at"


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(str(row[0]), Role(row[1]), float(row[2]), None if row[3] is None else float(row[3]))


class ApiKeyTable:
    dialect: Dialect

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise NotImplementedError

    def _marks(self, n: int) -> str:
        return ", ".join(self.dialect.placeholder for _ in range(n))

    async def create_key(self, name: str, role: Role, digest: str) -> ApiKey:
        now = time.time()
        # ON CONFLICT DO NOTHING: a taken name (or, astronomically unlikely, digest) changes no row
        changed = await self._write(
            f"INSERT INTO api_keys (name, role, digest, created_at) VALUES ({self._marks(4)}) "
            "ON CONFLICT DO NOTHING", (name, role.value, digest, now))
        if not changed:
            raise ApiKeyExists(f"an API key named {name!r} exists already")
        return ApiKey(name, role, now)

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE digest = {self.dialect.placeholder}", (digest,))
        return _key(rows[0]) if rows else None

    async def list_keys(self) -> list[ApiKey]:
        return [_key(row) for row in await self._fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY name")]

    async def revoke_key(self, name: str) -> bool:
        return await self._write(f"DELETE FROM api_keys WHERE name = {self.dialect.placeholder}", (name,)) > 0

    async def touch_key(self, name: str, when: float) -> None:
        mark = self.dialect.placeholder
        await self._write(f"UPDATE api_keys SET last_used_at = {mark} WHERE name = {mark}", (when, name))
