-- Roles and moderation (PROTOCOL.md 1.1, "Roles and moderation").
-- A member's role ('owner' | 'admin' | 'member'), when muted until (ms; NULL: not muted), and
-- when they last sent (ms; kept only while slow mode is on). A group's or channel's creator
-- is its owner.
ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE members ADD COLUMN muted_until_ms INTEGER;
ALTER TABLE members ADD COLUMN last_sent_ms INTEGER;
UPDATE members SET role = 'owner'
 WHERE EXISTS (SELECT 1 FROM conversations c
                WHERE c.id = members.conversation_id AND c.created_by = members.user_id
                  AND c.kind <> 'direct');
-- A group whose creator had left gets its longest-standing member as owner (the rule of an
-- owner leaving).
UPDATE members SET role = 'owner'
 WHERE (conversation_id, user_id) IN (
       SELECT c.id, (SELECT m.user_id FROM members m WHERE m.conversation_id = c.id
                      ORDER BY m.joined_ms, m.user_id LIMIT 1)
         FROM conversations c
        WHERE c.kind <> 'direct'
          AND NOT EXISTS (SELECT 1 FROM members o
                           WHERE o.conversation_id = c.id AND o.role = 'owner'));
-- `C.roles` reads only the owner and admins, not every member of a big group.
CREATE INDEX members_with_roles ON members (conversation_id, user_id) WHERE role <> 'member';

-- Slow mode: a plain member sends one message per `slow_mode_s` (0: off).
ALTER TABLE conversations ADD COLUMN slow_mode_s INTEGER NOT NULL DEFAULT 0;

-- Bans outlive membership: a banned user cannot be added again, nor subscribe, until
-- `until_ms` (NULL: until unbanned).
CREATE TABLE conversation_bans (
    conversation_id TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    until_ms        INTEGER,
    banned_by       TEXT    NOT NULL,
    ts              INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
