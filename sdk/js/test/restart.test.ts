/**
 * The server is killed with SIGKILL and started again (same port, same data directory) while
 * one client keeps sending: the receiving app sees every message exactly once and in order,
 * and the sender's promises all resolve, each with its own message.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Message, MessageNewFrame } from "../src/index.js";
import { sleep, TestServer, waitFor } from "./harness.js";

const TOTAL = 300;
const KILL_AT_SEND = 100;
const KILL_AFTER = 50;
const DOWN_SENDS = 30;

test("SIGKILL and restart mid-stream: every message once, in order", { timeout: 60_000 }, async (t) => {
  // Frame limits above the defaults (20/s), so that 300 messages take a second, not fifteen.
  const server = await TestServer.start(t, { HUBBUB_LIMITS__FRAMES_PER_S: "500", HUBBUB_LIMITS__BURST: "500" });
  const options = { reconnect: { initialDelayMs: 200, maxDelayMs: 1_000 }, frameRate: { perSecond: 400, burst: 400 } };
  const sender = server.client(t, { token: server.appToken("app_sender"), ...options });
  const receiver = server.client(t, { token: server.appToken("app_receiver"), ...options });
  const closes: string[] = [];
  for (const [name, c] of [
    ["sender", sender],
    ["receiver", receiver],
  ] as const) {
    c.on("disconnected", (e) => void closes.push(`${name} ${e.code} ${e.reason}`));
  }
  const received: MessageNewFrame[] = [];
  const senderSaw: MessageNewFrame[] = [];
  let receiverSessions = 0;
  receiver.on("connected", () => void receiverSessions++);
  receiver.on("message.new", (e) => void received.push(e));
  sender.on("message.new", (e) => void senderSaw.push(e));
  await Promise.all([sender.connect(), receiver.connect()]);
  const group = await sender.createConversation({ kind: "group", members: ["app_receiver"], title: "stream" });

  // The sender keeps sending, never waiting for replies. Once the receiver has KILL_AFTER
  // messages the server is killed; the sender sends DOWN_SENDS more while it is down (they
  // wait in the outbox), the server comes back, and the sender goes on.
  const sends: Promise<Message>[] = [];
  let sentWhileDown = 0;
  let pendingWhileDown = 0;
  for (let i = 0; i < TOTAL; i++) {
    if (i === KILL_AT_SEND) {
      await waitFor(() => received.length >= KILL_AFTER, `${KILL_AFTER} messages at the receiver`, 30_000);
      await server.kill("SIGKILL");
    }
    if (i === KILL_AT_SEND + DOWN_SENDS) {
      pendingWhileDown = sender.pendingMessages.length;
      await server.restart();
    }
    if (i >= KILL_AT_SEND && i < KILL_AT_SEND + DOWN_SENDS) sentWhileDown++;
    sends.push(sender.sendMessage(group.id, `m${i}`));
    await sleep(3);
  }
  const results = await Promise.all(sends);

  assert.equal(sentWhileDown, DOWN_SENDS);
  assert.ok(pendingWhileDown >= DOWN_SENDS, `the messages sent while the server was down waited (${pendingWhileDown})`);
  assert.equal(new Set(results.map((m) => m.id)).size, TOTAL, "each send resolved with its own message");
  await waitFor(() => received.length >= TOTAL, `all ${TOTAL} messages at the receiver`, 30_000);
  await waitFor(() => senderSaw.length >= TOTAL, `all ${TOTAL} messages back at the sender`, 30_000);
  // A round trip more, so that a duplicate arriving late would be seen.
  const last = await receiver.request("message.history", { conversation: group.id, limit: 1 });
  assert.equal(last.messages[0]?.text, `m${TOTAL - 1}`);

  for (const [who, seen] of [
    ["receiver", received],
    ["sender", senderSaw],
  ] as const) {
    assert.deepEqual(
      seen.map((e) => e.message.text),
      Array.from({ length: TOTAL }, (_, i) => `m${i}`),
      `the ${who} saw every message once, in order`,
    );
    assert.deepEqual(
      seen.map((e) => e.message.id),
      results.map((m) => m.id),
      `the ${who}'s messages are the ones the sends resolved with`,
    );
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i]!.seq > seen[i - 1]!.seq, `the ${who}'s seqs grow`);
  }
  assert.ok(receiverSessions >= 2, "the receiver reconnected");
  t.diagnostic(`disconnections: ${closes.join("; ")}`);
  assert.ok(!closes.some((c) => / 10(08|13) /.test(c)), "no flood (1008) or slow-reader (1013) closes");

  // The server stored each message once: the history holds TOTAL of them.
  const stored: string[] = [];
  let before: string | undefined;
  for (;;) {
    const page = await receiver.history(group.id, { limit: 100, ...(before ? { before } : {}) });
    stored.push(...page.messages.map((m) => m.text));
    if (!page.more) break;
    before = page.messages[page.messages.length - 1]!.id;
  }
  assert.equal(stored.length, TOTAL, "the history has each message once");
  assert.equal(new Set(stored).size, TOTAL);
});
