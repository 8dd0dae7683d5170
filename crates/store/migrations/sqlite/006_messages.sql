-- Messages in PROTOCOL.md 1.1: replies, threads, mentions, edits (with their versions),
-- deletes (tombstones), reactions (each user's, and a summary per message so a read never
-- counts them), pins.
ALTER TABLE messages ADD COLUMN reply_to INTEGER;          -- a message of the same conversation
ALTER TABLE messages ADD COLUMN thread INTEGER;            -- the thread's root, same conversation
ALTER TABLE messages ADD COLUMN mentions TEXT NOT NULL DEFAULT '[]';  -- JSON array of user ids
ALTER TABLE messages ADD COLUMN edited_ms INTEGER;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN replies INTEGER NOT NULL DEFAULT 0;  -- messages whose thread is this
-- The summary: JSON [{"emoji","count"}] in the order each emoji first came, kept by every
-- reaction.add/remove in the same transaction as the `reactions` row.
ALTER TABLE messages ADD COLUMN reactions TEXT NOT NULL DEFAULT '[]';
CREATE INDEX messages_by_thread ON messages (thread, id) WHERE thread IS NOT NULL;

-- An edit (or a delete, which empties the text) changes what search finds.
CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
END;

-- Earlier texts of edited messages (the current text is the message's); erased on delete.
CREATE TABLE message_versions (
    message_id INTEGER NOT NULL,
    n          INTEGER NOT NULL,                 -- 1 for the text as sent
    text       TEXT    NOT NULL,
    ts         INTEGER NOT NULL,                 -- when this text was written
    PRIMARY KEY (message_id, n)
) WITHOUT ROWID;

CREATE TABLE reactions (
    message_id INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    emoji      TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
) WITHOUT ROWID;

CREATE TABLE pins (
    conversation_id TEXT    NOT NULL,
    message_id      INTEGER NOT NULL,
    pinned_ms       INTEGER NOT NULL,
    pinned_by       TEXT    NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
) WITHOUT ROWID;
