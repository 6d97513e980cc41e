-- Catalog schema, version 6 (postgresql): instances a rebuild (reindex, verify --repair) wrote into the
-- catalog without a change-feed entry because the catalog did not hold them. When the indexer
-- then writes the same instance from its own index message (a C-STORE whose message was still in
-- the queue while reindex read the object), the feed gets its 'created' entry after all.

CREATE TABLE rebuilt (
    sop_instance_uid TEXT PRIMARY KEY
);
