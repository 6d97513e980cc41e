-- Catalog schema, version 3 (PostgreSQL): the change feed and the tombstones of deleted instances.
-- changes.seq is assigned by the writer under a transaction-scoped advisory lock (MAX + 1, see
-- archive/adapters/sql_changes.py), not by a sequence: seq order is commit order, with no gaps.
-- A tombstone keeps a late or redelivered index message of a deleted instance from bringing it
-- back (the indexer drops a message received before deleted_at); a later re-send clears it.

CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    action TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);

CREATE TABLE tombstones (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    deleted_at DOUBLE PRECISION NOT NULL
);
