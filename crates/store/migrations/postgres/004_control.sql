-- hubbub store on PostgreSQL, schema version 3: the control plane, the same as the SQLite
-- store's sqlite/004_control.sql (see it for what each column holds). A committed change of
-- the runtime config is announced with NOTIFY hubbub_config (payload: the version) in the
-- same transaction, which every process's watcher LISTENs to.
CREATE TABLE api_keys (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    key_hash   TEXT   NOT NULL UNIQUE,
    scopes     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE runtime_config (
    id         INT    PRIMARY KEY CHECK (id = 1),
    version    BIGINT NOT NULL,
    body       TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL
);
INSERT INTO runtime_config (id, version, body, updated_ms) VALUES (1, 0, '{}', 0);
