-- Catalog schema, version 5 (sqlite): study-stable detection (archive/adapters/sql_stable.py).
-- A row per watcher ('' for the change feed, 'rule:<name>' per stable forwarding rule) and study
-- that received an instance: due once no new one arrived for N seconds. The first indexer to
-- claim a due row (a lease, claimed_until) acts on it and deletes it, unless a new instance moved
-- due_at meanwhile: stable once per quiet period, with any number of indexers.

CREATE TABLE stable_pending (
    name TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    due_at REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (name, study_uid)
);

CREATE INDEX stable_pending_due ON stable_pending (name, due_at);
