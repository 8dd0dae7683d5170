/** At most this many users per `presence.watch` (the server's limit per request). */
const CHUNK = 1000;
export class PresenceHelper {
    transport;
    watched = new Set();
    known = new Map();
    status;
    constructor(transport) {
        this.transport = transport;
    }
    /** Watches `users` (on this and every later session); resolves with their presence now. */
    async watch(users) {
        const fresh = users.filter((u) => !this.watched.has(u));
        for (const u of users)
            this.watched.add(u);
        const out = [];
        for (let i = 0; i < fresh.length; i += CHUNK) {
            const reply = await this.transport.watch(fresh.slice(i, i + CHUNK));
            for (const p of reply.presence) {
                this.known.set(p.user, p);
                out.push(p);
            }
        }
        // Users already watched: answer from what is known.
        for (const u of users) {
            if (!fresh.includes(u)) {
                const p = this.known.get(u);
                if (p)
                    out.push(p);
            }
        }
        return out;
    }
    async unwatch(users) {
        const present = users.filter((u) => this.watched.has(u));
        for (const u of present) {
            this.watched.delete(u);
            this.known.delete(u);
        }
        for (let i = 0; i < present.length; i += CHUNK)
            await this.transport.unwatch(present.slice(i, i + CHUNK));
    }
    /** Sets this user's status (kept, and set again on every new session). */
    async set(status) {
        this.status = status;
        await this.transport.set(status);
    }
    /** The latest presence known of a watched user. */
    get(user) {
        return this.known.get(user);
    }
    get watching() {
        return [...this.watched];
    }
    /** A `presence` event arrived. */
    received(frame) {
        if (!this.watched.has(frame.user))
            return;
        this.known.set(frame.user, { user: frame.user, status: frame.status, last_seen_ts: frame.last_seen_ts ?? null });
    }
    /** A new session: set the status and renew every watch; report what changed meanwhile. */
    async resume() {
        if (this.status !== undefined && this.status !== "online")
            await this.transport.set(this.status);
        const users = [...this.watched];
        for (let i = 0; i < users.length; i += CHUNK) {
            const reply = await this.transport.watch(users.slice(i, i + CHUNK));
            for (const p of reply.presence) {
                if (!this.watched.has(p.user))
                    continue;
                const before = this.known.get(p.user);
                this.known.set(p.user, p);
                if (!before || before.status !== p.status) {
                    this.transport.changed({ type: "presence", user: p.user, status: p.status, last_seen_ts: p.last_seen_ts ?? null });
                }
            }
        }
    }
}
