/**
 * The pure parts, without a server: the seq and offset inboxes, back-off, the frame budget,
 * JWT expiry, the saved state's validation; the generated types against docs/schema, and the
 * demo's compiled copy (examples/web/sdk) against src.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { FrameBudget } from "../src/backoff.js";
import { backoffDelay, jwtExpiry, memoryStorage, OffsetInbox, parseState, SeqInbox } from "../src/index.js";

const ev = (seq: number) => ({ seq });
const seqs = (events: { seq: number }[]) => events.map((e) => e.seq);

test("SeqInbox: in order, once, with the sync replay arriving after live events", () => {
  const inbox = new SeqInbox<{ seq: number }>(10);
  inbox.beginSession();
  assert.deepEqual(seqs(inbox.accept(ev(11))), [11]);
  // Live 14 and 15 come before the replay of 12 and 13: held.
  assert.deepEqual(seqs(inbox.accept(ev(14))), []);
  assert.deepEqual(seqs(inbox.accept(ev(15))), []);
  assert.deepEqual(seqs(inbox.accept(ev(12))), [12]);
  assert.deepEqual(seqs(inbox.accept(ev(12))), [], "a duplicate is dropped");
  assert.deepEqual(seqs(inbox.accept(ev(13))), [13, 14, 15]);
  assert.deepEqual(seqs(inbox.syncDone(15)), []);
  assert.equal(inbox.lastSeq, 15);
  assert.deepEqual(seqs(inbox.accept(ev(15))), []);
  assert.deepEqual(seqs(inbox.accept(ev(16))), [16]);
});

test("SeqInbox: seqs the server skips are passed at the sync reply", () => {
  const inbox = new SeqInbox<{ seq: number }>(0);
  inbox.beginSession();
  // 2 and 5 belong to an expired ephemeral conversation: never sent.
  assert.deepEqual(seqs(inbox.accept(ev(1))), [1]);
  assert.deepEqual(seqs(inbox.accept(ev(3))), []);
  assert.deepEqual(seqs(inbox.accept(ev(4))), []);
  assert.deepEqual(seqs(inbox.accept(ev(7))), []);
  assert.deepEqual(seqs(inbox.syncDone(6)), [3, 4, 7]);
  assert.equal(inbox.lastSeq, 7);
  // After the sync, live events are taken as they come.
  assert.deepEqual(seqs(inbox.accept(ev(9))), [9]);
  assert.deepEqual(seqs(inbox.accept(ev(8))), [], "below the last delivered: dropped");
});

test("SeqInbox: a new session drops what the last one held (its sync replays it)", () => {
  const inbox = new SeqInbox<{ seq: number }>(5);
  inbox.beginSession();
  inbox.accept(ev(8));
  assert.equal(inbox.heldCount, 1);
  inbox.beginSession();
  assert.equal(inbox.heldCount, 0);
  assert.deepEqual(seqs(inbox.accept(ev(6))), [6]);
  assert.deepEqual(seqs(inbox.syncDone(6)), []);
});

test("OffsetInbox: starts at the first message when nothing is known; holds past a gap", () => {
  const fresh = new OffsetInbox<{ offset: number }>(null);
  assert.deepEqual(
    fresh.accept({ offset: 40 }).map((e) => e.offset),
    [40],
  );
  assert.equal(fresh.lastOffset, 40);

  const inbox = new OffsetInbox<{ offset: number }>(3);
  assert.deepEqual(
    inbox.accept({ offset: 4 }).map((e) => e.offset),
    [4],
  );
  assert.deepEqual(inbox.accept({ offset: 6 }), []);
  assert.ok(inbox.needsSync);
  assert.deepEqual(
    inbox.accept({ offset: 5 }).map((e) => e.offset),
    [5, 6],
  );
  assert.ok(!inbox.needsSync);
  assert.deepEqual(inbox.accept({ offset: 6 }), [], "a duplicate is dropped");
  inbox.accept({ offset: 9 });
  assert.deepEqual(
    inbox.syncDone(9).map((e) => e.offset),
    [9],
  );
  assert.equal(inbox.lastOffset, 9);
});

test("backoff grows, stays within its bounds, and starts small", () => {
  const options = { initialDelayMs: 500, maxDelayMs: 30_000 };
  assert.equal(backoffDelay(0, options, () => 0), 0);
  assert.equal(backoffDelay(0, options, () => 1), 500);
  assert.equal(backoffDelay(1, options, () => 0), 500);
  assert.equal(backoffDelay(1, options, () => 1), 1000);
  assert.equal(backoffDelay(3, options, () => 0), 2000);
  for (let attempt = 0; attempt < 30; attempt++) {
    const d = backoffDelay(attempt, options);
    assert.ok(d >= 0 && d <= 30_000, `attempt ${attempt}: ${d}`);
  }
  assert.ok(backoffDelay(20, options, () => 0) >= 15_000);
});

test("the frame budget allows a burst, then paces", () => {
  let clock = 0;
  const budget = new FrameBudget(10, 3, () => clock);
  assert.deepEqual([budget.reserve(), budget.reserve(), budget.reserve()], [0, 0, 0]);
  assert.equal(budget.reserve(), 100);
  assert.equal(budget.reserve(), 200);
  assert.equal(budget.tryTake(), false);
  clock = 1000;
  assert.equal(budget.tryTake(), true);
});

test("jwtExpiry reads exp, and nothing from what is not a JWT", () => {
  const b64 = (v: object) => Buffer.from(JSON.stringify(v)).toString("base64url");
  assert.equal(jwtExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "u", exp: 1_800_000_000 })}.sig`), 1_800_000_000_000);
  assert.equal(jwtExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "u" })}.sig`), undefined);
  assert.equal(jwtExpiry("opaque-token"), undefined);
  assert.equal(jwtExpiry("a.!!!.c"), undefined);
});

test("saved state is validated, and memory storage copies", async () => {
  assert.equal(parseState(null), null);
  assert.equal(parseState({ v: 2, user: "u", lastSeq: 1 }), null);
  assert.equal(parseState({ v: 1, user: "u", lastSeq: -1 }), null);
  const state = parseState({
    v: 1,
    user: "u",
    lastSeq: 7,
    channels: { c1: 3, c2: "x" },
    outbox: [{ fields: { conversation: "c", client_msg_id: "m", text: "t" }, queuedTs: 1 }, { junk: true }],
  });
  assert.deepEqual(state, {
    v: 1,
    user: "u",
    lastSeq: 7,
    channels: { c1: 3 },
    outbox: [{ fields: { conversation: "c", client_msg_id: "m", text: "t" }, queuedTs: 1 }],
  });
  const storage = memoryStorage(state);
  const loaded = await storage.load();
  loaded!.lastSeq = 99;
  assert.equal(storage.state?.lastSeq, 7);
});

test("src/generated/protocol.ts is up to date with docs/schema", () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  // Exits 1, naming the fix, when the file differs from what the schemas generate.
  execFileSync(process.execPath, [join(root, "scripts", "gen.mjs"), "--check"], { stdio: "pipe" });
});

test("examples/web/sdk (the demo's copy of the SDK) is up to date with src", () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  // Exits 1, naming the fix, when the committed modules differ from what src compiles to.
  execFileSync(process.execPath, [join(root, "scripts", "demo.mjs"), "--check"], { stdio: "pipe" });
});
