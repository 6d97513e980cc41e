"""Backends of the query benchmark: isolated per run, bulk loaded, removed afterwards.

``postgres`` is PostgreSQL + OpenSearch of ``scripts/services.sh`` with a schema and an
index of the run's own (``tests/e2e/distributed.py`` creates and drops them);
``sqlite`` is SQLite + FTS5 files in a temp dir. Both are loaded through the archive's
own adapters (``Catalog.upsert``, ``SearchIndex.upsert``) in large batches, the rows
and documents built by ``CatalogEntry.from_message`` and ``flatten`` as the indexer
builds them; the query role then runs as its own process on the loaded backends.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from _util import THIS_BUILD, Build, Proc, free_port

from archive.adapters.opensearch_search import _source as opensearch_source  # the adapter's document body
from archive.core.flatten import flatten
from archive.core.models import IndexMessage, SearchDocument
from archive.core.ports import Catalog, SearchIndex
from archive.core.records import CatalogEntry

BATCH = 2000  # instances per upsert call
IN_FLIGHT = 2  # batches written concurrently (the next one is built meanwhile)


class Family:
    """One backend family: catalog + search index, the environment the query role needs."""

    key = ""
    label = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env: dict[str, str] = {}
        self.catalog: Catalog | None = None
        self.search: SearchIndex | None = None

    async def setup(self) -> None:
        raise NotImplementedError

    def saved(self) -> dict[str, Any]:
        """What ``attach`` needs to open these backends again (``--keep``, ``--attach``)."""
        return {"env": self.env}

    async def attach(self, saved: dict[str, Any]) -> None:
        """Open the backends a ``--keep`` run left, as they are (nothing created or loaded)."""
        raise NotImplementedError

    async def bulk_mode(self, on: bool) -> None:
        """Switch the backends to (or back from) bulk loading."""

    async def analyze(self) -> None:
        """What the backend does on its own after a bulk load (autovacuum, refresh)."""

    answer_cache = False  # whether the backends keep answers until the data changes

    def sizes(self) -> dict[str, float]:
        return {}

    async def forget_cached_answers(self) -> None:
        """Drop cached answers, as a change to the data would (what an ingesting archive sees)."""

    async def cache_answers(self, on: bool) -> None:
        """Turn the backends' answer cache on or off (``--no-request-cache``)."""

    async def close(self) -> None:
        for backend in (self.catalog, self.search):
            if backend is not None:
                await backend.close()

    def teardown(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restore(self, saved: dict[str, Any]) -> None:
        """Name the backends ``saved`` describes, without opening them (``--remove``)."""
        self.env = dict(saved["env"])

    def remove_kept(self) -> None:
        """Remove what a ``--keep`` run left (after ``restore``): its files, and backends of its own."""
        self.teardown()

    async def load(self, messages: list[IndexMessage]) -> None:
        """Upsert ``messages`` into catalog and search index, ``IN_FLIGHT`` batches at a time."""
        assert self.catalog is not None and self.search is not None
        pending: list[asyncio.Task[Any]] = []
        for start in range(0, len(messages), BATCH):
            chunk = messages[start:start + BATCH]
            entries = [CatalogEntry.from_message(m) for m in chunk]
            documents = [flatten(m, indexed_at=0.0) for m in chunk]
            writes: list[Awaitable[None]] = [self.catalog.upsert(entries), self.write_search(documents)]
            pending.append(asyncio.ensure_future(asyncio.gather(*writes)))
            await asyncio.sleep(0)  # let the writes start before building the next batch
            while len(pending) >= IN_FLIGHT:
                await pending.pop(0)
        for task in pending:
            await task

    async def write_search(self, documents: list[SearchDocument]) -> None:
        assert self.search is not None
        await self.search.upsert(documents)


class PostgresFamily(Family):
    key = "postgres"
    label = "PostgreSQL + OpenSearch"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.name = "benchq" + uuid.uuid4().hex[:10]
        self._backends: Any = None
        self._bulk_client: Any = None

    async def setup(self) -> None:
        from tests.e2e.distributed import Distributed

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._backends = Distributed(self.workdir, self.name)
        try:
            self._backends.configure()  # own schema; own index name
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pytest's Skipped when a service is missing
            raise RuntimeError(f"PostgreSQL/OpenSearch: {exc}") from None
        env = self._backends.env
        self.env = {k: env[k] for k in ("ARCHIVE_CATALOG", "ARCHIVE_SEARCH", "ARCHIVE_SEARCH_INDEX")}
        await self._open()
        assert self.catalog is not None and self.search is not None
        await self.catalog.migrate()
        await self.search.migrate()

    async def _open(self) -> None:
        from opensearchpy import AsyncOpenSearch

        from archive.adapters.opensearch_search import OpenSearchIndex
        from archive.adapters.postgres_catalog import PostgresCatalog

        self.catalog = PostgresCatalog(self.env["ARCHIVE_CATALOG"], max_size=IN_FLIGHT + 1)
        self.search = OpenSearchIndex(self.env["ARCHIVE_SEARCH"], index=self.name, timeout=120)
        # uncompressed on loopback: gzip of 6 MB bulk bodies would cost this process a core
        self._bulk_client = AsyncOpenSearch(hosts=[self.env["ARCHIVE_SEARCH"]], timeout=600, http_compress=False)

    def saved(self) -> dict[str, Any]:
        return {"env": self.env, "name": self.name}

    def restore(self, saved: dict[str, Any]) -> None:
        self.env, self.name = dict(saved["env"]), str(saved["name"])

    async def attach(self, saved: dict[str, Any]) -> None:
        self.restore(saved)
        await self._open()

    answer_cache = True  # OpenSearch's shard request cache: requests without hits, until a refresh changes the index

    async def forget_cached_answers(self) -> None:
        indexes = f"{self.name},{self.name}.studies"  # the study documents' answers too
        await asyncio.to_thread(_post, f"{self.env['ARCHIVE_SEARCH'].rstrip('/')}/{indexes}/_cache/clear"
                                       "?request=true&ignore_unavailable=true")

    async def cache_answers(self, on: bool) -> None:
        """OpenSearch's request cache on the instance and study indexes: off, every request is answered
        in full without a cache to clear before it (clearing it slowed the next request by 20-30 ms
        at 10M, whatever it asked: docs/benchmarks.md)."""
        import json
        import urllib.request

        body = json.dumps({"index": {"requests.cache.enable": on}}).encode()
        search = self.env["ARCHIVE_SEARCH"].rstrip("/")
        url = f"{search}/{self.name},{self.name}.studies/_settings?ignore_unavailable=true"
        request = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": "application/json"})
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=120).close())
        self.answer_cache = on

    def remove_kept(self) -> None:
        """Drop the schema and index a ``--keep`` run left (after ``restore``), then its directory."""
        import psycopg

        from tests.e2e.distributed import _drop_index

        if not re.fullmatch(r"benchq[0-9a-f]{10}", self.name):  # only ever a name this bench made
            raise ValueError(f"not a bench schema: {self.name!r}")
        _drop_index(self.env["ARCHIVE_SEARCH"], self.name)
        with psycopg.connect(self.env["ARCHIVE_CATALOG"].split("?")[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        super().teardown()

    async def close(self) -> None:
        if self._bulk_client is not None:
            await self._bulk_client.close()
        await super().close()

    def _sql(self, statement: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.env["ARCHIVE_CATALOG"], autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    async def bulk_mode(self, on: bool) -> None:
        """Refresh off while loading (then back to the adapter's interval and one refresh)."""
        interval = "-1" if on else self.search.refresh_interval  # type: ignore[union-attr]
        await self._bulk_client.indices.put_settings(index=self.name, body={"index": {"refresh_interval": interval}})
        if not on:
            await self._bulk_client.indices.refresh(index=self.name, request_timeout=600)
            # the bulk path went around upsert(), which keeps the study documents
            from archive.core.ports import StudyDocumentsSearch

            assert isinstance(self.search, StudyDocumentsSearch)
            await self.search.rebuild_study_documents()

    async def write_search(self, documents: list[SearchDocument]) -> None:
        """One bulk request without ``refresh=wait_for`` (the adapter's read-your-writes wait)."""
        body: list[dict[str, Any]] = []
        for doc in documents:
            body += [{"index": {"_index": self.name, "_id": doc.sop_instance_uid}}, opensearch_source(doc)]
        result = await self._bulk_client.bulk(body=body, filter_path="errors,items.*.error", request_timeout=600)
        if result.get("errors"):
            raise RuntimeError(f"bulk load into {self.name}: {str(result)[:500]}")

    async def analyze(self) -> None:
        await asyncio.to_thread(self._sql, "VACUUM ANALYZE")  # only the run's schema: search_path

    def sizes(self) -> dict[str, float]:
        rows = self._sql(f"SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                         f"ON n.oid = c.relnamespace WHERE n.nspname = '{self.name}' AND c.relkind = 'r'")
        from _util import http_json

        base = self.env["ARCHIVE_SEARCH"]
        _, stats = http_json(f"{base}/{self.name}/_stats/store", timeout=30)
        store = stats["_all"]["primaries"]["store"]["size_in_bytes"] if isinstance(stats, dict) else 0
        memory: dict[str, float] = {}
        _, nodes = http_json(f"{base}/_nodes/_local/stats/jvm,process", timeout=30)
        for node in (nodes.get("nodes", {}).values() if isinstance(nodes, dict) else ()):
            memory["search_heap_used_mb"] = node["jvm"]["mem"]["heap_used_in_bytes"] / 2**20
            memory["search_heap_max_mb"] = node["jvm"]["mem"]["heap_max_in_bytes"] / 2**20
        _, info = http_json(f"{base}/_nodes/_local/process", timeout=30)
        for node in (info.get("nodes", {}).values() if isinstance(info, dict) else ()):
            memory["search_rss_mb"] = _rss_kb(int(node["process"]["id"])) / 1024
        backend = self._sql("SELECT pid FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        postmaster = _parent(int(backend[0][0])) if backend else None
        if postmaster:  # proportional set size: shared buffers counted once across the backends
            memory["catalog_pss_mb"] = sum(_pss_kb(pid) for pid in [postmaster, *_children_of(postmaster)]) / 1024
        return {"catalog_mb": float(rows[0][0] or 0) / 2**20, "search_mb": store / 2**20, **memory}

    def teardown(self) -> None:
        if self._backends is not None:
            self._backends.teardown()  # index, template and schema (queue and bucket never made)
        super().teardown()


class SqliteFamily(Family):
    key = "sqlite"
    label = "SQLite + FTS5"

    async def setup(self) -> None:
        from archive.adapters.fts5_search import Fts5Search
        from archive.adapters.sqlite_catalog import SqliteCatalog

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {"ARCHIVE_CATALOG": f"sqlite://{self.workdir / 'catalog.db'}",
                    "ARCHIVE_SEARCH": f"sqlite://{self.workdir / 'search.db'}"}
        self.catalog = SqliteCatalog(self.workdir / "catalog.db")
        self.search = Fts5Search(self.workdir / "search.db")
        await self.catalog.migrate()
        await self.search.migrate()

    async def attach(self, saved: dict[str, Any]) -> None:
        from archive.adapters.fts5_search import Fts5Search
        from archive.adapters.sqlite_catalog import SqliteCatalog

        self.restore(saved)
        self.catalog = SqliteCatalog(self.workdir / "catalog.db")
        self.search = Fts5Search(self.workdir / "search.db")

    async def analyze(self) -> None:
        # checkpoint the WAL written by the load; the archive itself runs no ANALYZE
        def checkpoint() -> None:
            for name in ("catalog.db", "search.db"):
                with sqlite3.connect(self.workdir / name, timeout=60) as con:
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await asyncio.to_thread(checkpoint)

    def sizes(self) -> dict[str, float]:
        def mb(name: str) -> float:
            return sum(p.stat().st_size for p in self.workdir.glob(name + "*")) / 2**20

        return {"catalog_mb": mb("catalog.db"), "search_mb": mb("search.db")}


def _status_kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass  # gone, or not ours to read
    return 0


def _rss_kb(pid: int) -> int:
    return _status_kb(f"/proc/{pid}/status", "VmRSS")


def _pss_kb(pid: int) -> int:
    return _status_kb(f"/proc/{pid}/smaps_rollup", "Pss")


def _parent(pid: int) -> int | None:
    """The parent of a local process (PostgreSQL's postmaster of a backend), None if not local."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent(int(entry.name)) == pid:
            out.append(int(entry.name))
    return out


def _post(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=120).close()


FAMILIES: dict[str, type[Family]] = {"postgres": PostgresFamily, "sqlite": SqliteFamily}


class QueryService:
    """``dicom-archive query`` on the loaded backends, HTTP and DICOM on free loopback ports."""

    def __init__(self, family: Family, build: Build = THIS_BUILD) -> None:
        self.family = family
        self.build = build
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120.0) -> None:
        data = self.family.workdir / ("query-data" + (f"-{self.build.tag}" if self.build.tag else ""))
        data.mkdir(parents=True, exist_ok=True)
        env = {
            **self.family.env, "ARCHIVE_DATA_DIR": str(data), "ARCHIVE_BIND": "127.0.0.1",
            "ARCHIVE_HTTP_PORT": str(self.http_port), "ARCHIVE_DICOM_PORT": str(self.dicom_port),
            "ARCHIVE_QUERY_DICOM_PORT": str(self.dicom_port), "ARCHIVE_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        for inherited in [k for k in os.environ if k.startswith("ARCHIVE_") and k not in env]:
            env[inherited] = ""  # nothing from the caller's shell leaks into the role
        name = f"query-{self.family.key}" + (f"-{self.build.tag}" if self.build.tag else "")
        self.proc = Proc(name, [self.build.python, "-m", "archive.cli", "query"],
                         self.family.workdir / f"{name}.log", env, cwd=self.build.root)
        self.proc.wait_http(f"{self.base}/readyz", timeout=timeout)

    def dicom_listening(self, timeout: float = 5.0) -> bool:
        """Whether the role answers on its DICOM port (the C-FIND SCP has landed)."""
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
            self.proc = None
