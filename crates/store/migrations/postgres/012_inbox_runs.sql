-- Runs of a user's `message.new` events from one group, as on SQLite (sqlite/012_inbox_runs.sql
-- says what a run is): a message to a group whose members all have their open run on it
-- writes nothing per member. A row and a counter per member per message, written while every
-- send to the group waited on the members' locks, held a group near 600 sends a second here.
--
-- Concurrency (SQLite has one writer; here transactions run side by side). Two kinds of lock,
-- always taken in this order: users' rows (in id order), then groups' positions (the rows of
-- `group_positions`, in id order).
-- * A user's runs, and their `users.last_seq`, change only while their `users` row is locked.
-- * A group's position moves only while its `group_positions` row is locked FOR UPDATE (the
--   send batch, `hubbub_lock_positions`), and a run is closed only while its group's row is
--   locked at least FOR SHARE (`hubbub_close_run` takes both locks itself). So a closed run
--   ends where no send in flight can add to it, and while a batch holds a group's position,
--   the group's open runs stay as they are: a member who has one needs no lock at all, and a
--   busy group's send locks one row, not a row per member.
-- * The position is a row of its own, not a column of `conversations`: a change to a
--   conversation's settings locks that row and then its members, the opposite order.
CREATE TABLE group_positions (
    conversation_id TEXT   PRIMARY KEY,
    last_pos        BIGINT NOT NULL
);
ALTER TABLE messages ADD COLUMN pos BIGINT;
CREATE UNIQUE INDEX messages_by_pos ON messages (conversation_id, pos) WHERE pos IS NOT NULL;

CREATE TABLE inbox_runs (
    user_id         TEXT   NOT NULL,
    first_seq       BIGINT NOT NULL,
    conversation_id TEXT   NOT NULL,
    first_pos       BIGINT NOT NULL,
    count           BIGINT,                  -- NULL while open
    ts              BIGINT NOT NULL,         -- its last message's time once closed (pruning)
    PRIMARY KEY (user_id, first_seq)
);
-- At most one open run per user; the open runs of a group's members, numbered from the index.
CREATE UNIQUE INDEX inbox_runs_open ON inbox_runs (user_id) WHERE count IS NULL;
CREATE INDEX inbox_runs_open_by_conversation ON inbox_runs (conversation_id, user_id)
    INCLUDE (first_seq, first_pos) WHERE count IS NULL;
CREATE INDEX inbox_runs_by_time ON inbox_runs (ts) WHERE count IS NOT NULL;
-- A deleted group's runs go with it (its id may be created again).
CREATE INDEX inbox_runs_by_conversation ON inbox_runs (conversation_id);
CREATE INDEX blocks_by_blocked ON blocks (blocked);

-- Close `u`'s open run, if any, after its group's newest message: `users.last_seq` moves to
-- the run's end, which it returns (NULL: no run was open). Locks `u`, then the run's group's
-- position (FOR SHARE: no send to the group is in flight when it reads the position).
CREATE FUNCTION hubbub_close_run(u TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_first_seq BIGINT;
    v_first_pos BIGINT;
    v_conv      TEXT;
    v_last_pos  BIGINT;
    v_last      BIGINT;
BEGIN
    PERFORM 1 FROM users WHERE id = u FOR UPDATE;
    -- The run stays as it is under the user's lock; its group's position is read with the
    -- lock that keeps it so.
    SELECT r.first_seq, r.first_pos, r.conversation_id
      INTO v_first_seq, v_first_pos, v_conv
      FROM inbox_runs r WHERE r.user_id = u AND r.count IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT p.last_pos INTO v_last_pos FROM group_positions p
     WHERE p.conversation_id = v_conv FOR SHARE;
    v_last_pos := COALESCE(v_last_pos, v_first_pos - 1);
    v_last := v_first_seq + v_last_pos - v_first_pos;
    IF v_last_pos < v_first_pos THEN
        -- Empty (pruned whole, or its group is gone): nothing to keep; `users.last_seq` is
        -- already its end.
        DELETE FROM inbox_runs WHERE user_id = u AND first_seq = v_first_seq;
        RETURN v_last;
    END IF;
    UPDATE inbox_runs SET count = v_last_pos - v_first_pos + 1,
           ts = COALESCE((SELECT m.ts FROM messages m
                          WHERE m.conversation_id = v_conv AND m.pos = v_last_pos), ts)
     WHERE user_id = u AND first_seq = v_first_seq;
    UPDATE users SET last_seq = v_last WHERE id = u;
    RETURN v_last;
END $$;

-- The send batch's second lock (its first locked, in id order, the users `locked` its
-- fan-out will write as far as it could tell: see `chat/postgres.rs`): the positions of the
-- batch's groups, and of the groups where the locked users' open runs are (closing one reads
-- its group's position), FOR UPDATE in id order.
CREATE FUNCTION hubbub_lock_positions(convs TEXT[], locked TEXT[])
RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO group_positions (conversation_id, last_pos)
        SELECT DISTINCT c.id, 0 FROM conversations c
         WHERE c.id = ANY(convs) AND c.kind = 'group' ORDER BY c.id
        ON CONFLICT DO NOTHING;
    PERFORM 1 FROM group_positions p
     WHERE p.conversation_id = ANY(convs)
        OR p.conversation_id IN (SELECT r.conversation_id FROM inbox_runs r
                                 WHERE r.user_id = ANY(locked) AND r.count IS NULL)
     ORDER BY p.conversation_id FOR UPDATE;
END $$;

-- Before the fan-out writes `u`: lock `u` and their open run's position now, or fail. The
-- batch locked everyone it could foresee in order; someone else (whose run on the group
-- closed, who joined, or who blocked the sender since) is locked here out of order, which
-- is safe only without waiting: if another transaction holds the lock, the batch fails as a
-- serialization failure (nothing written) and is tried again, locking every member first.
CREATE FUNCTION hubbub_lock_now(u TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = u FOR UPDATE NOWAIT;
    PERFORM 1 FROM group_positions p
     WHERE p.conversation_id = (SELECT r.conversation_id FROM inbox_runs r
                                WHERE r.user_id = u AND r.count IS NULL)
       FOR SHARE NOWAIT;
EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION 'a fan-out would wait for a lock out of order'
        USING ERRCODE = 'serialization_failure';
END $$;

-- Take `u`'s next seq for an event of its own (closing the open run first); NULL for an
-- unknown user.
CREATE FUNCTION hubbub_next_seq(u TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
BEGIN
    PERFORM hubbub_close_run(u);
    UPDATE users SET last_seq = last_seq + 1 WHERE id = u RETURNING last_seq INTO v_seq;
    RETURN v_seq;
END $$;

-- The `message.new` events of new messages, in the order given (`ord` counts from 1), after
-- `hubbub_lock_positions` (the locks it relies on) in the same transaction: for a
-- group, the message takes the group's next position, members who block the sender close
-- their open run on it (they skip it), members with an open run on the group get the seq it
-- gives the message, and everyone else opens a run at their next seq; for a direct
-- conversation, each member who does not block the sender takes their next seq and a row.
CREATE FUNCTION hubbub_fan_out(mids BIGINT[], convs TEXT[], senders TEXT[], now BIGINT)
RETURNS TABLE (ord INT, user_id TEXT, seq BIGINT) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i         INT;
    v_mid     BIGINT;
    v_conv    TEXT;
    v_sender  TEXT;
    v_kind    TEXT;
    v_pos     BIGINT;
    v_user    TEXT;
    v_last    BIGINT;
    v_blocks  BIGINT;
    v_in_runs BIGINT;
    v_members BIGINT;
BEGIN
    FOR i IN 1 .. COALESCE(array_length(mids, 1), 0) LOOP
        v_mid := mids[i];
        v_conv := convs[i];
        v_sender := senders[i];
        SELECT c.kind INTO v_kind FROM conversations c WHERE c.id = v_conv;
        IF v_kind IS DISTINCT FROM 'group' THEN
            FOR v_user IN
                SELECT mb.user_id FROM members mb
                 WHERE mb.conversation_id = v_conv
                   AND NOT EXISTS (SELECT 1 FROM blocks b
                                   WHERE b.blocker = mb.user_id AND b.blocked = v_sender)
                 ORDER BY mb.user_id
            LOOP
                PERFORM hubbub_lock_now(v_user);
                v_last := hubbub_next_seq(v_user);
                INSERT INTO inbox (user_id, seq, ts, message_id)
                     VALUES (v_user, v_last, now, v_mid);
                ord := i; user_id := v_user; seq := v_last;
                RETURN NEXT;
            END LOOP;
            CONTINUE;
        END IF;
        -- Members who block the sender skip the message: their open run on the group closes
        -- before it.
        v_blocks := 0;
        FOR v_user IN
            SELECT b.blocker FROM blocks b
              JOIN members mb ON mb.conversation_id = v_conv AND mb.user_id = b.blocker
             WHERE b.blocked = v_sender ORDER BY b.blocker
        LOOP
            v_blocks := v_blocks + 1;
            IF EXISTS (SELECT 1 FROM inbox_runs r WHERE r.user_id = v_user
                         AND r.count IS NULL AND r.conversation_id = v_conv) THEN
                PERFORM hubbub_lock_now(v_user);
                PERFORM hubbub_close_run(v_user);
            END IF;
        END LOOP;
        INSERT INTO group_positions AS p (conversation_id, last_pos) VALUES (v_conv, 1)
            ON CONFLICT (conversation_id) DO UPDATE SET last_pos = p.last_pos + 1
            RETURNING p.last_pos INTO v_pos;
        UPDATE messages SET pos = v_pos WHERE id = v_mid;
        -- Members whose open run is on the group: the run reaches the new message.
        RETURN QUERY
            SELECT i, r.user_id, r.first_seq + v_pos - r.first_pos FROM inbox_runs r
             WHERE r.conversation_id = v_conv AND r.count IS NULL;
        GET DIAGNOSTICS v_in_runs = ROW_COUNT;
        -- Everyone else who does not block the sender: a run starting at their next seq. In
        -- a busy group there is no one, which counting the members tells.
        SELECT COUNT(*) INTO v_members FROM members mb WHERE mb.conversation_id = v_conv;
        IF v_members <= v_in_runs + v_blocks THEN
            CONTINUE;
        END IF;
        FOR v_user IN
            SELECT mb.user_id FROM members mb
             WHERE mb.conversation_id = v_conv
               AND NOT EXISTS (SELECT 1 FROM blocks b
                               WHERE b.blocker = mb.user_id AND b.blocked = v_sender)
               AND NOT EXISTS (SELECT 1 FROM inbox_runs r
                               WHERE r.user_id = mb.user_id AND r.count IS NULL
                                 AND r.conversation_id = v_conv)
             ORDER BY mb.user_id
        LOOP
            PERFORM hubbub_lock_now(v_user);
            v_last := hubbub_close_run(v_user);
            IF v_last IS NULL THEN
                SELECT u.last_seq INTO v_last FROM users u WHERE u.id = v_user;
            END IF;
            INSERT INTO inbox_runs (user_id, first_seq, conversation_id, first_pos, ts)
                 VALUES (v_user, v_last + 1, v_conv, v_pos, now);
            ord := i; user_id := v_user; seq := v_last + 1;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END $$;

-- Leaving a group (however: leave, removal, ban, erasure, the group's deletion) closes the
-- member's open run on it at the group's newest message.
CREATE FUNCTION hubbub_close_run_on_leave() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inbox_runs r WHERE r.user_id = OLD.user_id AND r.count IS NULL
                 AND r.conversation_id = OLD.conversation_id) THEN
        PERFORM hubbub_close_run(OLD.user_id);
        DELETE FROM inbox_runs r WHERE r.user_id = OLD.user_id AND r.count = 0;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER inbox_runs_close_on_leave AFTER DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION hubbub_close_run_on_leave();
