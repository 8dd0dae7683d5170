-- hubbub store, schema version 1. Shares the database file with the queue (hubbub.db).
CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    handle        TEXT    NOT NULL UNIQUE,
    password_hash TEXT,                      -- argon2id PHC string; NULL for app-token users
    email         TEXT,
    created_ms    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0, -- the user's latest durable event
    acked_seq     INTEGER NOT NULL DEFAULT 0  -- highest seq any device acknowledged
) WITHOUT ROWID;

CREATE TABLE refresh_tokens (
    token_hash TEXT    PRIMARY KEY,          -- sha256 of the token, hex; the token is never stored
    user_id    TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_ms);

CREATE TABLE conversations (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,             -- 'direct' | 'group'
    title      TEXT,
    created_by TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    ephemeral  INTEGER NOT NULL DEFAULT 0,
    direct_key TEXT    UNIQUE                -- 'a|b' (sorted user ids) for direct conversations
) WITHOUT ROWID;

CREATE TABLE members (
    conversation_id TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    joined_ms       INTEGER NOT NULL,
    read_message    INTEGER NOT NULL DEFAULT 0, -- id of the last message this member read
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT    NOT NULL,
    sender          TEXT    NOT NULL,
    client_msg_id   TEXT    NOT NULL,
    text            TEXT    NOT NULL,
    attachments     TEXT    NOT NULL DEFAULT '[]', -- JSON array of {"media": id}
    ts              INTEGER NOT NULL,
    UNIQUE (sender, client_msg_id)
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

-- One row per durable event per recipient. A `message.new` event only points at its message
-- (the frame is rebuilt on replay): a message to a 1,000-member group writes 1,000 small
-- rows, not 1,000 copies of the message. Every other event stores its frame as JSON.
CREATE TABLE inbox (
    user_id    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    message_id INTEGER,                      -- set for message.new
    frame      TEXT,                         -- the frame as JSON (seq included) otherwise
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_by_time ON inbox (ts);

CREATE TABLE blocks (
    blocker    TEXT    NOT NULL,
    blocked    TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;

-- Full-text search over message text, kept in step with `messages` by triggers (so a search
-- sees a message as soon as its send is committed).
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    text, content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

CREATE TABLE media (
    id           TEXT    PRIMARY KEY,
    owner        TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL
) WITHOUT ROWID;
