-- A member's mute of a conversation (PROTOCOL.md 1.1 `conversation.mute`): no push
-- notifications from it until `until_ms`, except mentions. Lifting the mute deletes the row.
CREATE TABLE conversation_mutes (
    user_id         TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    until_ms        INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
