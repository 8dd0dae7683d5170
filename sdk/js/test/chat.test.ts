/**
 * Two clients chat against the real server: a group and a direct conversation, history,
 * receipts, typing and presence, acks coalesced, and a "page reload" that resumes from the
 * saved seq with exactly the events it missed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { memoryStorage, type ConversationUpdatedFrame, type MessageNewFrame, type ReceiptReadFrame } from "../src/index.js";
import { Spy, TestServer, waitFor } from "./harness.js";

test("two clients chat in a group and a direct conversation", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const alice = await server.signup("alice");
  const bob = await server.signup("bob");
  const spyA = new Spy();
  const a = server.client(t, { getToken: alice.getToken, WebSocket: spyA.WebSocket });
  const b = server.client(t, { getToken: bob.getToken });
  const aSeen: MessageNewFrame[] = [];
  const bSeen: MessageNewFrame[] = [];
  const bConversations: ConversationUpdatedFrame[] = [];
  const aReceipts: ReceiptReadFrame[] = [];
  a.on("message.new", (e) => void aSeen.push(e));
  b.on("message.new", (e) => void bSeen.push(e));
  b.on("conversation.updated", (e) => void bConversations.push(e));
  a.on("receipt.read", (e) => void aReceipts.push(e));
  await Promise.all([a.connect(), b.connect()]);
  assert.equal(a.user?.id, alice.user.id);
  assert.equal(b.user?.id, bob.user.id);
  assert.equal(a.state, "open");

  // A group.
  const group = await a.createConversation({ kind: "group", members: [bob.user.id], title: "team" });
  assert.deepEqual(new Set(group.members), new Set([alice.user.id, bob.user.id]));
  await waitFor(() => bConversations.some((e) => e.conversation.id === group.id), "bob to hear of the group");
  const m1 = await a.sendMessage(group.id, "hello bob");
  const m2 = await b.sendMessage(group.id, "hello alice");
  assert.equal(m1.text, "hello bob");
  assert.equal(m2.sender, bob.user.id);
  await waitFor(() => aSeen.length >= 2 && bSeen.length >= 2, "both messages on both sides");
  for (const seen of [aSeen, bSeen]) {
    assert.deepEqual(
      seen.map((e) => e.message.text),
      ["hello bob", "hello alice"],
    );
    assert.deepEqual(
      seen.map((e) => e.message.id),
      [m1.id, m2.id],
    );
  }

  // A direct conversation: unique per pair, from either side.
  const direct = await b.directConversation(alice.user.id);
  assert.equal(direct.kind, "direct");
  assert.equal((await a.directConversation(bob.user.id)).id, direct.id);
  const psst = await a.sendMessage(direct.id, "psst");
  await waitFor(() => bSeen.some((e) => e.message.id === psst.id), "bob to get the direct message");
  assert.equal(bSeen.filter((e) => e.message.id === psst.id).length, 1);

  // History, newest first; a receipt goes back to alice.
  const history = await b.history(group.id);
  assert.deepEqual(
    history.messages.map((m) => m.text),
    ["hello alice", "hello bob"],
  );
  assert.equal(history.more, false);
  await b.markRead(group.id, m1.id);
  await waitFor(() => aReceipts.some((r) => r.user === bob.user.id && r.message === m1.id), "alice to get bob's receipt");
  const listed = await a.listConversations();
  assert.deepEqual(new Set(listed.map((c) => c.id)), new Set([group.id, direct.id]));

  // Every durable event reaches the app once, in seq order, and acks are coalesced.
  const bSeqs: number[] = [];
  b.on("event", (e) => {
    if ("seq" in e) bSeqs.push(e.seq);
  });
  const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => a.sendMessage(group.id, `burst ${i}`)));
  await waitFor(() => bSeen.filter((e) => e.message.text.startsWith("burst")).length === 20, "the burst at bob");
  assert.deepEqual(
    bSeen.filter((e) => e.message.text.startsWith("burst")).map((e) => e.message.id),
    burst.map((m) => m.id),
  );
  for (let i = 1; i < bSeqs.length; i++) assert.equal(bSeqs[i], bSeqs[i - 1]! + 1, "bob's seqs have no gap");
  await waitFor(() => spyA.sentOf("ack").some((f) => f.seq === a.lastSeq), "alice's ack of her last event");
  const acks = spyA.sentOf("ack").filter((f) => f.id === undefined);
  assert.ok(acks.length < aSeen.length, `acks are coalesced (${acks.length} acks for ${aSeen.length} messages)`);
  for (let i = 1; i < acks.length; i++) assert.ok((acks[i]!.seq as number) > (acks[i - 1]!.seq as number), "acks only grow");
});

test("typing and presence helpers", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const a = server.client(t, { token: server.appToken("app_alice", 3600, "alice") });
  const b = server.client(t, { token: server.appToken("app_bob", 3600, "bob") });
  const typing: { conversation: string; users: string[] }[] = [];
  b.on("typingChanged", (e) => void typing.push(e));
  const presence: { user: string; status: string }[] = [];
  b.on("presence", (e) => void presence.push(e));
  await Promise.all([a.connect(), b.connect()]);
  const group = await a.createConversation({ kind: "group", members: ["app_bob"] });

  // Keystrokes are throttled into one start; stop is sent at once.
  for (let i = 0; i < 10; i++) a.typing.start(group.id);
  assert.ok(a.typing.isTyping(group.id));
  await waitFor(() => b.typing.who(group.id).includes("app_alice"), "bob to see alice typing");
  a.typing.stop(group.id);
  await waitFor(() => b.typing.who(group.id).length === 0, "bob to see alice stop");
  assert.deepEqual(typing, [
    { conversation: group.id, users: ["app_alice"] },
    { conversation: group.id, users: [] },
  ]);
  // Sending a message stops typing.
  a.typing.start(group.id);
  await a.sendMessage(group.id, "done typing");
  assert.equal(a.typing.isTyping(group.id), false);

  // Presence: watched now, and kept current by events.
  const [p] = await b.presence.watch(["app_alice"]);
  assert.equal(p?.status, "online");
  await a.presence.set("away");
  await waitFor(() => b.presence.get("app_alice")?.status === "away", "bob to see alice away");
  a.close();
  await waitFor(() => b.presence.get("app_alice")?.status === "offline", "bob to see alice offline");
  assert.deepEqual(
    presence.map((e) => e.status),
    ["away", "offline"],
  );
});

test("a reload resumes from the saved seq with exactly the missed events", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const storage = memoryStorage();
  const a = server.client(t, { token: server.appToken("app_alice") });
  await a.connect();
  const group = await a.createConversation({ kind: "group", members: [] });
  // The "page" of bob: sees two messages, then closes.
  const tokenB = server.appToken("app_bob");
  const b1 = server.client(t, { token: tokenB, storage });
  const first: string[] = [];
  b1.on("message.new", (e) => void first.push(e.message.text));
  await b1.connect();
  // app_bob exists only from its first authenticated request: add it now.
  await a.request("conversation.add", { conversation: group.id, user: "app_bob" });
  await a.sendMessage(group.id, "one");
  await a.sendMessage(group.id, "two");
  await waitFor(() => first.length === 2, "the first page to get two messages");
  await waitFor(() => storage.state?.lastSeq === b1.lastSeq, "the state to be saved");
  b1.close();
  const savedSeq = storage.state!.lastSeq;

  // While no page is open.
  await a.sendMessage(group.id, "three");
  await a.sendMessage(group.id, "four");

  // The "reloaded page": a new client over the same storage.
  const b2 = server.client(t, { token: tokenB, storage });
  const second: string[] = [];
  const seqs: number[] = [];
  b2.on("message.new", (e) => {
    second.push(e.message.text);
    seqs.push(e.seq);
  });
  await b2.connect();
  assert.deepEqual(second, ["three", "four"]);
  assert.ok(seqs.every((s) => s > savedSeq));
  await a.sendMessage(group.id, "five");
  await waitFor(() => second.length === 3, "the live message after the resume");
  assert.deepEqual(second, ["three", "four", "five"]);
});

test("channel messages arrive once by offset, and a reload resumes them with channel.sync", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const owner = server.client(t, { token: server.appToken("app_chowner") });
  await owner.connect();
  const channel = await owner.createConversation({ kind: "channel", members: [], title: "news", public: true });
  const storage = memoryStorage();
  const spy = new Spy();
  const first = server.client(t, { token: server.appToken("app_chsub"), storage, WebSocket: spy.WebSocket });
  const got1: [number, string][] = [];
  first.on("channel.message", (e) => void got1.push([e.offset, e.message.text]));
  await first.connect();
  await first.subscribeChannel(channel.id);
  await owner.sendMessage(channel.id, "one");
  await owner.sendMessage(channel.id, "two");
  await waitFor(() => got1.length === 2, "the first page to get two channel messages");
  assert.deepEqual(got1, [[1, "one"], [2, "two"]]);
  await waitFor(() => storage.state?.channels?.[channel.id] === 2, "the channel offset to be saved");
  first.close();

  // While no page is open.
  await owner.sendMessage(channel.id, "three");
  await owner.sendMessage(channel.id, "four");

  // The "reloaded page": a new client over the same storage resumes from offset 2.
  const spy2 = new Spy();
  const second = server.client(t, { token: server.appToken("app_chsub"), storage, WebSocket: spy2.WebSocket });
  const got2: [number, string][] = [];
  second.on("channel.message", (e) => void got2.push([e.offset, e.message.text]));
  await second.connect();
  await waitFor(() => got2.length === 2, "the missed channel messages");
  assert.deepEqual(
    spy2.sentOf("channel.sync").map((f) => [f.conversation, f.after_offset]),
    [[channel.id, 2]],
  );
  await owner.sendMessage(channel.id, "five");
  await waitFor(() => got2.length === 3, "the live channel message after the resume");
  assert.deepEqual(got2, [[3, "three"], [4, "four"], [5, "five"]], "each exactly once, in order");
});

test("a saved seq beyond the server's is reported as a reset, and the session goes on", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const storage = memoryStorage({ v: 1, user: "app_far", lastSeq: 1000, channels: {}, outbox: [] });
  const client = server.client(t, { token: server.appToken("app_far"), storage });
  const resets: { reason: string; lastSeq: number }[] = [];
  client.on("reset", (e) => void resets.push(e));
  const seen: number[] = [];
  client.on("conversation.updated", (e) => void seen.push(e.seq));
  await client.connect();
  assert.deepEqual(resets, [{ reason: "server_behind", lastSeq: 0 }]);
  assert.equal(client.lastSeq, 0);
  await client.createConversation({ kind: "group", members: [] });
  await waitFor(() => seen.length === 1, "the first event after the reset");
  assert.deepEqual(seen, [1]);
});
