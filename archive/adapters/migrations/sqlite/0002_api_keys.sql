-- Catalog schema, version 2 (SQLite): API keys of scripts and integrations (HTTP API).
-- Only the SHA-256 of each key is stored (hex); the key itself is shown once, at creation.

CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    digest TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_used_at REAL
);
