-- hubbub store on PostgreSQL: the server API's webhooks, the same as the SQLite store's
-- sqlite/007_server.sql (see it for what each column holds). Numbered 006 beside the other
-- branch's 005.
CREATE TABLE webhooks (
    id         TEXT   PRIMARY KEY,
    url        TEXT   NOT NULL,
    events     TEXT   NOT NULL,
    secret     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE webhook_presence (
    user_id    TEXT    PRIMARY KEY,
    online     BOOLEAN NOT NULL,
    changed_ms BIGINT  NOT NULL
);
CREATE INDEX webhook_presence_online ON webhook_presence (user_id) WHERE online;
