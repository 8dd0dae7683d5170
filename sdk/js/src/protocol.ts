/**
 * The protocol as the SDK types it: the wire types generated from docs/schema, the frames of
 * PROTOCOL.md 1.1 that the server's schema does not have yet (written by hand, below), and
 * the maps from a request type to its fields and its reply, and from an event type to its
 * frame. Nothing here runs; it is types and two lists.
 */
import type * as G from "./generated/protocol.js";

export type * from "./generated/protocol.js";

// ---------------------------------------------------------------------------------------
// PROTOCOL.md 1.1 frames that docs/schema does not describe yet (the server may not serve
// them). When `hubbub schema` gains one, delete it here and use the generated one.

/** A channel message (1.1 "Channels"): not an inbox event, numbered per channel by `offset`. */
export interface ChannelMessageFrame {
  type: "channel.message";
  conversation: string;
  /** The channel's message counter, from 1, without gaps. */
  offset: number;
  message: G.Message;
}

/** The user's feature flags changed (1.1, ephemeral): the whole map. */
export interface FlagsFrame {
  type: "flags";
  flags: Record<string, boolean>;
}

/** 1.1 requests the SDK itself sends (channels); others go through the untyped `request`. */
export interface ChannelSubscribeRequest {
  type: "channel.subscribe";
  conversation: string;
}
export interface ChannelUnsubscribeRequest {
  type: "channel.unsubscribe";
  conversation: string;
}
export interface ChannelSyncRequest {
  type: "channel.sync";
  conversation: string;
  after_offset: number;
  limit?: number;
}
export interface ChannelSyncReply {
  last_offset: number;
  more: boolean;
}

// ---------------------------------------------------------------------------------------
// Requests and replies.

/** Every request the SDK knows, generated or 1.1. */
export type AnyRequest = G.ClientRequest | ChannelSubscribeRequest | ChannelUnsubscribeRequest | ChannelSyncRequest;

/**
 * The reply `data` of each request type. `never` marks fire-and-forget frames (sent without
 * id, no reply). A request added to the schema fails compilation below until it is here.
 */
export interface ReplyMap {
  sync: G.SyncReply;
  ack: G.EmptyReply;
  auth: G.AuthReply;
  "conversation.create": G.ConversationReply;
  "conversation.list": G.ConversationListReply;
  "conversation.get": G.ConversationReply;
  "conversation.add": G.EmptyReply;
  "conversation.members": G.ConversationMembersReply;
  "conversation.remove": G.EmptyReply;
  "conversation.leave": G.EmptyReply;
  "message.send": G.MessageSendReply;
  "message.history": G.MessageHistoryReply;
  "message.search": G.MessageSearchReply;
  "message.read": G.EmptyReply;
  "message.edit": G.MessageSendReply;
  "message.versions": G.MessageVersionsReply;
  "message.delete": G.EmptyReply;
  "message.report": G.EmptyReply;
  "reaction.add": G.ReactionsReply;
  "reaction.remove": G.ReactionsReply;
  "message.pin": G.EmptyReply;
  "message.unpin": G.EmptyReply;
  "conversation.pins": G.MessageSearchReply;
  "conversation.mute": G.EmptyReply;
  "conversation.role": G.EmptyReply;
  "conversation.ban": G.EmptyReply;
  "conversation.unban": G.EmptyReply;
  "conversation.mute_member": G.EmptyReply;
  "conversation.settings": G.ConversationReply;
  typing: never;
  "presence.set": G.EmptyReply;
  "presence.watch": G.PresenceWatchReply;
  "presence.unwatch": G.EmptyReply;
  "block.add": G.EmptyReply;
  "block.remove": G.EmptyReply;
  "block.list": G.BlockListReply;
  "contact.set": G.ContactSetReply;
  "contact.remove": G.EmptyReply;
  "contact.list": G.ContactListReply;
  "post.create": G.PostCreateReply;
  "post.delete": G.EmptyReply;
  "comment.create": G.CommentCreateReply;
  "post.like": G.LikesReply;
  "post.unlike": G.LikesReply;
  follow: G.EmptyReply;
  unfollow: G.EmptyReply;
  "timeline.get": G.TimelineReply;
  "post.watch": G.EmptyReply;
  "post.unwatch": G.EmptyReply;
  "comment.typing": never;
  "channel.subscribe": G.EmptyReply;
  "channel.unsubscribe": G.EmptyReply;
  "channel.sync": ChannelSyncReply;
}

type MissingReply = Exclude<AnyRequest["type"], keyof ReplyMap>;
type UnknownReply = Exclude<keyof ReplyMap, AnyRequest["type"]>;
/** @internal Compiles only while ReplyMap names exactly the known requests. */
export type ReplyMapIsComplete = [MissingReply | UnknownReply] extends [never] ? true : never;
const replyMapIsComplete: ReplyMapIsComplete = true;
void replyMapIsComplete;

/** Request types that get a reply. */
export type RequestType = { [K in keyof ReplyMap]: [ReplyMap[K]] extends [never] ? never : K }[keyof ReplyMap];
/** Frames sent without id (no reply). */
export type SignalType = Exclude<keyof ReplyMap, RequestType>;

/** A request's fields, without `type` (and without `id`, which the client assigns). */
export type RequestFields<T extends AnyRequest["type"]> = Omit<Extract<AnyRequest, { type: T }>, "type">;

// ---------------------------------------------------------------------------------------
// Pushed events.

/** Every frame the server pushes without being asked (not hello, ok or error). */
export type PushedFrame =
  | Exclude<G.ServerFrame, G.HelloFrame | G.OkFrame | G.ErrorFrame>
  | ChannelMessageFrame
  | FlagsFrame;

/** Pushed frames that carry a `seq`: the user's durable inbox events. */
export type DurableFrame = Extract<PushedFrame, { seq: number }>;

/** Pushed frames numbered per channel by `offset`. */
export type ChannelFrame = ChannelMessageFrame | G.ChannelUpdatedFrame;

/** Event name → frame, for every pushed frame. */
export type PushedEventMap = { [F in PushedFrame as F["type"]]: F };
