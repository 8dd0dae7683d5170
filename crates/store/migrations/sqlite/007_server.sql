-- hubbub store on SQLite: the server API's webhooks (PROTOCOL.md 1.1). An endpoint keeps its
-- signing secret in clear (it signs every delivery; it is shown once, at creation).
-- webhook_presence is the last online/offline state announced for each user, so that a
-- reconnect inside the grace announces nothing and a check after an edge died announces the
-- offline once. Applied after the control plane (005); numbered 007 beside the other
-- branch's 006.
CREATE TABLE webhooks (
    id         TEXT    PRIMARY KEY,
    url        TEXT    NOT NULL,
    events     TEXT    NOT NULL,          -- comma-separated event types
    secret     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE webhook_presence (
    user_id    TEXT    PRIMARY KEY,
    online     INTEGER NOT NULL,          -- 1 online, 0 offline
    changed_ms INTEGER NOT NULL
);
CREATE INDEX webhook_presence_online ON webhook_presence (user_id) WHERE online = 1;
