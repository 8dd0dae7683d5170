-- Roles and moderation (PROTOCOL.md 1.1, "Roles and moderation").
-- A member's role ('owner' | 'admin' | 'member'), when muted until (ms; NULL: not muted), and
-- when they last sent (ms; kept only while slow mode is on). A group's or channel's creator
-- is its owner.
ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE members ADD COLUMN muted_until_ms BIGINT;
ALTER TABLE members ADD COLUMN last_sent_ms BIGINT;
UPDATE members m SET role = 'owner'
  FROM conversations c
 WHERE c.id = m.conversation_id AND c.created_by = m.user_id AND c.kind <> 'direct';
-- A group whose creator had left gets its longest-standing member as owner (the rule of an
-- owner leaving).
UPDATE members m SET role = 'owner'
  FROM (SELECT DISTINCT ON (x.conversation_id) x.conversation_id, x.user_id
          FROM members x JOIN conversations c ON c.id = x.conversation_id
         WHERE c.kind <> 'direct'
           AND NOT EXISTS (SELECT 1 FROM members o
                            WHERE o.conversation_id = x.conversation_id AND o.role = 'owner')
         ORDER BY x.conversation_id, x.joined_ms, x.user_id) heir
 WHERE m.conversation_id = heir.conversation_id AND m.user_id = heir.user_id;
-- `C.roles` reads only the owner and admins, not every member of a big group.
CREATE INDEX members_with_roles ON members (conversation_id, user_id) WHERE role <> 'member';

-- Slow mode: a plain member sends one message per `slow_mode_s` (0: off).
ALTER TABLE conversations ADD COLUMN slow_mode_s BIGINT NOT NULL DEFAULT 0;

-- Bans outlive membership: a banned user cannot be added again, nor subscribe, until
-- `until_ms` (NULL: until unbanned).
CREATE TABLE conversation_bans (
    conversation_id TEXT   NOT NULL,
    user_id         TEXT   NOT NULL,
    until_ms        BIGINT,
    banned_by       TEXT   NOT NULL,
    ts              BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
