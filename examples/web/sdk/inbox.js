/**
 * Exactly-once, in-order delivery of numbered events, as pure state machines (no I/O):
 * `SeqInbox` for the user's durable events (`seq`, PROTOCOL.md "Session start, sequence
 * numbers and resume") and `OffsetInbox` for one channel's messages (`offset`, 1.1
 * "Channels"). They decide which events go to the app and when; the client feeds them
 * frames and sync replies.
 *
 * Within a session the server pushes live events in seq order, but the `sync` replay of
 * older events may arrive after live ones (docs/protocol.md: "an event pushed live right
 * after hello arrives once, possibly before the older ones the sync replays"). So until the
 * sync reply, an event that does not follow the last one delivered is held; the reply
 * (`last_seq`) says that everything up to it has been sent, so what is held is then released
 * in order, and seqs that never came are ones the server legitimately skips (an expired
 * ephemeral conversation's messages, a large group's membership changes for others).
 * After the sync, events are taken as they come; any seq at or below the last delivered is a
 * duplicate and dropped.
 */
export class SeqInbox {
    lastSeq;
    syncing = true;
    held = new Map();
    /** @param lastSeq the highest seq already delivered to the app (0: none). */
    constructor(lastSeq) {
        this.lastSeq = lastSeq;
    }
    /** A new session starts: hold out-of-order events until its sync reply. */
    beginSession() {
        this.syncing = true;
        // What the last session held is replayed by this session's sync.
        this.held.clear();
    }
    /** An event arrived; returns the events to deliver now, in order. */
    accept(event) {
        if (!Number.isSafeInteger(event.seq) || event.seq <= this.lastSeq)
            return [];
        if (!this.syncing) {
            this.lastSeq = event.seq;
            return [event];
        }
        if (event.seq !== this.lastSeq + 1) {
            this.held.set(event.seq, event);
            return [];
        }
        this.lastSeq = event.seq;
        return [event, ...this.drainContiguous()];
    }
    /** The sync reply came: everything up to `lastSeq` has been sent. Returns what to deliver. */
    syncDone(lastSeq) {
        this.syncing = false;
        const out = [...this.held.values()].sort((a, b) => a.seq - b.seq);
        this.held.clear();
        for (const event of out)
            this.lastSeq = Math.max(this.lastSeq, event.seq);
        this.lastSeq = Math.max(this.lastSeq, lastSeq);
        return out;
    }
    /** Forget everything (the server's inbox is behind ours, or was truncated). */
    resetTo(lastSeq) {
        this.lastSeq = lastSeq;
        this.held.clear();
    }
    get heldCount() {
        return this.held.size;
    }
    drainContiguous() {
        const out = [];
        for (let next = this.held.get(this.lastSeq + 1); next; next = this.held.get(this.lastSeq + 1)) {
            this.held.delete(next.seq);
            this.lastSeq = next.seq;
            out.push(next);
        }
        return out;
    }
}
/**
 * One channel's messages. Offsets have no gaps (PROTOCOL.md 1.1), but live pushes carry no
 * promise of arriving after a reconnect's replay, so a message past a gap is held and the
 * caller asks the server for the gap with `channel.sync` (`needsSync` says from where).
 */
export class OffsetInbox {
    lastOffset;
    held = new Map();
    /** @param lastOffset the highest offset delivered, or null when nothing is known yet. */
    constructor(lastOffset) {
        this.lastOffset = lastOffset;
    }
    beginSession() {
        this.held.clear();
    }
    accept(event) {
        if (!Number.isSafeInteger(event.offset))
            return [];
        if (this.lastOffset === null) {
            // The first message seen on a channel nothing was known of: start from it.
            this.lastOffset = event.offset;
            return [event, ...this.drainContiguous()];
        }
        if (event.offset <= this.lastOffset)
            return [];
        if (event.offset !== this.lastOffset + 1) {
            this.held.set(event.offset, event);
            return [];
        }
        this.lastOffset = event.offset;
        return [event, ...this.drainContiguous()];
    }
    /** Whether messages are held behind a gap (the caller should `channel.sync`). */
    get needsSync() {
        return this.held.size > 0;
    }
    /**
     * A `channel.sync` reply: the replay up to `lastOffset` has been sent. Anything still held
     * at or below it is released in order (a gap the server did not fill cannot be filled).
     */
    syncDone(lastOffset) {
        const out = [];
        for (const offset of [...this.held.keys()].sort((a, b) => a - b)) {
            if (offset > lastOffset)
                break;
            out.push(this.held.get(offset));
            this.held.delete(offset);
        }
        for (const event of out)
            this.lastOffset = Math.max(this.lastOffset ?? 0, event.offset);
        this.lastOffset = Math.max(this.lastOffset ?? 0, lastOffset);
        return [...out, ...this.drainContiguous()];
    }
    drainContiguous() {
        const out = [];
        if (this.lastOffset === null)
            return out;
        for (let next = this.held.get(this.lastOffset + 1); next; next = this.held.get(this.lastOffset + 1)) {
            this.held.delete(next.offset);
            this.lastOffset = next.offset;
            out.push(next);
        }
        return out;
    }
}
