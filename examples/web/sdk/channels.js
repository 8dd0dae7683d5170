/**
 * The channels the client follows (PROTOCOL.md 1.1 "Channels"): each one's offset inbox,
 * the last offset the app processed (persisted), and `channel.sync` from it on every new
 * session and whenever a live message arrives past a gap. A server without channels answers
 * `channel.sync` with `bad_request`; the tracker then stops asking (and says so once).
 */
import { HubbubError } from "./errors.js";
import { OffsetInbox } from "./inbox.js";
export class ChannelTracker {
    deps;
    inboxes = new Map();
    processed = new Map();
    syncing = new Set();
    supported = true;
    constructor(deps) {
        this.deps = deps;
    }
    /** Replaces everything with saved offsets (a new user's state). */
    load(offsets) {
        this.inboxes.clear();
        this.processed.clear();
        for (const [conversation, offset] of Object.entries(offsets)) {
            this.inboxes.set(conversation, new OffsetInbox(offset));
            this.processed.set(conversation, offset);
        }
    }
    /** Follows a channel from `afterOffset` (null: from the first message that arrives). */
    track(conversation, afterOffset) {
        if (this.inboxes.has(conversation))
            return false;
        this.inboxes.set(conversation, new OffsetInbox(afterOffset));
        if (afterOffset !== null)
            this.processed.set(conversation, afterOffset);
        this.deps.changed();
        return true;
    }
    untrack(conversation) {
        this.inboxes.delete(conversation);
        this.processed.delete(conversation);
        this.deps.changed();
    }
    /** The last offset the app processed, per channel. */
    offsets() {
        return Object.fromEntries(this.processed);
    }
    /** A new session: resume every channel whose offset is known. */
    beginSession(session) {
        this.syncing.clear();
        for (const [conversation, inbox] of this.inboxes) {
            inbox.beginSession();
            if (inbox.lastOffset !== null)
                void this.resume(conversation, session);
        }
    }
    /** A `channel.message` arrived. */
    accept(frame, session) {
        let inbox = this.inboxes.get(frame.conversation);
        if (!inbox) {
            inbox = new OffsetInbox(null);
            this.inboxes.set(frame.conversation, inbox);
        }
        for (const event of inbox.accept(frame))
            this.hand(event);
        if (inbox.needsSync)
            void this.resume(frame.conversation, session);
    }
    /** `channel.sync` from the channel's last offset until the server has no more. */
    async resume(conversation, session) {
        if (!this.supported || this.syncing.has(conversation))
            return;
        this.syncing.add(conversation);
        try {
            for (;;) {
                const inbox = this.inboxes.get(conversation);
                if (!inbox || inbox.lastOffset === null || !this.deps.sameSession(session))
                    return;
                const before = inbox.lastOffset;
                let reply;
                try {
                    reply = await this.deps.sync(conversation, before);
                }
                catch (cause) {
                    if (!this.deps.sameSession(session))
                        return;
                    if (cause instanceof HubbubError && cause.code === "bad_request" && /unknown type|not available/.test(cause.message)) {
                        this.supported = false;
                        this.deps.warn(`this server does not serve channels (PROTOCOL.md 1.1): ${cause.message}`, cause);
                    }
                    else {
                        this.deps.warn(`channel.sync of ${conversation} failed`, cause);
                    }
                    return;
                }
                if (!this.deps.sameSession(session))
                    return;
                for (const event of inbox.syncDone(reply.last_offset))
                    this.hand(event);
                // Stop when the server has no more and nothing is held, or when nothing moved.
                if (!reply.more && (!inbox.needsSync || inbox.lastOffset === before))
                    return;
            }
        }
        finally {
            this.syncing.delete(conversation);
        }
    }
    hand(event) {
        this.deps.deliver(event, () => {
            if (!this.inboxes.has(event.conversation))
                return;
            if ((this.processed.get(event.conversation) ?? -1) < event.offset) {
                this.processed.set(event.conversation, event.offset);
                this.deps.changed();
            }
        });
    }
}
