-- What a message to a group reads, from indexes alone (measured: half the writer thread's time
-- at 1,000 members × 100 messages a second went to reading every member three times over).
-- The members who block a sender, found from the sender instead of probing every member.
CREATE INDEX blocks_by_blocked ON blocks (blocked);
-- The open runs on a group with the position each starts at (the entry carries `first_seq`,
-- the rest of the primary key): numbering a member's event reads no table row. `count` (NULL
-- in every entry) is there because SQLite checks the partial index's condition on a column
-- it can read from the index; without it, every entry costs a table lookup.
DROP INDEX inbox_runs_open_by_conversation;
CREATE INDEX inbox_runs_open_by_conversation
    ON inbox_runs (conversation_id, user_id, first_pos, count) WHERE count IS NULL;
