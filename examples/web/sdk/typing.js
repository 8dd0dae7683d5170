/**
 * Typing indicators both ways. Sending: call `start(conversation)` on every keystroke; the
 * helper sends `typing start` at most once per `renewMs` (the server lapses a start after
 * 6 s without renewal) and `stop` after `idleMs` without keystrokes, or at once with
 * `stop(conversation)` (the client calls it when a message is sent). Receiving: it keeps who
 * is typing in each conversation from `typing` events, and lets a start lapse by itself if
 * the server's `stop` never comes (a lost connection).
 */
import { clearTimer, now, setTimer } from "./env.js";
export class Typing {
    send;
    changed;
    outgoing = new Map();
    incoming = new Map();
    renewMs;
    idleMs;
    lapseMs;
    constructor(
    /** Sends one typing frame; false when there is no open session (the keystroke is dropped). */
    send, 
    /** Who types in `conversation` changed. */
    changed, options = {}) {
        this.send = send;
        this.changed = changed;
        this.renewMs = options.renewMs ?? 3_000;
        this.idleMs = options.idleMs ?? 5_000;
        this.lapseMs = options.lapseMs ?? 7_000;
    }
    /** The user typed in `conversation` (call on every keystroke; it is throttled here). */
    start(conversation) {
        const current = this.outgoing.get(conversation);
        const t = now();
        clearTimer(current?.idle);
        let sentAt = current?.sentAt ?? -Infinity;
        if (t - sentAt >= this.renewMs) {
            if (!this.send(conversation, "start")) {
                this.outgoing.delete(conversation);
                return;
            }
            sentAt = t;
        }
        this.outgoing.set(conversation, { sentAt, idle: setTimer(() => this.stop(conversation), this.idleMs) });
    }
    /** The user stopped typing (sent the message, cleared the field). No-op when not typing. */
    stop(conversation) {
        const current = this.outgoing.get(conversation);
        if (!current)
            return;
        clearTimer(current.idle);
        this.outgoing.delete(conversation);
        this.send(conversation, "stop");
    }
    /** Whether the user is marked as typing in `conversation`. */
    isTyping(conversation) {
        return this.outgoing.has(conversation);
    }
    /** Users typing in `conversation` now (from other users' `typing` events). */
    who(conversation) {
        return [...(this.incoming.get(conversation)?.keys() ?? [])];
    }
    /** A `typing` event arrived. */
    received(event) {
        let users = this.incoming.get(event.conversation);
        const had = users?.has(event.user) ?? false;
        clearTimer(users?.get(event.user));
        if (event.state === "start") {
            if (!users) {
                users = new Map();
                this.incoming.set(event.conversation, users);
            }
            users.set(event.user, setTimer(() => this.forget(event.conversation, event.user), this.lapseMs));
            if (!had)
                this.changed(event.conversation, this.who(event.conversation));
        }
        else if (had) {
            this.forget(event.conversation, event.user);
        }
    }
    /** The session ended: the server lapses our starts, and we may miss others' stops. */
    sessionEnded() {
        for (const current of this.outgoing.values())
            clearTimer(current.idle);
        this.outgoing.clear();
        for (const [conversation, users] of this.incoming) {
            for (const timer of users.values())
                clearTimer(timer);
            this.incoming.delete(conversation);
            this.changed(conversation, []);
        }
    }
    forget(conversation, user) {
        const users = this.incoming.get(conversation);
        if (!users?.has(user))
            return;
        clearTimer(users.get(user));
        users.delete(user);
        if (users.size === 0)
            this.incoming.delete(conversation);
        this.changed(conversation, this.who(conversation));
    }
}
