-- hubbub store on PostgreSQL, schema version 1 (chat, the feed, media metadata). The same
-- tables as the SQLite store (see sqlite/001_chat.sql and 002_feed.sql for what each holds).
CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    handle        TEXT    NOT NULL UNIQUE,
    password_hash TEXT,
    email         TEXT,
    created_ms    BIGINT  NOT NULL,
    last_seq      BIGINT  NOT NULL DEFAULT 0,
    acked_seq     BIGINT  NOT NULL DEFAULT 0
);
CREATE TABLE refresh_tokens (
    token_hash TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_ms);
CREATE TABLE conversations (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    title      TEXT,
    created_by TEXT    NOT NULL,
    created_ms BIGINT  NOT NULL,
    ephemeral  BOOLEAN NOT NULL DEFAULT FALSE,
    direct_key TEXT    UNIQUE
);
CREATE TABLE members (
    conversation_id TEXT   NOT NULL,
    user_id         TEXT   NOT NULL,
    joined_ms       BIGINT NOT NULL,
    read_message    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, conversation_id);
CREATE TABLE messages (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id TEXT   NOT NULL,
    sender          TEXT   NOT NULL,
    client_msg_id   TEXT   NOT NULL,
    text            TEXT   NOT NULL,
    attachments     TEXT   NOT NULL DEFAULT '[]',
    ts              BIGINT NOT NULL,
    -- Full-text search (`message.search`): PostgreSQL's own, language-neutral.
    tsv             TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED,
    UNIQUE (sender, client_msg_id)
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_fts ON messages USING GIN (tsv);
CREATE TABLE inbox (
    user_id    TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    ts         BIGINT NOT NULL,
    message_id BIGINT,
    frame      TEXT,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_by_time ON inbox (ts);
CREATE INDEX inbox_by_message ON inbox (message_id) WHERE message_id IS NOT NULL;
CREATE TABLE blocks (
    blocker    TEXT   NOT NULL,
    blocked    TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE TABLE media (
    id           TEXT   PRIMARY KEY,
    owner        TEXT   NOT NULL,
    content_type TEXT   NOT NULL,
    size         BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL
);
CREATE TABLE posts (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT   NOT NULL UNIQUE,
    author      TEXT   NOT NULL,
    text        TEXT   NOT NULL,
    attachments TEXT   NOT NULL DEFAULT '[]',
    ts          BIGINT NOT NULL,
    likes       BIGINT NOT NULL DEFAULT 0,
    comments    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX posts_by_author ON posts (author, seq);
CREATE TABLE comments (
    id     TEXT   PRIMARY KEY,
    post   TEXT   NOT NULL,
    author TEXT   NOT NULL,
    text   TEXT   NOT NULL,
    ts     BIGINT NOT NULL
);
CREATE INDEX comments_by_post ON comments (post, ts);
CREATE TABLE likes (
    post    TEXT   NOT NULL,
    user_id TEXT   NOT NULL,
    ts      BIGINT NOT NULL,
    PRIMARY KEY (post, user_id)
);
CREATE TABLE follows (
    follower TEXT   NOT NULL,
    followee TEXT   NOT NULL,
    ts       BIGINT NOT NULL,
    PRIMARY KEY (follower, followee)
);
CREATE INDEX follows_by_followee ON follows (followee, follower);
CREATE TABLE activity (
    user_id   TEXT   PRIMARY KEY,
    active_ms BIGINT NOT NULL
);
CREATE INDEX activity_by_time ON activity (active_ms);
