-- Catalog schema, version 3 (SQLite): the change feed and the tombstones of deleted instances.
-- changes.seq is assigned by the writer (MAX + 1, see archive/adapters/sql_changes.py) inside its
-- write transaction; BEGIN IMMEDIATE serialises writers, so seq order is commit order, with no gaps.
-- A tombstone keeps a late or redelivered index message of a deleted instance from bringing it
-- back (the indexer drops a message received before deleted_at); a later re-send clears it.

CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    action TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    at REAL NOT NULL
);

CREATE TABLE tombstones (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    deleted_at REAL NOT NULL
);
