/**
 * The persistence hook: what the client saves so that a web app resumes where it left off
 * across page reloads (the last seq it processed, each channel's last offset, the messages
 * not yet sent), and two adapters, localStorage and memory.
 */
import { defaultLocalStorage } from "./env.js";
/** Validates a loaded value; anything else is treated as no state. */
export function parseState(value) {
    if (typeof value !== "object" || value === null)
        return null;
    const s = value;
    if (s.v !== 1 || typeof s.user !== "string" || !Number.isSafeInteger(s.lastSeq) || (s.lastSeq ?? -1) < 0) {
        return null;
    }
    const channels = {};
    if (typeof s.channels === "object" && s.channels !== null) {
        for (const [id, offset] of Object.entries(s.channels)) {
            if (Number.isSafeInteger(offset) && offset >= 0)
                channels[id] = offset;
        }
    }
    const outbox = Array.isArray(s.outbox)
        ? s.outbox.filter((r) => typeof r === "object" &&
            r !== null &&
            typeof r.fields?.conversation === "string" &&
            typeof r.fields?.client_msg_id === "string" &&
            typeof r.fields?.text === "string")
        : [];
    return { v: 1, user: s.user, lastSeq: s.lastSeq, channels, outbox };
}
/**
 * Keeps the state in `localStorage` (or any Web Storage) under `key`. Use one key per
 * account if the app lets several accounts log in on one browser.
 */
export function localStorageAdapter(key = "hubbub.state", store = defaultLocalStorage()) {
    if (!store)
        throw new Error("localStorageAdapter: no localStorage here (pass one)");
    return {
        load() {
            const text = store.getItem(key);
            if (text === null)
                return null;
            try {
                return parseState(JSON.parse(text));
            }
            catch {
                return null;
            }
        },
        save(state) {
            store.setItem(key, JSON.stringify(state));
        },
    };
}
/** Keeps the state in memory (tests, or sharing one state between client instances). */
export function memoryStorage(initial = null) {
    const holder = {
        state: initial ? clone(initial) : null,
        load() {
            return holder.state ? clone(holder.state) : null;
        },
        save(state) {
            holder.state = clone(state);
        },
    };
    return holder;
}
function clone(state) {
    return JSON.parse(JSON.stringify(state));
}
/**
 * Saves the latest state, never two saves at once: a change during a slow save is saved
 * when it finishes (only the latest state, once).
 */
export class Saver {
    storage;
    snapshot;
    failed;
    saving = false;
    again = false;
    constructor(storage, snapshot, failed) {
        this.storage = storage;
        this.snapshot = snapshot;
        this.failed = failed;
    }
    save() {
        if (this.saving) {
            this.again = true;
            return;
        }
        this.saving = true;
        void this.run();
    }
    async run() {
        try {
            do {
                this.again = false;
                const state = this.snapshot();
                if (!state)
                    return;
                try {
                    await this.storage.save(state);
                }
                catch (cause) {
                    this.failed(cause);
                }
            } while (this.again);
        }
        finally {
            this.saving = false;
        }
    }
}
