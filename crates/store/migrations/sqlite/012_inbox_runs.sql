-- Runs of a user's `message.new` events from one group (PostgreSQL's, with its locking rules,
-- are in postgres/012_inbox_runs.sql). A run says: the user's seqs first_seq, first_seq + 1,
-- ... are the group's messages at positions first_pos, first_pos + 1, ... (`messages.pos`; a
-- message gone since leaves its seq empty, as a deleted inbox row does). An open run (count
-- NULL) reaches the group's newest message (`conversations.last_pos`): while a user's events
-- all come from one group, a message to it costs that user no write, where a row per member per
-- message made a message to a big group touch a page per member. `users.last_seq` counts up to
-- an open run's start; a run is closed (count and `ts` set, `users.last_seq` brought up to its
-- end) before any other event takes the user's next seq, when a message skips the user (they
-- block its sender) and when the user leaves the group (the trigger below).
ALTER TABLE conversations ADD COLUMN last_pos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pos INTEGER;
CREATE UNIQUE INDEX messages_by_pos ON messages (conversation_id, pos) WHERE pos IS NOT NULL;

CREATE TABLE inbox_runs (
    user_id         TEXT    NOT NULL,
    first_seq       INTEGER NOT NULL,
    conversation_id TEXT    NOT NULL,
    first_pos       INTEGER NOT NULL,
    count           INTEGER,                 -- NULL while open
    ts              INTEGER NOT NULL,        -- its last message's time once closed (pruning)
    PRIMARY KEY (user_id, first_seq)
) WITHOUT ROWID;
-- At most one open run per user; the open runs of a group's members.
CREATE UNIQUE INDEX inbox_runs_open ON inbox_runs (user_id) WHERE count IS NULL;
CREATE INDEX inbox_runs_open_by_conversation ON inbox_runs (conversation_id, user_id)
    WHERE count IS NULL;
CREATE INDEX inbox_runs_by_time ON inbox_runs (ts) WHERE count IS NOT NULL;
-- A deleted group's runs go with it (its id may be created again).
CREATE INDEX inbox_runs_by_conversation ON inbox_runs (conversation_id);

-- Leaving a group (however: leave, removal, ban, erasure, the group's deletion) closes the
-- member's open run on it at the group's newest message.
CREATE TRIGGER inbox_runs_close_on_leave AFTER DELETE ON members
WHEN EXISTS (SELECT 1 FROM inbox_runs
             WHERE user_id = OLD.user_id AND count IS NULL
               AND conversation_id = OLD.conversation_id)
BEGIN
    UPDATE users SET last_seq = COALESCE(
        (SELECT r.first_seq + c.last_pos - r.first_pos
         FROM inbox_runs r JOIN conversations c ON c.id = r.conversation_id
         WHERE r.user_id = OLD.user_id AND r.count IS NULL), last_seq)
      WHERE id = OLD.user_id;
    UPDATE inbox_runs SET
        count = COALESCE((SELECT last_pos FROM conversations WHERE id = OLD.conversation_id),
                         first_pos - 1) - first_pos + 1,
        ts = COALESCE((SELECT m.ts FROM messages m JOIN conversations c
                         ON c.id = m.conversation_id AND m.pos = c.last_pos
                       WHERE c.id = OLD.conversation_id), ts)
      WHERE user_id = OLD.user_id AND count IS NULL;
    DELETE FROM inbox_runs WHERE user_id = OLD.user_id AND count = 0;
END;
