/**
 * The outbox: `message.send`s waiting for the server's `ok`. A message keeps its
 * `client_msg_id` on every attempt, so a retry after a lost reply, a timeout or `internal`
 * returns the first message and delivers nothing twice (PROTOCOL.md: `message.send` is
 * idempotent on (sender, client_msg_id)). Messages of one conversation are sent one at a
 * time, in the order the app sent them, so retries never reorder them; different
 * conversations go in parallel. The outbox decides what to send and when; the client does
 * the sending.
 */
import { backoffDelay } from "./backoff.js";
import { clearTimer, now, setTimer } from "./env.js";
import { HubbubError } from "./errors.js";
/** Codes after which the same message is tried again. */
const RETRY = new Set(["disconnected", "timeout", "internal", "unavailable", "rate_limited", "closed"]);
export class Outbox {
    deps;
    entries = [];
    inFlight = 0;
    pausedUntil = 0;
    timer;
    timerAt = Infinity;
    constructor(deps) {
        this.deps = deps;
    }
    /**
     * Queues a message; the promise settles with the server's answer. It is marked handled, so
     * an app that does not await it is not failed by an unhandled rejection (every failure is
     * also reported through `failed`).
     */
    add(fields) {
        const promise = new Promise((resolve, reject) => {
            this.entries.push(this.entry(fields, now(), false, { resolve, reject }));
            this.deps.changed();
            this.pump();
        });
        promise.catch(() => { });
        return promise;
    }
    /** Restores messages saved by an earlier run (before the ones added since). */
    restore(records) {
        const known = new Set(this.entries.map((e) => e.fields.client_msg_id));
        const restored = records
            .filter((r) => !known.has(r.fields.client_msg_id))
            .map((r) => this.entry(r.fields, r.queuedTs, true, undefined));
        this.entries = [...restored, ...this.entries];
        if (restored.length > 0)
            this.deps.changed();
    }
    /** Drops the messages restored from storage (they belong to another user). */
    dropRestored() {
        const before = this.entries.length;
        this.entries = this.entries.filter((e) => !e.restored || e.sending);
        if (this.entries.length !== before)
            this.deps.changed();
    }
    get pending() {
        return this.entries.map(({ fields, queuedTs, attempts, sending, restored }) => ({ fields, queuedTs, attempts, sending, restored }));
    }
    get size() {
        return this.entries.length;
    }
    records() {
        return this.entries.map((e) => ({ fields: e.fields, queuedTs: e.queuedTs }));
    }
    /**
     * Removes a message that is not being sent right now; its promise rejects with
     * `cancelled`. False if it is unknown or an attempt is under way (it may be delivered).
     */
    cancel(clientMsgId) {
        const index = this.entries.findIndex((e) => e.fields.client_msg_id === clientMsgId);
        const entry = this.entries[index];
        if (!entry || entry.sending)
            return false;
        this.entries.splice(index, 1);
        entry.settle?.reject(new HubbubError("cancelled", "the message was cancelled before it was sent", { requestType: "message.send" }));
        this.deps.changed();
        this.pump();
        return true;
    }
    /** The client closes: every promise rejects with `closed`; the messages stay (persisted). */
    rejectAll(error) {
        for (const entry of this.entries) {
            entry.settle?.reject(error);
            entry.settle = undefined;
        }
        clearTimer(this.timer);
        this.timer = undefined;
        this.timerAt = Infinity;
    }
    /** Sends what can be sent now. Called when anything changes (a reply, a new session). */
    pump() {
        if (!this.deps.canSend())
            return;
        const t = now();
        if (t < this.pausedUntil)
            return this.wakeAt(this.pausedUntil);
        const busy = new Set();
        for (const entry of this.entries) {
            if (this.inFlight >= this.deps.maxInFlight)
                return;
            const conversation = entry.fields.conversation;
            // One message at a time per conversation, in order.
            if (busy.has(conversation))
                continue;
            busy.add(conversation);
            if (entry.sending)
                continue;
            if (entry.notBefore > t) {
                this.wakeAt(entry.notBefore);
                continue;
            }
            this.send(entry);
        }
    }
    send(entry) {
        entry.sending = true;
        entry.attempts += 1;
        this.inFlight += 1;
        this.deps.attempt(entry.fields).then((message) => {
            this.inFlight -= 1;
            entry.sending = false;
            this.remove(entry);
            entry.settle?.resolve(message);
            this.deps.sent(entry, message);
            this.pump();
        }, (cause) => {
            this.inFlight -= 1;
            entry.sending = false;
            const error = cause instanceof HubbubError ? cause : new HubbubError("internal", String(cause), { cause, requestType: "message.send" });
            if (!this.entries.includes(entry))
                return;
            if (RETRY.has(error.code)) {
                if (error.code === "rate_limited") {
                    this.pausedUntil = now() + (error.retryAfterMs ?? 1000);
                }
                else if (error.code === "internal" || error.code === "unavailable") {
                    entry.notBefore = now() + backoffDelay(entry.attempts, { initialDelayMs: 250, maxDelayMs: 10_000 });
                }
                this.pump();
                return;
            }
            this.remove(entry);
            entry.settle?.reject(error);
            this.deps.failed(entry, error);
            this.pump();
        });
    }
    remove(entry) {
        const index = this.entries.indexOf(entry);
        if (index >= 0) {
            this.entries.splice(index, 1);
            this.deps.changed();
        }
    }
    wakeAt(at) {
        if (this.timer !== undefined && this.timerAt <= at)
            return;
        clearTimer(this.timer);
        this.timerAt = at;
        this.timer = setTimer(() => {
            this.timer = undefined;
            this.timerAt = Infinity;
            this.pump();
        }, at - now());
    }
    entry(fields, queuedTs, restored, settle) {
        return { fields, queuedTs, attempts: 0, sending: false, restored, notBefore: 0, settle };
    }
}
