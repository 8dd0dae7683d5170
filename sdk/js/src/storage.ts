/**
 * The persistence hook: what the client saves so that a web app resumes where it left off
 * across page reloads (the last seq it processed, each channel's last offset, the messages
 * not yet sent), and two adapters, localStorage and memory.
 */
import { defaultLocalStorage, type WebStorageLike } from "./env.js";
import type { MessageSendRequest } from "./generated/protocol.js";

/** A message waiting in the outbox, as persisted. */
export interface OutboxRecord {
  /** The `message.send` fields, `client_msg_id` included (the same on every attempt). */
  fields: Omit<MessageSendRequest, "type">;
  /** When the app sent it, ms since the epoch (local clock). */
  queuedTs: number;
}

/** The client's state. A new version of this shape will carry another `v`. */
export interface PersistedState {
  v: 1;
  /** The user the state belongs to: another user's state is ignored. */
  user: string;
  /** The highest seq the app processed. */
  lastSeq: number;
  /** Channel id → the highest offset the app processed. */
  channels: Record<string, number>;
  /** Messages not yet acknowledged by the server, in the order they were sent. */
  outbox: OutboxRecord[];
}

/**
 * Where the client keeps its state. `load` is called once, before the first connection;
 * `save` after each change (never two at once: the latest state is saved when a slow save
 * finishes). Either may return a promise.
 */
export interface StateStorage {
  load(): PersistedState | null | undefined | Promise<PersistedState | null | undefined>;
  save(state: PersistedState): void | Promise<void>;
}

/** Validates a loaded value; anything else is treated as no state. */
export function parseState(value: unknown): PersistedState | null {
  if (typeof value !== "object" || value === null) return null;
  const s = value as Partial<PersistedState>;
  if (s.v !== 1 || typeof s.user !== "string" || !Number.isSafeInteger(s.lastSeq) || (s.lastSeq ?? -1) < 0) {
    return null;
  }
  const channels: Record<string, number> = {};
  if (typeof s.channels === "object" && s.channels !== null) {
    for (const [id, offset] of Object.entries(s.channels)) {
      if (Number.isSafeInteger(offset) && offset >= 0) channels[id] = offset;
    }
  }
  const outbox = Array.isArray(s.outbox)
    ? s.outbox.filter(
        (r): r is OutboxRecord =>
          typeof r === "object" &&
          r !== null &&
          typeof r.fields?.conversation === "string" &&
          typeof r.fields?.client_msg_id === "string" &&
          typeof r.fields?.text === "string",
      )
    : [];
  return { v: 1, user: s.user, lastSeq: s.lastSeq as number, channels, outbox };
}

/**
 * Keeps the state in `localStorage` (or any Web Storage) under `key`. Use one key per
 * account if the app lets several accounts log in on one browser.
 */
export function localStorageAdapter(key = "hubbub.state", store: WebStorageLike | undefined = defaultLocalStorage()): StateStorage {
  if (!store) throw new Error("localStorageAdapter: no localStorage here (pass one)");
  return {
    load() {
      const text = store.getItem(key);
      if (text === null) return null;
      try {
        return parseState(JSON.parse(text));
      } catch {
        return null;
      }
    },
    save(state) {
      store.setItem(key, JSON.stringify(state));
    },
  };
}

/** Keeps the state in memory (tests, or sharing one state between client instances). */
export function memoryStorage(initial: PersistedState | null = null): StateStorage & { state: PersistedState | null } {
  const holder = {
    state: initial ? clone(initial) : null,
    load() {
      return holder.state ? clone(holder.state) : null;
    },
    save(state: PersistedState) {
      holder.state = clone(state);
    },
  };
  return holder;
}

function clone(state: PersistedState): PersistedState {
  return JSON.parse(JSON.stringify(state)) as PersistedState;
}

/**
 * Saves the latest state, never two saves at once: a change during a slow save is saved
 * when it finishes (only the latest state, once).
 */
export class Saver {
  private saving = false;
  private again = false;

  constructor(
    private readonly storage: StateStorage,
    private readonly snapshot: () => PersistedState | undefined,
    private readonly failed: (cause: unknown) => void,
  ) {}

  save(): void {
    if (this.saving) {
      this.again = true;
      return;
    }
    this.saving = true;
    void this.run();
  }

  private async run(): Promise<void> {
    try {
      do {
        this.again = false;
        const state = this.snapshot();
        if (!state) return;
        try {
          await this.storage.save(state);
        } catch (cause) {
          this.failed(cause);
        }
      } while (this.again);
    } finally {
      this.saving = false;
    }
  }
}
