-- Catalog schema, version 4 (sqlite): the forwarding ledger (archive/adapters/sql_forwards.py).
-- One row per destination and instance: the last outcome of sending it there. A forwarder
-- sends an instance again only when no 'sent' row has the same object checksum.

CREATE TABLE forwards (
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    rule TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (destination, sop_instance_uid)
);

CREATE INDEX forwards_study ON forwards (study_uid, at);
CREATE INDEX forwards_at ON forwards (at);
