-- hubbub store, schema version 2: the feed. Applied after version 1.
CREATE TABLE posts (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- creation order: a timeline's watermark
    id          TEXT    NOT NULL UNIQUE,           -- derived from the envelope that made it
    author      TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    attachments TEXT    NOT NULL DEFAULT '[]',     -- JSON array of {"media": id}
    ts          INTEGER NOT NULL,
    likes       INTEGER NOT NULL DEFAULT 0,
    comments    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX posts_by_author ON posts (author, seq);

CREATE TABLE comments (
    id     TEXT    PRIMARY KEY,
    post   TEXT    NOT NULL,
    author TEXT    NOT NULL,
    text   TEXT    NOT NULL,
    ts     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX comments_by_post ON comments (post, ts);

CREATE TABLE likes (
    post    TEXT    NOT NULL,
    user_id TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (post, user_id)
) WITHOUT ROWID;

CREATE TABLE follows (
    follower TEXT    NOT NULL,
    followee TEXT    NOT NULL,
    ts       INTEGER NOT NULL,
    PRIMARY KEY (follower, followee)
) WITHOUT ROWID;
CREATE INDEX follows_by_followee ON follows (followee, follower);

-- When each user last opened a session: the scheduler precomputes timelines only for users
-- active recently.
CREATE TABLE activity (
    user_id   TEXT    PRIMARY KEY,
    active_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX activity_by_time ON activity (active_ms);
