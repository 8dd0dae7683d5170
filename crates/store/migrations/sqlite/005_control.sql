-- hubbub store on SQLite, schema version 4: the control plane. API keys (stored as the
-- SHA-256 of the key: a key is 256 random bits, so an unkeyed hash is as strong as any) and
-- the versioned runtime config (one row; version 0 means none stored yet, and every process
-- runs on its configuration file). Applied after version 3.
CREATE TABLE api_keys (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    key_hash   TEXT    NOT NULL UNIQUE,
    scopes     TEXT    NOT NULL,          -- comma-separated: server, admin
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE runtime_config (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    body       TEXT    NOT NULL,          -- the runtime config, JSON
    updated_ms INTEGER NOT NULL
);
INSERT INTO runtime_config (id, version, body, updated_ms) VALUES (1, 0, '{}', 0);
