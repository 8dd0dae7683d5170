/**
 * The channels the client follows (PROTOCOL.md 1.1 "Channels"): each one's offset inbox,
 * the last offset the app processed (persisted), and `channel.sync` from it on every new
 * session and whenever a live message arrives past a gap. A server without channels answers
 * `channel.sync` with `bad_request`; the tracker then stops asking (and says so once).
 */
import { HubbubError } from "./errors.js";
import { OffsetInbox } from "./inbox.js";
import type { ChannelMessageFrame, ChannelSyncReply } from "./protocol.js";

export interface ChannelDeps {
  /** Sends `channel.sync` on the current session. */
  sync(conversation: string, afterOffset: number): Promise<ChannelSyncReply>;
  /** Whether the session the sync started on is still the current one. */
  sameSession(session: unknown): boolean;
  /** Hands messages to the app, in order; `done` runs once the app processed each. */
  deliver(event: ChannelMessageFrame, done: () => void): void;
  changed(): void;
  warn(message: string, cause?: unknown): void;
}

export class ChannelTracker {
  private readonly inboxes = new Map<string, OffsetInbox<ChannelMessageFrame>>();
  private readonly processed = new Map<string, number>();
  private readonly syncing = new Set<string>();
  private supported = true;

  constructor(private readonly deps: ChannelDeps) {}

  /** Replaces everything with saved offsets (a new user's state). */
  load(offsets: Record<string, number>): void {
    this.inboxes.clear();
    this.processed.clear();
    for (const [conversation, offset] of Object.entries(offsets)) {
      this.inboxes.set(conversation, new OffsetInbox(offset));
      this.processed.set(conversation, offset);
    }
  }

  /** Follows a channel from `afterOffset` (null: from the first message that arrives). */
  track(conversation: string, afterOffset: number | null): boolean {
    if (this.inboxes.has(conversation)) return false;
    this.inboxes.set(conversation, new OffsetInbox(afterOffset));
    if (afterOffset !== null) this.processed.set(conversation, afterOffset);
    this.deps.changed();
    return true;
  }

  untrack(conversation: string): void {
    this.inboxes.delete(conversation);
    this.processed.delete(conversation);
    this.deps.changed();
  }

  /** The last offset the app processed, per channel. */
  offsets(): Record<string, number> {
    return Object.fromEntries(this.processed);
  }

  /** A new session: resume every channel whose offset is known. */
  beginSession(session: unknown): void {
    this.syncing.clear();
    for (const [conversation, inbox] of this.inboxes) {
      inbox.beginSession();
      if (inbox.lastOffset !== null) void this.resume(conversation, session);
    }
  }

  /** A `channel.message` arrived. */
  accept(frame: ChannelMessageFrame, session: unknown): void {
    let inbox = this.inboxes.get(frame.conversation);
    if (!inbox) {
      inbox = new OffsetInbox<ChannelMessageFrame>(null);
      this.inboxes.set(frame.conversation, inbox);
    }
    for (const event of inbox.accept(frame)) this.hand(event);
    if (inbox.needsSync) void this.resume(frame.conversation, session);
  }

  /** `channel.sync` from the channel's last offset until the server has no more. */
  async resume(conversation: string, session: unknown): Promise<void> {
    if (!this.supported || this.syncing.has(conversation)) return;
    this.syncing.add(conversation);
    try {
      for (;;) {
        const inbox = this.inboxes.get(conversation);
        if (!inbox || inbox.lastOffset === null || !this.deps.sameSession(session)) return;
        const before = inbox.lastOffset;
        let reply: ChannelSyncReply;
        try {
          reply = await this.deps.sync(conversation, before);
        } catch (cause) {
          if (!this.deps.sameSession(session)) return;
          if (cause instanceof HubbubError && cause.code === "bad_request" && /unknown type|not available/.test(cause.message)) {
            this.supported = false;
            this.deps.warn(`this server does not serve channels (PROTOCOL.md 1.1): ${cause.message}`, cause);
          } else {
            this.deps.warn(`channel.sync of ${conversation} failed`, cause);
          }
          return;
        }
        if (!this.deps.sameSession(session)) return;
        for (const event of inbox.syncDone(reply.last_offset)) this.hand(event);
        // Stop when the server has no more and nothing is held, or when nothing moved.
        if (!reply.more && (!inbox.needsSync || inbox.lastOffset === before)) return;
      }
    } finally {
      this.syncing.delete(conversation);
    }
  }

  private hand(event: ChannelMessageFrame): void {
    this.deps.deliver(event, () => {
      if (!this.inboxes.has(event.conversation)) return;
      if ((this.processed.get(event.conversation) ?? -1) < event.offset) {
        this.processed.set(event.conversation, event.offset);
        this.deps.changed();
      }
    });
  }
}
