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
import { clearTimer, now, setTimer, type TimerHandle } from "./env.js";
import { HubbubError } from "./errors.js";
import type { Message, MessageSendRequest } from "./generated/protocol.js";
import type { OutboxRecord } from "./storage.js";

export type MessageFields = Omit<MessageSendRequest, "type">;

/** A message in the outbox, as the app sees it. */
export interface PendingMessage {
  readonly fields: MessageFields;
  readonly queuedTs: number;
  /** Attempts made so far. */
  readonly attempts: number;
  /** Whether an attempt is awaiting its reply. */
  readonly sending: boolean;
  /** Whether it was restored from storage (sent by an earlier page or process). */
  readonly restored: boolean;
}

interface Entry extends PendingMessage {
  attempts: number;
  sending: boolean;
  notBefore: number;
  settle: { resolve(message: Message): void; reject(error: HubbubError): void } | undefined;
}

export interface OutboxDeps {
  /** One attempt: send `message.send` with these fields; resolves with the reply's message. */
  attempt(fields: MessageFields): Promise<Message>;
  /** Whether attempts can be made now (the session is open). */
  canSend(): boolean;
  /** The outbox changed (to persist). */
  changed(): void;
  /** A message got its `ok` (also for messages restored from storage, which have no promise). */
  sent(message: PendingMessage, result: Message): void;
  /** A message was refused for good (forbidden, not_found, too_large, bad_request ...). */
  failed(message: PendingMessage, error: HubbubError): void;
  maxInFlight: number;
}

/** Codes after which the same message is tried again. */
const RETRY = new Set(["disconnected", "timeout", "internal", "unavailable", "rate_limited", "closed"]);

export class Outbox {
  private entries: Entry[] = [];
  private inFlight = 0;
  private pausedUntil = 0;
  private timer: TimerHandle | undefined;
  private timerAt = Infinity;

  constructor(private readonly deps: OutboxDeps) {}

  /**
   * Queues a message; the promise settles with the server's answer. It is marked handled, so
   * an app that does not await it is not failed by an unhandled rejection (every failure is
   * also reported through `failed`).
   */
  add(fields: MessageFields): Promise<Message> {
    const promise = new Promise<Message>((resolve, reject) => {
      this.entries.push(this.entry(fields, now(), false, { resolve, reject }));
      this.deps.changed();
      this.pump();
    });
    promise.catch(() => {});
    return promise;
  }

  /** Restores messages saved by an earlier run (before the ones added since). */
  restore(records: OutboxRecord[]): void {
    const known = new Set(this.entries.map((e) => e.fields.client_msg_id));
    const restored = records
      .filter((r) => !known.has(r.fields.client_msg_id))
      .map((r) => this.entry(r.fields, r.queuedTs, true, undefined));
    this.entries = [...restored, ...this.entries];
    if (restored.length > 0) this.deps.changed();
  }

  /** Drops the messages restored from storage (they belong to another user). */
  dropRestored(): void {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => !e.restored || e.sending);
    if (this.entries.length !== before) this.deps.changed();
  }

  get pending(): readonly PendingMessage[] {
    return this.entries.map(({ fields, queuedTs, attempts, sending, restored }) => ({ fields, queuedTs, attempts, sending, restored }));
  }

  get size(): number {
    return this.entries.length;
  }

  records(): OutboxRecord[] {
    return this.entries.map((e) => ({ fields: e.fields, queuedTs: e.queuedTs }));
  }

  /**
   * Removes a message that is not being sent right now; its promise rejects with
   * `cancelled`. False if it is unknown or an attempt is under way (it may be delivered).
   */
  cancel(clientMsgId: string): boolean {
    const index = this.entries.findIndex((e) => e.fields.client_msg_id === clientMsgId);
    const entry = this.entries[index];
    if (!entry || entry.sending) return false;
    this.entries.splice(index, 1);
    entry.settle?.reject(new HubbubError("cancelled", "the message was cancelled before it was sent", { requestType: "message.send" }));
    this.deps.changed();
    this.pump();
    return true;
  }

  /** The client closes: every promise rejects with `closed`; the messages stay (persisted). */
  rejectAll(error: HubbubError): void {
    for (const entry of this.entries) {
      entry.settle?.reject(error);
      entry.settle = undefined;
    }
    clearTimer(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  /** Sends what can be sent now. Called when anything changes (a reply, a new session). */
  pump(): void {
    if (!this.deps.canSend()) return;
    const t = now();
    if (t < this.pausedUntil) return this.wakeAt(this.pausedUntil);
    const busy = new Set<string>();
    for (const entry of this.entries) {
      if (this.inFlight >= this.deps.maxInFlight) return;
      const conversation = entry.fields.conversation;
      // One message at a time per conversation, in order.
      if (busy.has(conversation)) continue;
      busy.add(conversation);
      if (entry.sending) continue;
      if (entry.notBefore > t) {
        this.wakeAt(entry.notBefore);
        continue;
      }
      this.send(entry);
    }
  }

  private send(entry: Entry): void {
    entry.sending = true;
    entry.attempts += 1;
    this.inFlight += 1;
    this.deps.attempt(entry.fields).then(
      (message) => {
        this.inFlight -= 1;
        entry.sending = false;
        this.remove(entry);
        entry.settle?.resolve(message);
        this.deps.sent(entry, message);
        this.pump();
      },
      (cause: unknown) => {
        this.inFlight -= 1;
        entry.sending = false;
        const error =
          cause instanceof HubbubError ? cause : new HubbubError("internal", String(cause), { cause, requestType: "message.send" });
        if (!this.entries.includes(entry)) return;
        if (RETRY.has(error.code)) {
          if (error.code === "rate_limited") {
            this.pausedUntil = now() + (error.retryAfterMs ?? 1000);
          } else if (error.code === "internal" || error.code === "unavailable") {
            entry.notBefore = now() + backoffDelay(entry.attempts, { initialDelayMs: 250, maxDelayMs: 10_000 });
          }
          this.pump();
          return;
        }
        this.remove(entry);
        entry.settle?.reject(error);
        this.deps.failed(entry, error);
        this.pump();
      },
    );
  }

  private remove(entry: Entry): void {
    const index = this.entries.indexOf(entry);
    if (index >= 0) {
      this.entries.splice(index, 1);
      this.deps.changed();
    }
  }

  private wakeAt(at: number): void {
    if (this.timer !== undefined && this.timerAt <= at) return;
    clearTimer(this.timer);
    this.timerAt = at;
    this.timer = setTimer(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      this.pump();
    }, at - now());
  }

  private entry(fields: MessageFields, queuedTs: number, restored: boolean, settle: Entry["settle"]): Entry {
    return { fields, queuedTs, attempts: 0, sending: false, restored, notBefore: 0, settle };
  }
}
