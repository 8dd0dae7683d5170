//! Roles and moderation (PROTOCOL.md 1.1, "Roles and moderation"): who may do what in a group
//! or channel, and the use cases `conversation.role`, `conversation.ban` / `unban`,
//! `conversation.mute_member` and `conversation.settings`, written once for every backend.
//!
//! The creator of a group or channel is its owner; the owner names admins. Owners and admins
//! moderate: add and remove members, ban, mute, delete others' messages, pin, change settings.
//! An admin acts only on plain members; the owner on anyone but themselves; nobody on the
//! owner. When the owner leaves a group, ownership passes to the longest-standing admin, or
//! else to the longest-standing member. Roles live on the member's row (leaving drops them);
//! bans have their own table, so they outlive membership.

use super::*;

/// The longest slow mode, in seconds (a day).
pub const MAX_SLOW_MODE_S: u64 = 86_400;

/// A ban or mute of `duration_s` seconds from `now` (ms), saturating.
fn until(now: i64, duration_s: u64) -> i64 {
    let ms = i64::try_from(duration_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    now.saturating_add(ms)
}

/// Whether a ban read by [`ChatTx::ban_of`] holds at `now`.
pub(crate) fn banned(ban: Option<Option<i64>>, now: i64) -> bool {
    match ban {
        None => false,
        Some(None) => true,
        Some(Some(until_ms)) => until_ms > now,
    }
}

/// `Forbidden` if `user` is banned from conversation `id` at `now` (adding them, or their
/// subscribing).
pub(crate) async fn refuse_if_banned(
    tx: &impl ChatTx,
    id: &str,
    user: &str,
    now: i64,
) -> Result<()> {
    if banned(tx.ban_of(id, user).await?, now) {
        return Err(StoreError::Forbidden(format!(
            "{user} is banned from this conversation"
        )));
    }
    Ok(())
}

/// The conversation's row and the caller's role, if the caller moderates it (owner or
/// admin). A direct conversation has no roles: `direct` is the error then.
pub(crate) async fn moderator(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    action: &str,
    direct: fn(String) -> StoreError,
) -> Result<(ConversationRow, Role)> {
    let (row, state) = member_row(tx, caller, id).await?;
    if kind_of(&row.kind) == ConversationKind::Direct {
        return Err(direct(format!(
            "a direct conversation has no roles: no one may {action} in it"
        )));
    }
    if !state.role.moderates() {
        return Err(StoreError::Forbidden(format!(
            "only the owner or an admin may {action}"
        )));
    }
    Ok((row, state.role))
}

/// `Forbidden` unless an `actor` of this role may act on a member of role `target`: the
/// owner on anyone else, an admin on plain members, nobody on the owner.
pub(crate) fn may_act_on(actor: Role, target: Role, action: &str) -> Result<()> {
    match (actor, target) {
        (_, Role::Owner) => Err(StoreError::Forbidden(format!(
            "the owner cannot be {action}"
        ))),
        (Role::Owner, _) | (Role::Admin, Role::Member) => Ok(()),
        _ => Err(StoreError::Forbidden(format!(
            "only the owner may act on an admin ({action})"
        ))),
    }
}

/// The role of `user` in `id` (`Member` if not a member: bans may name anyone).
async fn role_in(tx: &impl ChatTx, id: &str, user: &str) -> Result<(Role, bool)> {
    Ok(match tx.member_state(id, user).await? {
        Some(s) => (s.role, true),
        None => (Role::Member, false),
    })
}

/// `conversation.updated` about a role or settings change: every member of a small group; in
/// a large group or a channel only the actor and the users concerned (the large-group rule).
async fn tell(
    tx: &(impl ChatTx + InboxTx),
    id: &str,
    concerned: &[String],
    actor: &str,
    now: i64,
) -> Result<(Conversation, Vec<Event>)> {
    let after = existing(tx, id).await?;
    let told = told_of_change(&after, after.members.len(), concerned, actor);
    let events = conversation_events(tx, &told, &after, now).await?;
    Ok((after, events))
}

pub(crate) async fn set_role(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    user: &str,
    role: Role,
    now: i64,
) -> Result<Written<()>> {
    tx.lock_membership(id).await?;
    let (_, mine) = moderator(tx, caller, id, "change roles", StoreError::BadRequest).await?;
    if mine != Role::Owner {
        return Err(StoreError::Forbidden(
            "only the owner may change roles".into(),
        ));
    }
    if role == Role::Owner {
        return Err(StoreError::BadRequest(
            "`role` is `admin` or `member`".into(),
        ));
    }
    let Some(state) = tx.member_state(id, user).await? else {
        return Err(StoreError::NotFound(format!("{user} is not a member")));
    };
    if state.role == Role::Owner {
        return Err(StoreError::BadRequest(
            "the owner's role cannot change".into(),
        ));
    }
    if state.role == role {
        return Ok(Written::nothing(()));
    }
    tx.set_role(id, user, role).await?;
    let (_, events) = tell(tx, id, &[user.to_owned()], caller, now).await?;
    Ok(Written::new((), events))
}

pub(crate) async fn ban(
    tx: &(impl ChatTx + InboxTx + AccountTx),
    caller: &str,
    id: &str,
    user: &str,
    duration_s: Option<u64>,
    now: i64,
) -> Result<Written<()>> {
    tx.lock_membership(id).await?;
    let (_, mine) = moderator(tx, caller, id, "ban", StoreError::BadRequest).await?;
    if user == caller {
        return Err(StoreError::BadRequest("you cannot ban yourself".into()));
    }
    if duration_s == Some(0) {
        return Err(StoreError::BadRequest(
            "`duration_s` is at least 1 (leave it out for a ban until unbanned)".into(),
        ));
    }
    require_user(tx, user).await?;
    let (theirs, member) = role_in(tx, id, user).await?;
    may_act_on(mine, theirs, "banned")?;
    let until_ms = duration_s.map(|d| until(now, d));
    tx.insert_ban(id, user, until_ms, caller, now).await?;
    if !member {
        return Ok(Written::nothing(()));
    }
    let events = depart(tx, id, user, caller, now).await?;
    Ok(Written::new((), events))
}

pub(crate) async fn unban(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    user: &str,
) -> Result<Written<()>> {
    moderator(tx, caller, id, "unban", StoreError::BadRequest).await?;
    tx.delete_ban(id, user).await?;
    Ok(Written::nothing(()))
}

pub(crate) async fn mute_member(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    user: &str,
    duration_s: u64,
    now: i64,
) -> Result<Written<()>> {
    let (_, mine) = moderator(tx, caller, id, "mute members", StoreError::BadRequest).await?;
    let Some(state) = tx.member_state(id, user).await? else {
        return Err(StoreError::NotFound(format!("{user} is not a member")));
    };
    may_act_on(mine, state.role, "muted")?;
    let until_ms = (duration_s > 0).then(|| until(now, duration_s));
    tx.set_member_mute(id, user, until_ms).await?;
    Ok(Written::nothing(()))
}

pub(crate) async fn settings(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    title: Option<&str>,
    slow_mode_s: Option<u64>,
    now: i64,
) -> Result<Written<Conversation>> {
    let (row, _) = moderator(tx, caller, id, "change settings", StoreError::BadRequest).await?;
    if slow_mode_s.is_some_and(|s| s > MAX_SLOW_MODE_S) {
        return Err(StoreError::BadRequest(format!(
            "`slow_mode_s` is at most {MAX_SLOW_MODE_S}"
        )));
    }
    // `""` removes the title.
    let title = title.map(|t| (!t.is_empty()).then_some(t));
    let slow = slow_mode_s.map(|s| s as i64);
    let unchanged = title.is_none_or(|t| t == row.title.as_deref())
        && slow.is_none_or(|s| s == row.slow_mode_s);
    if unchanged {
        return Ok(Written::nothing(existing(tx, id).await?));
    }
    tx.set_settings(id, title, slow).await?;
    let (after, events) = tell(tx, id, &[], caller, now).await?;
    Ok(Written::new(after, events))
}

/// What `message.send` checks of a sender who is a member: a channel takes only its owner's
/// and admins' messages; a muted member sends nothing; with slow mode, a plain member sends
/// one message per `slow_mode_s`. Whether the send is to be noted (slow mode is on for this
/// sender).
pub(crate) fn check_send(row: &ConversationRow, state: &MemberState, now: i64) -> Result<bool> {
    if kind_of(&row.kind) == ConversationKind::Channel && !state.role.moderates() {
        return Err(StoreError::Forbidden(
            "only the channel's owner and admins send in a channel".into(),
        ));
    }
    if let Some(until_ms) = state.muted_until_ms
        && until_ms > now
    {
        return Err(StoreError::Forbidden(format!(
            "you are muted in this conversation until {until_ms}"
        )));
    }
    if row.slow_mode_s <= 0 || state.role.moderates() {
        return Ok(false);
    }
    if let Some(last) = state.last_sent_ms {
        let next = last.saturating_add(row.slow_mode_s.saturating_mul(1000));
        if next > now {
            let wait = u64::try_from(next - now).unwrap_or(0);
            return Err(StoreError::RateLimited {
                message: format!(
                    "slow mode: one message per {} s; wait {wait} ms",
                    row.slow_mode_s
                ),
                retry_after_ms: wait,
            });
        }
    }
    Ok(true)
}

/// After `user` left or was removed: if they owned the group, ownership passes on (the
/// successor is returned, to be told).
pub(crate) async fn pass_ownership(
    tx: &impl ChatTx,
    id: &str,
    was: Option<MemberState>,
) -> Result<Option<String>> {
    if was.is_none_or(|s| s.role != Role::Owner) {
        return Ok(None);
    }
    let Some(next) = tx.successor(id).await? else {
        return Ok(None);
    };
    tx.set_role(id, &next, Role::Owner).await?;
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_acts_on_whom() {
        assert!(may_act_on(Role::Owner, Role::Admin, "banned").is_ok());
        assert!(may_act_on(Role::Owner, Role::Member, "banned").is_ok());
        assert!(may_act_on(Role::Admin, Role::Member, "banned").is_ok());
        assert!(may_act_on(Role::Admin, Role::Admin, "banned").is_err());
        assert!(may_act_on(Role::Admin, Role::Owner, "banned").is_err());
        assert!(may_act_on(Role::Owner, Role::Owner, "banned").is_err());
        assert!(may_act_on(Role::Member, Role::Member, "banned").is_err());
    }

    #[test]
    fn bans_end() {
        assert!(!banned(None, 10));
        assert!(banned(Some(None), 10));
        assert!(banned(Some(Some(11)), 10));
        assert!(!banned(Some(Some(10)), 10));
        assert_eq!(until(5, u64::MAX), i64::MAX);
        assert_eq!(until(5, 2), 2005);
    }

    fn row(kind: &str, slow: i64) -> ConversationRow {
        ConversationRow {
            kind: kind.into(),
            title: None,
            created_by: "o".into(),
            created_ms: 0,
            ephemeral: false,
            public: false,
            last_offset: 0,
            slow_mode_s: slow,
        }
    }

    fn state(role: Role, muted: Option<i64>, last: Option<i64>) -> MemberState {
        MemberState {
            role,
            muted_until_ms: muted,
            last_sent_ms: last,
        }
    }

    #[test]
    fn sends_are_checked() {
        let plain = state(Role::Member, None, None);
        assert!(matches!(
            check_send(&row("channel", 0), &plain, 0),
            Err(StoreError::Forbidden(_))
        ));
        assert_eq!(
            check_send(&row("channel", 0), &state(Role::Admin, None, None), 0).ok(),
            Some(false)
        );
        assert!(matches!(
            check_send(&row("group", 0), &state(Role::Member, Some(100), None), 50),
            Err(StoreError::Forbidden(_))
        ));
        assert_eq!(
            check_send(&row("group", 0), &state(Role::Member, Some(100), None), 100).ok(),
            Some(false)
        );
        assert_eq!(check_send(&row("group", 10), &plain, 0).ok(), Some(true));
        match check_send(
            &row("group", 10),
            &state(Role::Member, None, Some(1_000)),
            4_000,
        ) {
            Err(StoreError::RateLimited { retry_after_ms, .. }) => {
                assert_eq!(retry_after_ms, 7_000)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            check_send(
                &row("group", 10),
                &state(Role::Member, None, Some(1_000)),
                11_000
            )
            .ok(),
            Some(true)
        );
        assert_eq!(
            check_send(
                &row("group", 10),
                &state(Role::Admin, None, Some(1_000)),
                4_000
            )
            .ok(),
            Some(false)
        );
    }
}
