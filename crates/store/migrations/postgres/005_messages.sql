-- Messages in PROTOCOL.md 1.1: replies, threads, mentions, edits (with their versions),
-- deletes (tombstones), reactions (with a summary per message), pins. The same tables as
-- sqlite/006_messages.sql, which says what each holds. Search follows edits and deletes by
-- itself: `tsv` is generated from `text`.
ALTER TABLE messages ADD COLUMN reply_to BIGINT;
ALTER TABLE messages ADD COLUMN thread BIGINT;
ALTER TABLE messages ADD COLUMN mentions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN edited_ms BIGINT;
ALTER TABLE messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN replies BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN reactions TEXT NOT NULL DEFAULT '[]';
CREATE INDEX messages_by_thread ON messages (thread, id) WHERE thread IS NOT NULL;
CREATE TABLE message_versions (
    message_id BIGINT NOT NULL,
    n          BIGINT NOT NULL,
    text       TEXT   NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (message_id, n)
);
CREATE TABLE reactions (
    message_id BIGINT NOT NULL,
    user_id    TEXT   NOT NULL,
    emoji      TEXT   NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);
CREATE TABLE pins (
    conversation_id TEXT   NOT NULL,
    message_id      BIGINT NOT NULL,
    pinned_ms       BIGINT NOT NULL,
    pinned_by       TEXT   NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
);
