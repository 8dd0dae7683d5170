-- Channels (PROTOCOL.md 1.1): broadcast conversations whose messages are numbered by the
-- channel's offset instead of producing inbox rows.
ALTER TABLE conversations ADD COLUMN public BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE conversations ADD COLUMN last_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN channel_offset BIGINT;
CREATE UNIQUE INDEX messages_by_channel_offset ON messages (conversation_id, channel_offset)
    WHERE channel_offset IS NOT NULL;
