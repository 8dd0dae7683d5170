-- The fan-out of `012_inbox_runs.sql` (`hubbub_fan_out`), answering one row per message with
-- its recipients and their seqs as two arrays of the same length, where `hubbub_fan_out`
-- answers a row per recipient: a message to a group of N members was N rows through the
-- function's result buffer, over the wire and through the client's decoding, all while the
-- group's position is locked. What it writes and locks is the same, statement for statement.
-- `hubbub_fan_out` stays, for a process of an older version still running: it answers from
-- the new function (at the end).
CREATE FUNCTION hubbub_fan_out_arrays(mids BIGINT[], convs TEXT[], senders TEXT[], now BIGINT)
RETURNS TABLE (ord INT, user_ids TEXT[], seqs BIGINT[]) LANGUAGE plpgsql AS $$
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
    v_users   TEXT[];
    v_seqs    BIGINT[];
BEGIN
    FOR i IN 1 .. COALESCE(array_length(mids, 1), 0) LOOP
        v_mid := mids[i];
        v_conv := convs[i];
        v_sender := senders[i];
        v_users := '{}';
        v_seqs := '{}';
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
                v_users := v_users || v_user;
                v_seqs := v_seqs || v_last;
            END LOOP;
            ord := i; user_ids := v_users; seqs := v_seqs;
            RETURN NEXT;
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
        SELECT COALESCE(array_agg(r.user_id), '{}'),
               COALESCE(array_agg(r.first_seq + v_pos - r.first_pos), '{}'),
               COUNT(*)
          INTO v_users, v_seqs, v_in_runs
          FROM inbox_runs r
         WHERE r.conversation_id = v_conv AND r.count IS NULL;
        -- Everyone else who does not block the sender: a run starting at their next seq. In
        -- a busy group there is no one, which counting the members tells.
        SELECT COUNT(*) INTO v_members FROM members mb WHERE mb.conversation_id = v_conv;
        IF v_members > v_in_runs + v_blocks THEN
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
                v_users := v_users || v_user;
                v_seqs := v_seqs || (v_last + 1);
            END LOOP;
        END IF;
        ord := i; user_ids := v_users; seqs := v_seqs;
        RETURN NEXT;
    END LOOP;
END $$;

-- The older function answers as before, a row per recipient, from the new one.
CREATE OR REPLACE FUNCTION hubbub_fan_out(mids BIGINT[], convs TEXT[], senders TEXT[], now BIGINT)
RETURNS TABLE (ord INT, user_id TEXT, seq BIGINT) LANGUAGE sql AS $$
    SELECT f.ord, r.user_id, r.seq
      FROM hubbub_fan_out_arrays(mids, convs, senders, now) AS f,
           UNNEST(f.user_ids, f.seqs) AS r(user_id, seq)
$$;
