-- Reported messages (PROTOCOL.md 1.1 `message.report`), for the app's moderators: listed by the
-- server API (`GET /v1/server/reports`, newest first by id). One report per reporter and message.
CREATE TABLE reports (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id TEXT   NOT NULL,
    message_id      BIGINT NOT NULL,
    reporter        TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    ts              BIGINT NOT NULL,
    UNIQUE (reporter, conversation_id, message_id)
);
