/**
 * The wire types of the hubbub protocol, generated from docs/schema/*.json by
 * scripts/gen.mjs (json-schema-to-typescript). Do not edit: run `npm run gen`.
 */

/**
 * A client frame: an optional request id and the request.
 *
 * Frames with an `id` get exactly one reply (`ok` or `error`); frames without are
 * fire-and-forget and their errors are sent with `"id":null`.
 *
 * From docs/schema/client-frame.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ClientFrame".
 */
export type ClientFrame = ClientFrameId & ClientRequest;
/**
 * Any request, without its id.
 */
export type ClientRequest =
  | SyncRequest
  | AckRequest
  | AuthRequest
  | ConversationCreateRequest
  | ChannelSubscribeRequest
  | ChannelUnsubscribeRequest
  | ChannelSyncRequest
  | ConversationListRequest
  | ConversationGetRequest
  | ConversationAddRequest
  | ConversationMembersRequest
  | ConversationRemoveRequest
  | ConversationLeaveRequest
  | MessageSendRequest
  | MessageEditRequest
  | MessageVersionsRequest
  | MessageDeleteRequest
  | MessageReportRequest
  | ReactionAddRequest
  | ReactionRemoveRequest
  | MessagePinRequest
  | MessageUnpinRequest
  | ConversationPinsRequest
  | ConversationMuteRequest
  | ConversationRoleRequest
  | ConversationBanRequest
  | ConversationUnbanRequest
  | ConversationMuteMemberRequest
  | ConversationSettingsRequest
  | MessageHistoryRequest
  | MessageSearchRequest
  | MessageReadRequest
  | TypingRequest
  | PresenceSetRequest
  | PresenceWatchRequest
  | PresenceUnwatchRequest
  | BlockAddRequest
  | BlockRemoveRequest
  | BlockListRequest
  | ContactSetRequest
  | ContactRemoveRequest
  | ContactListRequest
  | PostCreateRequest
  | PostDeleteRequest
  | CommentCreateRequest
  | PostLikeRequest
  | PostUnlikeRequest
  | FollowRequest
  | UnfollowRequest
  | TimelineGetRequest
  | PostWatchRequest
  | PostUnwatchRequest
  | CommentTypingRequest;
/**
 * A client's key for a create: a retry with the same key returns the first object.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "IdempotencyKey".
 */
export type IdempotencyKey = string;
/**
 * Direct (two people), group, or channel (broadcast: only its owner sends).
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ConversationKind".
 */
export type ConversationKind = "direct" | "group" | "channel";
/**
 * The roles `conversation.role` gives: `admin`, or `member` (back to a plain member).
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "AssignedRole".
 */
export type AssignedRole = "admin" | "member";
/**
 * Typing state.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "TypingState".
 */
export type TypingState = "start" | "stop";
/**
 * A presence status a user may set for themself.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "SetPresenceStatus".
 */
export type SetPresenceStatus = "online" | "away" | "invisible";
/**
 * An error code from PROTOCOL.md. Serialized in snake_case (`"rate_limited"`).
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ErrorCode".
 */
export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "too_large"
  | "rate_limited"
  | "internal"
  | "unavailable";
/**
 * Every frame the server sends, tagged by `type`.
 *
 * From docs/schema/server-frame.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ServerFrame".
 */
export type ServerFrame =
  | HelloFrame
  | OkFrame
  | ErrorFrame
  | MessageNewFrame
  | MessageUpdatedFrame
  | ReactionUpdatedFrame
  | ConversationUpdatedFrame
  | ContactUpdatedFrame
  | ReceiptReadFrame
  | NotificationFrame
  | TypingFrame
  | PresenceFrame
  | ChannelMessageFrame
  | ChannelUpdatedFrame
  | TimelineFrame
  | FlagsFrame
  | EngagementFrame;
/**
 * The `data` of an `ok` reply. Its shape depends on the request; clients know which request
 * they sent. Variants are tried in order when deserializing, the empty one last.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ReplyData".
 */
export type ReplyData =
  | ConversationListReply
  | ConversationReply
  | MessageHistoryReply
  | ConversationMembersReply
  | MessageSearchReply
  | MessageSendReply
  | PresenceWatchReply
  | BlockListReply
  | ContactSetReply
  | ContactListReply
  | PostCreateReply
  | CommentCreateReply
  | LikesReply
  | TimelineReply
  | SyncReply
  | ChannelSyncReply
  | AuthReply
  | MessageVersionsReply
  | ReactionsReply
  | EmptyReply;
/**
 * A member's role in a group or channel (PROTOCOL.md 1.1, "Roles and moderation"). `C`'s
 * `roles` lists owners and admins; members not listed are plain members.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Role".
 */
export type Role = "owner" | "admin" | "member";
/**
 * A presence status as reported to watchers.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "PresenceStatus".
 */
export type PresenceStatus = "online" | "away" | "offline";
/**
 * Whether a `reaction.updated` added or removed a reaction.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ReactionOp".
 */
export type ReactionOp = "add" | "remove";
/**
 * The kind of a `notification` event.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "NotificationKind".
 */
export type NotificationKind = "like" | "comment" | "follow" | "mention" | "system";
/**
 * A watched user's presence changed (ephemeral).
 */
export type PresenceFrame = Presence & {
  type: "presence";
};

/**
 * Every document of docs/schema, by title.
 */
export interface HubbubSchemas {
  ClientFrame: ClientFrame;
  AuthResponse: AuthResponse;
  HttpError: HttpError;
  LoginRequest: LoginRequest;
  MediaResponse: MediaResponse;
  RefreshRequest: RefreshRequest;
  SignupRequest: SignupRequest;
  ServerFrame: ServerFrame;
}
export interface ClientFrameId {
  /**
   * The request id echoed in the reply.
   */
  id?: string | null;
}
/**
 * Replay durable events with seq > `after_seq`, then reply `{"last_seq"}`.
 */
export interface SyncRequest {
  /**
   * The last seq the client processed (0 replays everything retained).
   */
  after_seq?: number;
  type: "sync";
}
/**
 * Acknowledge every durable event up to `seq` for this session (no id, no reply).
 */
export interface AckRequest {
  /**
   * The highest seq processed.
   */
  seq: number;
  type: "ack";
}
/**
 * Hand the live session a new access token (or app token) of the same user, before
 * the one it opened with expires (PROTOCOL.md 1.1).
 */
export interface AuthRequest {
  /**
   * The new token.
   */
  access_token: string;
  type: "auth";
}
/**
 * Create a conversation (a direct one is returned if it already exists).
 */
export interface ConversationCreateRequest {
  /**
   * Whether the conversation expires 24 hours after its last message.
   */
  ephemeral?: boolean | null;
  /**
   * The client's key for this create: a retry with the same key returns the first
   * conversation and creates nothing.
   */
  idempotency_key?: IdempotencyKey | null;
  kind: ConversationKind;
  /**
   * The other members' user ids (naming the creator too is harmless).
   */
  members: string[];
  /**
   * A channel anyone may `channel.subscribe` to (channels only; default false).
   */
  public?: boolean | null;
  /**
   * Optional title.
   */
  title?: string | null;
  type: "conversation.create";
}
/**
 * Join a public channel (idempotent).
 */
export interface ChannelSubscribeRequest {
  /**
   * The channel's conversation id.
   */
  conversation: string;
  type: "channel.subscribe";
}
/**
 * Leave a channel (idempotent).
 */
export interface ChannelUnsubscribeRequest {
  /**
   * The channel's conversation id.
   */
  conversation: string;
  type: "channel.unsubscribe";
}
/**
 * Replay a channel's messages after an offset as `channel.message` frames.
 */
export interface ChannelSyncRequest {
  /**
   * The last offset the client processed (0: from the first message).
   */
  after_offset: number;
  /**
   * The channel's conversation id.
   */
  conversation: string;
  /**
   * At most this many (≤ 1,000, default 1,000).
   */
  limit?: number | null;
  type: "channel.sync";
}
/**
 * List the caller's conversations with `last_message` and `unread`.
 */
export interface ConversationListRequest {
  type: "conversation.list";
}
/**
 * Get one conversation.
 */
export interface ConversationGetRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.get";
}
/**
 * Add a member, or several (group creator only).
 */
export interface ConversationAddRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.add";
  /**
   * The user to add (or `users`).
   */
  user?: string | null;
  /**
   * The users to add, at most 1,000 (instead of `user`).
   */
  users?: string[] | null;
}
/**
 * A page of a conversation's members, by user id.
 */
export interface ConversationMembersRequest {
  /**
   * Only members whose id sorts after this one (the last of the previous page).
   */
  after?: string | null;
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * At most this many (≤ 1,000, default 500).
   */
  limit?: number | null;
  type: "conversation.members";
}
/**
 * Remove a member (group creator only).
 */
export interface ConversationRemoveRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.remove";
  /**
   * The user to remove.
   */
  user: string;
}
/**
 * Leave a conversation.
 */
export interface ConversationLeaveRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.leave";
}
/**
 * Send a message; idempotent on (sender, `client_msg_id`).
 */
export interface MessageSendRequest {
  /**
   * Attached media.
   */
  attachments?: Attachment[] | null;
  /**
   * The sender's idempotency key.
   */
  client_msg_id: string;
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Members mentioned (each gets a `mention` notification).
   */
  mentions?: string[] | null;
  /**
   * The message this one replies to (same conversation).
   */
  reply_to?: string | null;
  /**
   * The text.
   */
  text: string;
  /**
   * The root of the thread this message goes in (same conversation).
   */
  thread?: string | null;
  type: "message.send";
}
/**
 * A reference to uploaded media, as used in `attachments`.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Attachment".
 */
export interface Attachment {
  /**
   * The media id returned by `POST /v1/media`.
   */
  media: string;
}
/**
 * Edit a message's text (its sender only); earlier texts stay in `message.versions`.
 */
export interface MessageEditRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Message id.
   */
  message: string;
  /**
   * The new text.
   */
  text: string;
  type: "message.edit";
}
/**
 * A message's texts, oldest first, the current one last.
 */
export interface MessageVersionsRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Message id.
   */
  message: string;
  type: "message.versions";
}
/**
 * Delete a message for everyone (its sender, or the conversation's owner), leaving a
 * tombstone.
 */
export interface MessageDeleteRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Message id.
   */
  message: string;
  type: "message.delete";
}
/**
 * Report a message to the app's moderators (PROTOCOL.md 1.1, "Roles and moderation"):
 * stored, listed by `GET /v1/server/reports`, told by the `message.reported` webhook.
 */
export interface MessageReportRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Message id.
   */
  message: string;
  /**
   * Why (1 to 500 characters).
   */
  reason: string;
  type: "message.report";
}
/**
 * React to a message (idempotent).
 */
export interface ReactionAddRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * The emoji, 1 to 32 bytes.
   */
  emoji: string;
  /**
   * Message id.
   */
  message: string;
  type: "reaction.add";
}
/**
 * Take a reaction back (idempotent).
 */
export interface ReactionRemoveRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * The emoji, 1 to 32 bytes.
   */
  emoji: string;
  /**
   * Message id.
   */
  message: string;
  type: "reaction.remove";
}
/**
 * Pin a message (any member of a direct conversation; the owner of a group or channel).
 */
export interface MessagePinRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Message id.
   */
  message: string;
  type: "message.pin";
}
/**
 * Unpin a message (as `message.pin`).
 */
export interface MessageUnpinRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Message id.
   */
  message: string;
  type: "message.unpin";
}
/**
 * A conversation's pinned messages, most recently pinned first.
 */
export interface ConversationPinsRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.pins";
}
/**
 * Mute a conversation for oneself until a time (ms), or lift the mute (`null`): no push
 * notifications from it meanwhile, except mentions.
 */
export interface ConversationMuteRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.mute";
  /**
   * Until when (ms since the epoch); `null` lifts it.
   */
  until_ts?: number | null;
}
/**
 * Make a member an admin, or an admin a plain member (the owner only).
 */
export interface ConversationRoleRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  role: AssignedRole;
  type: "conversation.role";
  /**
   * The member.
   */
  user: string;
}
/**
 * Ban a user from a group or channel (owner or admin): removed if a member, and not
 * added again, nor subscribed, until the ban ends.
 */
export interface ConversationBanRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * How long, in seconds; absent: until unbanned.
   */
  duration_s?: number | null;
  type: "conversation.ban";
  /**
   * The user.
   */
  user: string;
}
/**
 * Lift a ban (owner or admin; idempotent).
 */
export interface ConversationUnbanRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  type: "conversation.unban";
  /**
   * The user.
   */
  user: string;
}
/**
 * Mute a member (owner or admin): their `message.send` is `forbidden` meanwhile.
 */
export interface ConversationMuteMemberRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * How long, in seconds; 0 lifts the mute.
   */
  duration_s: number;
  type: "conversation.mute_member";
  /**
   * The member.
   */
  user: string;
}
/**
 * Change a group's or channel's title or slow mode (owner or admin).
 */
export interface ConversationSettingsRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Slow mode in seconds (0: off); absent: unchanged.
   */
  slow_mode_s?: number | null;
  /**
   * The new title (`""` removes it); absent: unchanged.
   */
  title?: string | null;
  type: "conversation.settings";
}
/**
 * Page through a conversation's messages, newest first.
 */
export interface MessageHistoryRequest {
  /**
   * Only messages older than this message id.
   */
  before?: string | null;
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * At most this many (≤ 100, default 50).
   */
  limit?: number | null;
  /**
   * Only the replies in the thread of this root message.
   */
  thread?: string | null;
  type: "message.history";
}
/**
 * Full-text search over the caller's conversations, best first.
 */
export interface MessageSearchRequest {
  /**
   * Restrict to one conversation.
   */
  conversation?: string | null;
  /**
   * The query.
   */
  query: string;
  type: "message.search";
}
/**
 * Mark a message read (sends `receipt.read`).
 */
export interface MessageReadRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * The message read.
   */
  message: string;
  type: "message.read";
}
/**
 * Typing start/stop (no id).
 */
export interface TypingRequest {
  /**
   * Conversation id.
   */
  conversation: string;
  state: TypingState;
  type: "typing";
}
/**
 * Set the caller's presence status.
 */
export interface PresenceSetRequest {
  status: SetPresenceStatus;
  type: "presence.set";
}
/**
 * Watch users' presence; the reply carries their current presence.
 */
export interface PresenceWatchRequest {
  type: "presence.watch";
  /**
   * User ids.
   */
  users: string[];
}
/**
 * Stop watching users' presence.
 */
export interface PresenceUnwatchRequest {
  type: "presence.unwatch";
  /**
   * User ids.
   */
  users: string[];
}
/**
 * Block a user.
 */
export interface BlockAddRequest {
  type: "block.add";
  /**
   * User id.
   */
  user: string;
}
/**
 * Unblock a user.
 */
export interface BlockRemoveRequest {
  type: "block.remove";
  /**
   * User id.
   */
  user: string;
}
/**
 * List blocked users.
 */
export interface BlockListRequest {
  type: "block.list";
}
/**
 * Add a user to the caller's contacts, or change their contact. An absent `group` or
 * `note` keeps the current one; an empty one clears it.
 */
export interface ContactSetRequest {
  /**
   * A group name (at most 64 characters).
   */
  group?: string | null;
  /**
   * A private note (at most 1,000 characters), encrypted at rest.
   */
  note?: string | null;
  type: "contact.set";
  /**
   * User id.
   */
  user: string;
}
/**
 * Remove a user from the caller's contacts (idempotent).
 */
export interface ContactRemoveRequest {
  type: "contact.remove";
  /**
   * User id.
   */
  user: string;
}
/**
 * List the caller's contacts.
 */
export interface ContactListRequest {
  type: "contact.list";
}
/**
 * Create a post.
 */
export interface PostCreateRequest {
  /**
   * Attached media.
   */
  attachments?: Attachment[] | null;
  /**
   * The client's key for this create: a retry with the same key returns the first
   * post and creates nothing.
   */
  idempotency_key?: IdempotencyKey | null;
  /**
   * The text.
   */
  text: string;
  type: "post.create";
}
/**
 * Delete a post (author only).
 */
export interface PostDeleteRequest {
  /**
   * Post id.
   */
  post: string;
  type: "post.delete";
}
/**
 * Comment on a post.
 */
export interface CommentCreateRequest {
  /**
   * The client's key for this create: a retry with the same key returns the first
   * comment and creates nothing.
   */
  idempotency_key?: IdempotencyKey | null;
  /**
   * Post id.
   */
  post: string;
  /**
   * The text.
   */
  text: string;
  type: "comment.create";
}
/**
 * Like a post (idempotent).
 */
export interface PostLikeRequest {
  /**
   * Post id.
   */
  post: string;
  type: "post.like";
}
/**
 * Unlike a post (idempotent).
 */
export interface PostUnlikeRequest {
  /**
   * Post id.
   */
  post: string;
  type: "post.unlike";
}
/**
 * Follow a user.
 */
export interface FollowRequest {
  type: "follow";
  /**
   * User id.
   */
  user: string;
}
/**
 * Unfollow a user.
 */
export interface UnfollowRequest {
  type: "unfollow";
  /**
   * User id.
   */
  user: string;
}
/**
 * Read the caller's precomputed timeline.
 */
export interface TimelineGetRequest {
  /**
   * Only posts older than this post id.
   */
  before?: string | null;
  /**
   * At most this many (≤ 100, default 50).
   */
  limit?: number | null;
  type: "timeline.get";
}
/**
 * Watch posts' engagement (at most 50 per session).
 */
export interface PostWatchRequest {
  /**
   * Post ids.
   */
  posts: string[];
  type: "post.watch";
}
/**
 * Stop watching posts' engagement.
 */
export interface PostUnwatchRequest {
  /**
   * Post ids.
   */
  posts: string[];
  type: "post.unwatch";
}
/**
 * The caller is writing a comment (no id).
 */
export interface CommentTypingRequest {
  /**
   * Post id.
   */
  post: string;
  type: "comment.typing";
  /**
   * Words typed so far.
   */
  words: number;
}
/**
 * The answer to signup, login and refresh.
 *
 * From docs/schema/http-auth-response.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "AuthResponse".
 */
export interface AuthResponse {
  /**
   * A JWT access token.
   */
  access_token: string;
  /**
   * Seconds until the access token expires.
   */
  expires_in: number;
  /**
   * A single-use refresh token.
   */
  refresh_token: string;
  user: UserRef;
}
/**
 * A user as others see it.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "UserRef".
 */
export interface UserRef {
  /**
   * The user's handle.
   */
  handle: string;
  /**
   * The user's id.
   */
  id: string;
}
/**
 * Body of every HTTP error: `{"error":{"code":"...","message":"..."}}`.
 *
 * From docs/schema/http-error.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "HttpError".
 */
export interface HttpError {
  error: HttpErrorBody;
}
/**
 * The inside of [`HttpError`].
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "HttpErrorBody".
 */
export interface HttpErrorBody {
  code: ErrorCode;
  /**
   * A message for the client author.
   */
  message: string;
  /**
   * With `rate_limited`: when one more attempt will be accepted, milliseconds (also sent
   * as the `Retry-After` header, in seconds).
   */
  retry_after_ms?: number | null;
}
/**
 * `POST /v1/auth/login`.
 *
 * From docs/schema/http-login-request.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "LoginRequest".
 */
export interface LoginRequest {
  /**
   * The handle.
   */
  handle: string;
  /**
   * The password.
   */
  password: string;
}
/**
 * `201` body of `POST /v1/media`.
 *
 * From docs/schema/http-media-response.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "MediaResponse".
 */
export interface MediaResponse {
  media: Media;
}
/**
 * Uploaded media, as returned by `POST /v1/media`.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Media".
 */
export interface Media {
  /**
   * The content type given at upload.
   */
  content_type: string;
  /**
   * Media id, used in `attachments`.
   */
  id: string;
  /**
   * Size in bytes.
   */
  size: number;
  /**
   * Where to `GET` the bytes.
   */
  url: string;
}
/**
 * `POST /v1/auth/refresh`.
 *
 * From docs/schema/http-refresh-request.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "RefreshRequest".
 */
export interface RefreshRequest {
  /**
   * A refresh token, usable once.
   */
  refresh_token: string;
}
/**
 * `POST /v1/auth/signup`.
 *
 * From docs/schema/http-signup-request.json.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "SignupRequest".
 */
export interface SignupRequest {
  /**
   * Optional email.
   */
  email?: string | null;
  /**
   * 3–32 characters of `[a-z0-9_]`, unique.
   */
  handle: string;
  /**
   * At least 8 characters.
   */
  password: string;
}
/**
 * First frame of every connection.
 */
export interface HelloFrame {
  /**
   * Every feature flag, evaluated for this user.
   */
  flags: {
    [k: string]: boolean;
  };
  /**
   * Seq of the user's latest durable event (0 if none).
   */
  last_seq: number;
  /**
   * The protocol version the server speaks (`"1.1"`).
   */
  protocol: string;
  /**
   * The server's clock.
   */
  server_ts: number;
  /**
   * This session's id.
   */
  session: string;
  type: "hello";
  user: UserRef;
}
/**
 * A successful reply.
 */
export interface OkFrame {
  data: ReplyData;
  /**
   * The request's id.
   */
  id: string;
  type: "ok";
}
/**
 * `conversation.list`.
 */
export interface ConversationListReply {
  /**
   * Conversations with `last_message` and `unread`.
   */
  conversations: ConversationSummary[];
}
/**
 * `C` with the caller's `last_message` and `unread`, as listed by `conversation.list`.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ConversationSummary".
 */
export interface ConversationSummary {
  /**
   * The creator's user id.
   */
  created_by: string;
  /**
   * Creation time.
   */
  created_ts: number;
  /**
   * Whether the conversation expires 24 hours after its last message.
   */
  ephemeral: boolean;
  /**
   * Conversation id.
   */
  id: string;
  kind: ConversationKind;
  /**
   * The newest message, or null.
   */
  last_message?: Message | null;
  /**
   * A channel's last message offset (on the wire for channels only).
   */
  last_offset?: number;
  /**
   * How many members (always present).
   */
  member_count?: number;
  /**
   * Member user ids, the creator included. Omitted on the wire for a group of more than
   * [`LARGE_GROUP`] members (`conversation.members` pages through them); always complete
   * inside the server.
   */
  members?: string[];
  /**
   * Pinned message ids, most recently pinned first.
   */
  pinned?: string[];
  /**
   * A channel anyone may subscribe to (on the wire for channels only).
   */
  public?: boolean;
  /**
   * The owner and the admins, by user id (plain members are not listed; empty for a
   * direct conversation).
   */
  roles?: {
    [k: string]: Role;
  };
  /**
   * Slow mode: a plain member may send one message per this many seconds (0: off).
   */
  slow_mode_s?: number;
  /**
   * Title, if any.
   */
  title?: string | null;
  /**
   * Messages from others after the caller's last `message.read`.
   */
  unread: number;
}
/**
 * `M`: a chat message.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Message".
 */
export interface Message {
  /**
   * Attached media.
   */
  attachments?: Attachment[];
  /**
   * The sender's idempotency key.
   */
  client_msg_id: string;
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * Deleted for everyone: a tombstone (`text` empty, no attachments).
   */
  deleted?: boolean;
  /**
   * When the text was last edited, or null.
   */
  edited_ts?: number | null;
  /**
   * Message id.
   */
  id: string;
  /**
   * Members mentioned.
   */
  mentions?: string[];
  /**
   * The caller's own reactions: only in replies to reads (`message.history`,
   * `message.search`, `conversation.pins`).
   */
  my_reactions?: string[] | null;
  /**
   * Reactions by emoji, most first (ties: the emoji first reacted with first).
   */
  reactions?: ReactionCount[];
  /**
   * How many messages have this one as their `thread`.
   */
  replies?: number;
  /**
   * The message this one replies to (same conversation), or null.
   */
  reply_to?: string | null;
  /**
   * Sender's user id.
   */
  sender: string;
  /**
   * The text.
   */
  text: string;
  /**
   * The root of the thread this message is in (same conversation), or null.
   */
  thread?: string | null;
  /**
   * Time the server accepted it.
   */
  ts: number;
}
/**
 * One emoji's count in a message's `reactions`.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "ReactionCount".
 */
export interface ReactionCount {
  /**
   * How many users reacted with it.
   */
  count: number;
  /**
   * The emoji (1 to 32 bytes).
   */
  emoji: string;
}
/**
 * `conversation.create`, `conversation.get`.
 */
export interface ConversationReply {
  conversation: Conversation;
}
/**
 * `C`: a conversation.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Conversation".
 */
export interface Conversation {
  /**
   * The creator's user id.
   */
  created_by: string;
  /**
   * Creation time.
   */
  created_ts: number;
  /**
   * Whether the conversation expires 24 hours after its last message.
   */
  ephemeral: boolean;
  /**
   * Conversation id.
   */
  id: string;
  kind: ConversationKind;
  /**
   * A channel's last message offset (on the wire for channels only).
   */
  last_offset?: number;
  /**
   * How many members (always present).
   */
  member_count?: number;
  /**
   * Member user ids, the creator included. Omitted on the wire for a group of more than
   * [`LARGE_GROUP`] members (`conversation.members` pages through them); always complete
   * inside the server.
   */
  members?: string[];
  /**
   * Pinned message ids, most recently pinned first.
   */
  pinned?: string[];
  /**
   * A channel anyone may subscribe to (on the wire for channels only).
   */
  public?: boolean;
  /**
   * The owner and the admins, by user id (plain members are not listed; empty for a
   * direct conversation).
   */
  roles?: {
    [k: string]: Role;
  };
  /**
   * Slow mode: a plain member may send one message per this many seconds (0: off).
   */
  slow_mode_s?: number;
  /**
   * Title, if any.
   */
  title?: string | null;
}
/**
 * `message.history`.
 */
export interface MessageHistoryReply {
  /**
   * Messages, newest first.
   */
  messages: Message[];
  /**
   * True iff older messages remain.
   */
  more: boolean;
}
/**
 * `conversation.members`.
 */
export interface ConversationMembersReply {
  /**
   * Member user ids, in order.
   */
  members: string[];
  /**
   * True iff more members follow.
   */
  more: boolean;
}
/**
 * `message.search`, `conversation.pins`.
 */
export interface MessageSearchReply {
  /**
   * Messages, best first (pins: most recently pinned first).
   */
  messages: Message[];
}
/**
 * `message.send`, `message.edit`.
 */
export interface MessageSendReply {
  message: Message;
}
/**
 * `presence.watch`.
 */
export interface PresenceWatchReply {
  /**
   * Current presence of the watched users.
   */
  presence: Presence[];
}
/**
 * `P`: a user's presence.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Presence".
 */
export interface Presence {
  /**
   * When the user was last seen online (null if never).
   */
  last_seen_ts?: number | null;
  status: PresenceStatus;
  /**
   * The user id.
   */
  user: string;
}
/**
 * `block.list`.
 */
export interface BlockListReply {
  /**
   * User ids.
   */
  users: string[];
}
/**
 * `contact.set`.
 */
export interface ContactSetReply {
  contact: Contact;
}
/**
 * One of a user's contacts (`contact.set`, `contact.list`, `contact.updated`): private to
 * its owner.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Contact".
 */
export interface Contact {
  /**
   * The owner's group for this contact, if any.
   */
  group?: string | null;
  /**
   * The owner's private note, if any.
   */
  note?: string | null;
  /**
   * When the contact was last set (ms since the epoch).
   */
  ts: number;
  /**
   * The contact's user id.
   */
  user: string;
}
/**
 * `contact.list`.
 */
export interface ContactListReply {
  /**
   * The caller's contacts, by user id.
   */
  contacts: Contact[];
}
/**
 * `post.create`.
 */
export interface PostCreateReply {
  post: Post;
}
/**
 * `T`: a feed post.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Post".
 */
export interface Post {
  /**
   * Attached media.
   */
  attachments?: Attachment[];
  /**
   * Author's user id.
   */
  author: string;
  /**
   * Comment count.
   */
  comments: number;
  /**
   * Post id.
   */
  id: string;
  /**
   * Like count.
   */
  likes: number;
  /**
   * The text.
   */
  text: string;
  /**
   * Creation time.
   */
  ts: number;
}
/**
 * `comment.create`.
 */
export interface CommentCreateReply {
  comment: Comment;
}
/**
 * A comment on a post.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "Comment".
 */
export interface Comment {
  /**
   * Author's user id.
   */
  author: string;
  /**
   * Comment id.
   */
  id: string;
  /**
   * The post commented on.
   */
  post: string;
  /**
   * The text.
   */
  text: string;
  /**
   * Creation time.
   */
  ts: number;
}
/**
 * `post.like`, `post.unlike`.
 */
export interface LikesReply {
  /**
   * The like count.
   */
  likes: number;
}
/**
 * `timeline.get`.
 */
export interface TimelineReply {
  /**
   * When the timeline was precomputed.
   */
  computed_ts: number;
  /**
   * Posts, ranked.
   */
  items: Post[];
}
/**
 * `sync`.
 */
export interface SyncReply {
  /**
   * The latest durable seq.
   */
  last_seq: number;
  /**
   * Present and true when events older than the retention window were needed.
   */
  truncated?: boolean;
}
/**
 * `channel.sync`: the channel's messages up to `last_offset` were written before this
 * reply; `more` when the page was full (sync again from `last_offset`).
 */
export interface ChannelSyncReply {
  /**
   * The offset of the last message replayed (`after_offset` when none was).
   */
  last_offset: number;
  /**
   * Whether later messages remain.
   */
  more: boolean;
}
/**
 * `auth`: the session now runs on the new token, until it expires.
 */
export interface AuthReply {
  /**
   * When the new token expires, ms since the epoch.
   */
  expires_ts: number;
}
/**
 * `message.versions`.
 */
export interface MessageVersionsReply {
  /**
   * The texts, oldest first, the current one last.
   */
  versions: MessageVersion[];
}
/**
 * One text of an edited message, in `message.versions`.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "MessageVersion".
 */
export interface MessageVersion {
  /**
   * The text.
   */
  text: string;
  /**
   * When it was written (the send, or the edit that wrote it).
   */
  ts: number;
}
/**
 * `reaction.add`, `reaction.remove`.
 */
export interface ReactionsReply {
  /**
   * The message's reactions now, most first.
   */
  reactions: ReactionCount[];
}
/**
 * Every request whose reply is `{}`.
 */
export interface EmptyReply {}
/**
 * An error reply, or an error about a frame without id (`"id":null`).
 */
export interface ErrorFrame {
  code: ErrorCode;
  /**
   * The request's id, or null.
   */
  id?: string | null;
  /**
   * A message for the client author.
   */
  message: string;
  /**
   * With `rate_limited`: when one more frame will be accepted.
   */
  retry_after_ms?: number | null;
  type: "error";
}
/**
 * A new message in a conversation the user belongs to (durable).
 */
export interface MessageNewFrame {
  message: Message;
  /**
   * The user's event seq.
   */
  seq: number;
  type: "message.new";
}
/**
 * A message was edited or deleted, or its `replies` changed (durable).
 */
export interface MessageUpdatedFrame {
  message: Message;
  /**
   * The user's event seq.
   */
  seq: number;
  type: "message.updated";
}
/**
 * A reaction was added to or removed from a message (durable).
 */
export interface ReactionUpdatedFrame {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * The emoji.
   */
  emoji: string;
  /**
   * Message id.
   */
  message: string;
  op: ReactionOp;
  /**
   * The message's reactions now, most first.
   */
  reactions: ReactionCount[];
  /**
   * The user's event seq.
   */
  seq: number;
  type: "reaction.updated";
  /**
   * Who reacted.
   */
  user: string;
}
/**
 * A conversation was created, changed membership, or expired (durable).
 */
export interface ConversationUpdatedFrame {
  conversation: Conversation;
  /**
   * The user's event seq.
   */
  seq: number;
  type: "conversation.updated";
}
/**
 * One of the user's contacts was set or removed (durable; only the owner's sessions).
 */
export interface ContactUpdatedFrame {
  /**
   * The contact as it is now (absent when removed).
   */
  contact?: Contact | null;
  /**
   * True when the contact was removed.
   */
  removed?: boolean;
  /**
   * The user's event seq.
   */
  seq: number;
  type: "contact.updated";
  /**
   * The user removed from the contacts (only when removed).
   */
  user?: string | null;
}
/**
 * A member read up to a message (durable).
 */
export interface ReceiptReadFrame {
  /**
   * Conversation id.
   */
  conversation: string;
  /**
   * The message read.
   */
  message: string;
  /**
   * The user's event seq.
   */
  seq: number;
  type: "receipt.read";
  /**
   * The reader.
   */
  user: string;
}
/**
 * A like, comment, follow, mention or system notice (durable).
 */
export interface NotificationFrame {
  /**
   * Details, by kind.
   */
  data: {
    [k: string]: unknown;
  };
  kind: NotificationKind;
  /**
   * The user's event seq.
   */
  seq: number;
  type: "notification";
}
/**
 * Someone is typing in a conversation (ephemeral).
 */
export interface TypingFrame {
  /**
   * Conversation id.
   */
  conversation: string;
  state: TypingState;
  type: "typing";
  /**
   * Who is typing.
   */
  user: string;
}
/**
 * A message in a channel the user belongs to: durable in the channel's history, numbered
 * by the channel's `offset` (from 1, without gaps), not an inbox event (no `seq`).
 */
export interface ChannelMessageFrame {
  /**
   * The channel's conversation id.
   */
  conversation: string;
  message: Message;
  /**
   * The message's place in the channel.
   */
  offset: number;
  type: "channel.message";
}
/**
 * A channel's message changed (edited, deleted, reacted to, replied to in a thread): not
 * an inbox event (no `seq`); `offset` is the changed message's.
 */
export interface ChannelUpdatedFrame {
  /**
   * The channel's conversation id.
   */
  conversation: string;
  message: Message;
  /**
   * The changed message's place in the channel.
   */
  offset: number;
  type: "channel.updated";
}
/**
 * The user's timeline (ephemeral; pushed after `hello`).
 */
export interface TimelineFrame {
  /**
   * When the timeline was precomputed.
   */
  computed_ts: number;
  /**
   * Posts, ranked.
   */
  items: Post[];
  type: "timeline";
}
/**
 * The user's feature flags changed (ephemeral): the whole map.
 */
export interface FlagsFrame {
  /**
   * Every flag, evaluated for this user.
   */
  flags: {
    [k: string]: boolean;
  };
  type: "flags";
}
/**
 * Who is writing a comment on a watched post (ephemeral).
 */
export interface EngagementFrame {
  /**
   * The post's comment count.
   */
  comments: number;
  /**
   * Post id.
   */
  post: string;
  /**
   * The writers with the most words, most first.
   */
  top: TopWriter[];
  type: "engagement";
  /**
   * The sliding window, in seconds.
   */
  window_s: number;
  /**
   * Distinct writers in the window.
   */
  writers: number;
}
/**
 * One entry of an engagement event's `top` list.
 *
 * This interface was referenced by `HubbubSchemas`'s JSON-Schema
 * via the `definition` "TopWriter".
 */
export interface TopWriter {
  /**
   * The writer's handle.
   */
  handle: string;
  /**
   * The writer's user id.
   */
  user: string;
  /**
   * Words typed so far.
   */
  words: number;
}
