-- hubbub embedded queue and log, schema version 1.
-- A message's state is encoded in visible_ms and token (see embedded/mod.rs).
CREATE TABLE q_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: ids grow with send order
    queue         TEXT    NOT NULL,
    body          BLOB    NOT NULL,
    key           TEXT,                              -- per-key FIFO group
    dead_key      TEXT,                              -- the key, kept while in a DLQ
    dead_count    INTEGER NOT NULL DEFAULT 0,        -- deliveries before dead-lettering
    enqueued_ms   INTEGER NOT NULL,                  -- first enqueue time
    ready_ms      INTEGER NOT NULL,                  -- send time + delay
    visible_ms    INTEGER NOT NULL,                  -- deliverable from; i64::MAX = waits on key
    expires_ms    INTEGER,                           -- TTL deadline
    receive_count INTEGER NOT NULL DEFAULT 0,
    token         INTEGER                            -- current receipt token, NULL if none
);
CREATE INDEX q_messages_ready ON q_messages (queue, visible_ms, id);
CREATE INDEX q_messages_key ON q_messages (queue, key, id) WHERE key IS NOT NULL;
CREATE INDEX q_messages_expiry ON q_messages (queue, expires_ms) WHERE expires_ms IS NOT NULL;

CREATE TABLE q_dedupe (
    queue      TEXT    NOT NULL,
    dedupe_id  TEXT    NOT NULL,
    message_id INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedupe_id)
) WITHOUT ROWID;
CREATE INDEX q_dedupe_expiry ON q_dedupe (expires_ms);

CREATE TABLE q_counters (
    queue         TEXT    PRIMARY KEY,
    expired       INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE log_meta (
    log         TEXT    PRIMARY KEY,
    next_pos    INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL                     -- bytes ever appended
) WITHOUT ROWID;

CREATE TABLE log_entries (
    log       TEXT    NOT NULL,
    pos       INTEGER NOT NULL,                      -- the offset
    ts_ms     INTEGER NOT NULL,
    end_bytes INTEGER NOT NULL,                      -- total_bytes after this entry
    body      BLOB    NOT NULL,
    PRIMARY KEY (log, pos)
);

CREATE TABLE log_groups (
    log      TEXT    NOT NULL,
    grp      TEXT    NOT NULL,
    next_pos INTEGER NOT NULL,
    PRIMARY KEY (log, grp)
) WITHOUT ROWID;
