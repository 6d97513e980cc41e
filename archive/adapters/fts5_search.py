"""Free-text search index in SQLite FTS5 (the embedded default).

``search_docs`` holds one row per instance (SOP Instance UID unique, the
flattened fields as JSON); ``search_fts`` is a plain FTS5 table over the text
whose rowid is the row's rowid, so a document is replaced by rowid in the same
transaction and no old term survives. (A contentless-delete table would save
the stored copy of the text but needs SQLite >= 3.43.)

One connection in one writer thread does every write; readers use their own
connections on a small pool. WAL lets readers run while the writer commits.
User text never reaches the MATCH grammar raw: it is cut into terms, each
quoted as an FTS5 string, and the terms are ANDed.

Schema 2 adds virtual generated columns for facets and sorting (study_date,
modality, institution, body_part: the first value of the attribute in
``fields``), schema 3 an indexed patient_id, so existing rows need no rewrite; ``query()`` translates a
SearchRequest with :mod:`archive.adapters.fts5_query`.

Schema 4 adds ``search_study_groups``: per study, one row for each distinct
combination of the attributes a study list filters, sorts and facets on
(:data:`~archive.adapters.fts5_query.STUDY_GROUP_ATTRIBUTES`), with how many
instances carry it (``n``) and the smallest rowid among them (``rep``). Every
instance belongs to exactly one row, so a study-level request without free text
that filters on those attributes gets the same answer from a few rows a study as
from every instance (at a million instances, tens of thousands of rows instead of
a million JSON documents). The rows are kept in the same transaction as each
upsert and delete; each document names its group (``grp``, indexed), so a group
whose representative leaves finds the next one by index, and a delete reads no
JSON. The upgrade builds the groups from the stored documents once (a full pass
over them: 2.8 s for 100,000 documents here).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from archive.adapters import fts5_query
from archive.adapters._executor import Blocking
from archive.adapters._sqlite import connect as sqlite_connect
from archive.core import jsontext
from archive.core.errors import BackendUnavailable, ConfigError
from archive.core.models import SearchDocument
from archive.core.ports import SearchHit
from archive.core.query import InvalidQuery
from archive.core.records import fold
from archive.core.search import FACETS, FacetBucket, GroupHit, SearchRequest, SearchResult, make_hit

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 4
MAX_TERMS = 32  # more terms than this in one query are ignored
MAX_LIMIT = 10_000  # no unbounded result sets (same cap as OpenSearch's result window)
# SQLite errors that say "not now" (busy, disk, permissions) rather than "wrong".
_TRANSIENT = ("locked", "busy", "disk i/o", "full", "unable to open", "readonly", "no such table")
_HAS_TOKEN = re.compile(r"[^\W_]")  # a chunk without a letter or digit has no FTS5 token
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # FTS5 ends a string at NUL: never pass controls

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS search_docs (
    rowid INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    fields TEXT NOT NULL CHECK (json_valid(fields)),
    indexed_at REAL NOT NULL
)""",
    """CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5(
    text, tokenize = 'unicode61 remove_diacritics 2'
)""",
)

# Columns derived from the fields JSON (the first value of an attribute), for filters, facets and
# sorting: of search_docs (schemas 2 and 3) and of search_study_groups (schema 4).
_FACET_COLUMNS = (
    ("study_date", "StudyDate"), ("modality", "Modality"),
    ("institution", "InstitutionName"), ("body_part", "BodyPartExamined"),
)
_PATIENT_COLUMN = ("patient_id", "PatientID")


def _derived(column: str, keyword: str) -> str:
    return f"{column} TEXT GENERATED ALWAYS AS (json_extract(fields, '$.{keyword}[0]')) VIRTUAL"


# Schema 1 -> 2: facet and sort columns (nothing to backfill).
_SCHEMA_2 = tuple(
    f"ALTER TABLE search_docs ADD COLUMN {_derived(column, keyword)}" for column, keyword in _FACET_COLUMNS
) + (
    "CREATE INDEX IF NOT EXISTS search_docs_study ON search_docs (study_uid)",
    "CREATE INDEX IF NOT EXISTS search_docs_series ON search_docs (series_uid)",
    "CREATE INDEX IF NOT EXISTS search_docs_date ON search_docs (study_date)",
)

# Schema 2 -> 3: an indexed PatientID column for exact patient filters.
_SCHEMA_3 = (
    f"ALTER TABLE search_docs ADD COLUMN {_derived(*_PATIENT_COLUMN)}",
    "CREATE INDEX IF NOT EXISTS search_docs_patient ON search_docs (patient_id)",
)

def group_fields(source: str) -> str:
    """The attributes of a document (JSON in ``source``) its study group is keyed by, as SQLite
    writes them (absent ones left out), so that the same values always give the same text."""
    return "json_patch('{}', json_object(" + ", ".join(
        f"'{keyword}', {source} -> '$.{keyword}'" for keyword in fts5_query.STUDY_GROUP_ATTRIBUTES
    ) + "))"


GROUP_FIELDS = group_fields("fields")
_GROUP_KEY = f"SELECT {GROUP_FIELDS} FROM (SELECT ? AS fields)"  # of a document's JSON, before it is stored

# Schema 3 -> 4: study groups, built from the stored documents; each document names its group
# (``grp``, indexed), so that a group finds its next representative without reading JSON.
_SCHEMA_4 = (
    """CREATE TABLE IF NOT EXISTS search_study_groups (
    rowid INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    fields TEXT NOT NULL,
    n INTEGER NOT NULL,
    rep INTEGER,
""" + "".join(f"    {_derived(column, keyword)},\n" for column, keyword in (*_FACET_COLUMNS, _PATIENT_COLUMN))
    + "    UNIQUE (study_uid, fields)\n)",
    "ALTER TABLE search_docs ADD COLUMN grp INTEGER",
    "INSERT INTO search_study_groups (study_uid, fields, n, rep) "
    f"SELECT study_uid, {GROUP_FIELDS} AS g, count(*), min(rowid) FROM search_docs GROUP BY study_uid, g",
    "UPDATE search_docs SET grp = (SELECT g.rowid FROM search_study_groups AS g "
    f"WHERE g.study_uid = search_docs.study_uid AND g.fields = {group_fields('search_docs.fields')})",
    "CREATE INDEX IF NOT EXISTS search_docs_grp ON search_docs (grp)",
)
# A group's next representative when its present one leaves: an index lookup.
NEXT_REP = "SELECT min(rowid) FROM search_docs WHERE grp = ?"

_UPSERT_DOC = """
INSERT INTO search_docs (sop_instance_uid, study_uid, series_uid, fields, indexed_at, grp)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (sop_instance_uid) DO UPDATE SET
    study_uid = excluded.study_uid, series_uid = excluded.series_uid,
    fields = excluded.fields, indexed_at = excluded.indexed_at, grp = excluded.grp
RETURNING rowid
"""

_SEARCH = """
SELECT d.sop_instance_uid, d.study_uid, d.series_uid, bm25(search_fts) AS bm25
FROM search_fts JOIN search_docs AS d ON d.rowid = search_fts.rowid
WHERE search_fts MATCH ?
ORDER BY bm25
LIMIT ?
"""


def match_expression(text: str) -> str | None:
    """An FTS5 MATCH expression for user ``text``: quoted terms, ANDed.

    Terms split on whitespace; each becomes an FTS5 string (``"..."`` with ``"``
    doubled), so operators, column filters and parentheses in the input are
    plain text. A trailing ``*`` makes the term a prefix query. Returns None
    when the text has no searchable term.
    """
    parts: list[str] = []
    for chunk in _CONTROL.sub(" ", text).split()[:MAX_TERMS]:
        prefix = chunk.endswith("*")
        chunk = chunk.rstrip("*")
        if not _HAS_TOKEN.search(chunk):
            continue
        quoted = '"' + chunk.replace('"', '""') + '"'
        parts.append(quoted + ("*" if prefix else ""))
    return " AND ".join(parts) if parts else None


async def _guard(blocking: Blocking, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on ``blocking``; transient SQLite failures become BackendUnavailable."""
    try:
        return await blocking.run(fn, *args)
    except sqlite3.OperationalError as exc:
        if any(marker in str(exc).lower() for marker in _TRANSIENT):
            raise BackendUnavailable("search", str(exc)) from exc
        raise


class Fts5Search:
    name = "fts5-search"

    def __init__(self, path: Path, *, page_size: int = 1000, readers: int = 4) -> None:
        self.path = Path(path)
        self.page_size = page_size
        self._writer = Blocking("fts5-write", workers=1)
        self._readers = Blocking("fts5-read", workers=readers)
        self._write_conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # connections (each used only by the thread that opened it)

    def _connect(self) -> sqlite3.Connection:
        return sqlite_connect(self.path, "search", check_same_thread=False)

    def _w(self) -> sqlite3.Connection:
        if self._write_conn is None:
            self._write_conn = self._connect()
        return self._write_conn

    def _r(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            conn.create_function("archive_fold", 1, fold, deterministic=True)
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return conn

    # Backend

    def _migrate(self) -> None:
        conn = self._w()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM search_schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: search schema version {current} is newer than this code's "
                    f"({SCHEMA_VERSION}); run a newer archive or point at another file"
                )
            for version, statements in ((2, _SCHEMA_2), (3, _SCHEMA_3), (4, _SCHEMA_4)):
                if current < version:
                    for statement in statements:
                        conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM search_schema_version")
                conn.execute("INSERT INTO search_schema_version VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise

    async def migrate(self) -> None:
        await _guard(self._writer, self._migrate)

    def _ping(self) -> None:
        try:
            self._r().execute("SELECT 1 FROM search_docs LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise BackendUnavailable("search", str(exc)) from exc

    async def ping(self) -> None:
        await _guard(self._readers, self._ping)

    def _close_writer(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    async def close(self) -> None:
        await self._writer.run(self._close_writer)
        self._writer.shutdown()
        self._readers.shutdown()
        with self._lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()

    # SearchIndex

    @staticmethod
    def _group(conn: sqlite3.Connection, study: str, fields: str) -> int:
        """The study group of these values (made, empty, if there is none: the caller joins it)."""
        row = conn.execute(
            "SELECT rowid FROM search_study_groups WHERE study_uid = ? AND fields = ?", (study, fields)
        ).fetchone()
        if row is None:
            row = conn.execute(
                "INSERT INTO search_study_groups (study_uid, fields, n, rep) VALUES (?, ?, 0, NULL) RETURNING rowid",
                (study, fields),
            ).fetchone()
        return int(row[0])

    @staticmethod
    def _leave_group(conn: sqlite3.Connection, group: int | None, rowid: int) -> None:
        """Document ``rowid`` is no longer in ``group`` (deleted, or moved to another already)."""
        row = conn.execute("SELECT n, rep FROM search_study_groups WHERE rowid = ?", (group,)).fetchone()
        if row is None:  # cannot happen: every write of a schema-4 file keeps the groups
            log.warning("search: a document's study group is missing (groups out of step with documents)")
            return
        n, rep = row
        if n <= 1:
            conn.execute("DELETE FROM search_study_groups WHERE rowid = ?", (group,))
            return
        conn.execute("UPDATE search_study_groups SET n = n - 1 WHERE rowid = ?", (group,))
        if rep == rowid:
            conn.execute(f"UPDATE search_study_groups SET rep = ({NEXT_REP}) WHERE rowid = ?", (group, group))

    def _upsert(self, documents: Sequence[SearchDocument]) -> None:
        conn = self._w()
        conn.execute("BEGIN IMMEDIATE")  # waits busy_timeout for another writer
        try:
            for doc in documents:
                fields = jsontext.dumps(doc.fields)
                old = conn.execute(
                    "SELECT grp FROM search_docs WHERE sop_instance_uid = ?", (doc.sop_instance_uid,)
                ).fetchone()
                (key,) = conn.execute(_GROUP_KEY, (fields,)).fetchone()
                group = self._group(conn, doc.study_uid, key)
                (rowid,) = conn.execute(
                    _UPSERT_DOC,
                    (doc.sop_instance_uid, doc.study_uid, doc.series_uid, fields, doc.indexed_at, group),
                ).fetchone()
                # FTS5 honours OR REPLACE on rowid: the old terms go with the old row.
                conn.execute(
                    "INSERT OR REPLACE INTO search_fts (rowid, text) VALUES (?, ?)", (rowid, doc.text)
                )
                if old is None or old[0] != group:
                    conn.execute(
                        "UPDATE search_study_groups SET n = n + 1, rep = min(coalesce(rep, ?), ?) WHERE rowid = ?",
                        (rowid, rowid, group),
                    )
                    if old is not None:
                        self._leave_group(conn, old[0], rowid)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise
        log.debug("search upsert: %d documents", len(documents))

    async def upsert(self, documents: Sequence[SearchDocument]) -> None:
        if documents:
            await _guard(self._writer, self._upsert, list(documents))

    def _delete(self, uids: Sequence[str]) -> None:
        conn = self._w()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for uid in uids:
                row = conn.execute(
                    "DELETE FROM search_docs WHERE sop_instance_uid = ? RETURNING rowid, grp", (uid,)
                ).fetchone()
                if row is not None:  # the terms and the group count go with the document's row
                    conn.execute("DELETE FROM search_fts WHERE rowid = ?", (row[0],))
                    self._leave_group(conn, row[1], row[0])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def delete(self, sop_instance_uids: Sequence[str], study_uids: Collection[str] = ()) -> None:
        if sop_instance_uids:  # the study groups change in the same transaction: no study_uids needed
            await _guard(self._writer, self._delete, list(sop_instance_uids))

    def _search(self, expression: str, limit: int) -> list[SearchHit]:
        rows = self._r().execute(_SEARCH, (expression, limit)).fetchall()
        # bm25() is lower for better matches; a hit's score is higher for better.
        return [SearchHit(uid, study, series, -float(rank)) for uid, study, series, rank in rows]

    async def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        expression = match_expression(text)
        if expression is None or limit <= 0:
            return []
        return await _guard(self._readers, self._search, expression, min(limit, MAX_LIMIT))

    def _query(self, request: SearchRequest, expression: str | None, groups: bool = True) -> SearchResult:
        """``groups``: answer from the study groups when the request allows it (tests turn it off)."""
        conn = self._r()
        groups = groups and fts5_query.by_groups(request, expression)
        base = fts5_query.matched(request, expression, groups)
        page_sql = fts5_query.page_sql(request, expression is not None)
        # The matches go to a TEMP table (the connection's own, never the file), read by the
        # queries below in one snapshot and gone with the rollback.
        conn.execute("PRAGMA query_only=OFF")
        conn.execute("BEGIN")
        try:
            conn.execute("DROP TABLE IF EXISTS temp.m")
            conn.execute(base.text, base.params)
            total = int(conn.execute("SELECT count(DISTINCT g) FROM m").fetchone()[0])
            rows = conn.execute(page_sql, [request.limit, request.offset]).fetchall()
            best: dict[str, tuple[tuple[str, str, str], dict[str, list[str]]]] = {}
            if rows:
                keys = [row[0] for row in rows]
                for g, study, series, sop, fields in conn.execute(fts5_query.best_documents_sql(len(keys)), keys):
                    best[g] = ((study, series, sop), jsontext.loads(fields))
            facets = {}
            for facet in request.facets:
                buckets = conn.execute(fts5_query.facet_sql(facet, request.date_interval))
                facets[facet] = tuple(FacetBucket(str(value), int(n)) for value, n in buckets)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("PRAGMA query_only=ON")
        if groups and any(row[0] not in best for row in rows):  # cannot happen while writes keep the groups
            log.warning("search: a study group's representative is gone; answering from the documents")
            return self._query(request, expression, groups=False)
        hits: list[GroupHit] = []
        for g, score, n, modalities, _, _ in rows:
            uids, fields = best[g]
            hits.append(make_hit(request, uids, fields, score=None if score is None else float(score),
                                 instances=int(n), modalities=modalities.split(",") if modalities else ()))
        return SearchResult(total=total, hits=tuple(hits), facets=facets)

    async def query(self, request: SearchRequest) -> SearchResult:
        unknown = set(request.facets) - set(FACETS)
        if unknown:
            raise InvalidQuery(f"facets: unknown facet(s) {', '.join(sorted(unknown))}")
        expression = match_expression(request.text)
        if request.text.strip() and expression is None:  # text without a searchable term
            return SearchResult(total=0, hits=(), facets={facet: () for facet in request.facets})
        return await _guard(self._readers, self._query, request, expression)

    def _count(self) -> int:
        return int(self._r().execute("SELECT count(*) FROM search_docs").fetchone()[0])

    async def count(self) -> int:
        return await _guard(self._readers, self._count)

    def _page(self, after: str, size: int) -> list[str]:
        rows = self._r().execute(
            "SELECT sop_instance_uid FROM search_docs WHERE sop_instance_uid > ? "
            "ORDER BY sop_instance_uid LIMIT ?",
            (after, size),
        ).fetchall()
        return [uid for (uid,) in rows]

    async def ids(self) -> AsyncIterator[str]:
        """Every indexed SOP Instance UID, in UID order, one page at a time."""
        after = ""
        while True:
            page = await _guard(self._readers, self._page, after, self.page_size)
            for uid in page:
                yield uid
            if len(page) < self.page_size:
                return
            after = page[-1]
