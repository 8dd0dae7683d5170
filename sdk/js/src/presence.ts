/**
 * Presence for the app: the status this client set and the users it watches, both of which
 * belong to a session on the server (docs/protocol.md: watches end with their session), so
 * they are applied again on every new session; and the latest presence known of each
 * watched user, kept from replies and `presence` events. A change missed while disconnected
 * is reported as a `presence` event when the watch is renewed.
 */
import type { Presence, PresenceFrame, PresenceWatchReply, SetPresenceStatus } from "./generated/protocol.js";

/** What the helper needs of the client. */
export interface PresenceTransport {
  watch(users: string[]): Promise<PresenceWatchReply>;
  unwatch(users: string[]): Promise<unknown>;
  set(status: SetPresenceStatus): Promise<unknown>;
  /** Report a change seen when a watch was renewed, as a `presence` event. */
  changed(frame: PresenceFrame): void;
}

/** At most this many users per `presence.watch` (the server's limit per request). */
const CHUNK = 1000;

export class PresenceHelper {
  private readonly watched = new Set<string>();
  private readonly known = new Map<string, Presence>();
  private status: SetPresenceStatus | undefined;

  constructor(private readonly transport: PresenceTransport) {}

  /** Watches `users` (on this and every later session); resolves with their presence now. */
  async watch(users: string[]): Promise<Presence[]> {
    const fresh = users.filter((u) => !this.watched.has(u));
    for (const u of users) this.watched.add(u);
    const out: Presence[] = [];
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
        if (p) out.push(p);
      }
    }
    return out;
  }

  async unwatch(users: string[]): Promise<void> {
    const present = users.filter((u) => this.watched.has(u));
    for (const u of present) {
      this.watched.delete(u);
      this.known.delete(u);
    }
    for (let i = 0; i < present.length; i += CHUNK) await this.transport.unwatch(present.slice(i, i + CHUNK));
  }

  /** Sets this user's status (kept, and set again on every new session). */
  async set(status: SetPresenceStatus): Promise<void> {
    this.status = status;
    await this.transport.set(status);
  }

  /** The latest presence known of a watched user. */
  get(user: string): Presence | undefined {
    return this.known.get(user);
  }

  get watching(): string[] {
    return [...this.watched];
  }

  /** A `presence` event arrived. */
  received(frame: PresenceFrame): void {
    if (!this.watched.has(frame.user)) return;
    this.known.set(frame.user, { user: frame.user, status: frame.status, last_seen_ts: frame.last_seen_ts ?? null });
  }

  /** A new session: set the status and renew every watch; report what changed meanwhile. */
  async resume(): Promise<void> {
    if (this.status !== undefined && this.status !== "online") await this.transport.set(this.status);
    const users = [...this.watched];
    for (let i = 0; i < users.length; i += CHUNK) {
      const reply = await this.transport.watch(users.slice(i, i + CHUNK));
      for (const p of reply.presence) {
        if (!this.watched.has(p.user)) continue;
        const before = this.known.get(p.user);
        this.known.set(p.user, p);
        if (!before || before.status !== p.status) {
          this.transport.changed({ type: "presence", user: p.user, status: p.status, last_seen_ts: p.last_seen_ts ?? null });
        }
      }
    }
  }
}
