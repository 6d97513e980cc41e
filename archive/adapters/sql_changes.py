"""What the SQLite and PostgreSQL catalogs share for the change feed, tombstones and deletes.

The feed's ordering (a reader never sees entry N+1 before entry N is visible): every writer
assigns ``seq`` as ``MAX(seq) + 1`` as the last step of its transaction, while it holds the
catalog's one feed lock until it commits. PostgreSQL: ``pg_advisory_xact_lock`` (released at
commit or rollback, after the commit is visible); SQLite: the database's write lock that
``BEGIN IMMEDIATE`` takes. So writers append to the feed one at a time in commit order, and
``MAX(seq)`` read under the lock is the last committed entry: seq order equals commit order, a
rollback leaves no gap (nothing drew a number from a sequence), and the numbers persist with
the table across restarts. The lock is held from the feed insert to the commit only (the upsert
itself runs before it, in parallel with other indexers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from archive.adapters.sql_catalog import INSTANCE_LIST_COLUMNS, Dialect, UpsertPlan
from archive.core.changes import Change, ChangeAction, Deletion, UpsertOutcome
from archive.core.records import CatalogEntry, CatalogInstance

FeedRow = tuple[str, str, str, str]  # action, study, series, SOP Instance UID

NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM changes"
CHANGE_COLUMNS = "seq, action, study_uid, series_uid, sop_instance_uid, at"


def insert_change(dialect: Dialect) -> str:
    marks = ", ".join(dialect.placeholder for _ in range(6))
    return f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES ({marks})"


def change_values(last_seq: int, rows: Sequence[FeedRow], at: float) -> list[tuple[Any, ...]]:
    return [(last_seq + n, *row, at) for n, row in enumerate(rows, start=1)]


def select_changes(dialect: Dialect) -> str:
    mark = dialect.placeholder
    return f"SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > {mark} ORDER BY seq LIMIT {mark}"


def change(row: Sequence[Any]) -> Change:
    return Change(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), float(row[5]))


def upsert_tombstone(dialect: Dialect) -> str:
    marks = ", ".join(dialect.placeholder for _ in range(4))
    return (f"INSERT INTO tombstones (sop_instance_uid, study_uid, series_uid, deleted_at) VALUES ({marks}) "
            "ON CONFLICT (sop_instance_uid) DO UPDATE SET study_uid = excluded.study_uid, "
            "series_uid = excluded.series_uid, deleted_at = excluded.deleted_at")


def split_live(entries: Iterable[CatalogEntry], tombstones: dict[str, float]) -> tuple[list[CatalogEntry], list[str]]:
    """(entries to write, UIDs dropped): an entry received at or before its tombstone is a late
    or redelivered message of a deleted instance; one received after it is a re-send."""
    live: list[CatalogEntry] = []
    dropped: dict[str, None] = {}  # ordered, each UID once
    for entry in entries:
        deleted_at = tombstones.get(entry.instance.sop_instance_uid)
        if deleted_at is not None and entry.instance.received_at <= deleted_at:
            dropped[entry.instance.sop_instance_uid] = None
        else:
            live.append(entry)
    written = {e.instance.sop_instance_uid for e in live}
    return live, [uid for uid in dropped if uid not in written]


def feed_of_upsert(plan: UpsertPlan, prior: dict[str, str]) -> tuple[list[FeedRow], UpsertOutcome]:
    """The feed rows of an upsert, given the SHA-256 each instance had before it (``prior``):
    created for a new UID, updated for another object under the UID, nothing for a redelivery."""
    rows: list[FeedRow] = []
    created: list[str] = []
    updated: list[str] = []
    for row, study_uid, series_uid in plan.instances:
        uid = row.sop_instance_uid
        before = prior.get(uid)
        if before is None:
            rows.append((ChangeAction.CREATED.value, study_uid, series_uid, uid))
            created.append(uid)
        elif before != row.sha256:
            rows.append((ChangeAction.UPDATED.value, study_uid, series_uid, uid))
            updated.append(uid)
    return rows, UpsertOutcome(created=created, updated=updated)


def feed_of_delete(instances: Sequence[CatalogInstance]) -> list[FeedRow]:
    return [(ChangeAction.DELETED.value, i.study_uid, i.series_uid, i.sop_instance_uid)
            for i in sorted(instances, key=lambda i: (i.series_uid, i.sop_instance_uid))]


def build_delete(deletion: Deletion, dialect: Dialect) -> tuple[str, list[str]]:
    """``DELETE FROM instances ... RETURNING`` the rows it removed (as :data:`INSTANCE_LIST_COLUMNS`)."""
    mark = dialect.placeholder
    where, params = [f"study_uid = {mark}"], [deletion.study_uid]
    if deletion.series_uid is not None:
        where.append(f"series_uid = {mark}")
        params.append(deletion.series_uid)
    if deletion.sop_instance_uid is not None:
        where.append(f"sop_instance_uid = {mark}")
        params.append(deletion.sop_instance_uid)
    return f"DELETE FROM instances WHERE {' AND '.join(where)} RETURNING {INSTANCE_LIST_COLUMNS}", params


def patient_of_study(dialect: Dialect) -> str:
    return ("SELECT p.patient_id, p.id FROM studies st JOIN patients p ON st.patient_fk = p.id "
            f"WHERE st.study_uid = {dialect.placeholder}")


def cleanup(dialect: Dialect) -> tuple[str, str, str]:
    """The series and study (by study UID) and the patient (by id) a delete left empty."""
    mark = dialect.placeholder
    return (
        f"DELETE FROM series WHERE study_uid = {mark} "
        "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.series_fk = series.id)",
        f"DELETE FROM studies WHERE study_uid = {mark} "
        "AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_fk = studies.id)",
        f"DELETE FROM patients WHERE id = {mark} "
        "AND NOT EXISTS (SELECT 1 FROM studies st WHERE st.patient_fk = patients.id)",
    )
