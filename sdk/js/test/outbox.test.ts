/**
 * The outbox: `message.send` while offline waits and is flushed on reconnect; a send whose
 * reply is lost is retried with the same `client_msg_id` and delivered once; unsent messages
 * survive a reload through the storage; a refused message fails without being retried.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { HubbubError, memoryStorage, type HubbubClient, type Message, type MessageNewFrame } from "../src/index.js";
import { Spy, TestServer, waitFor } from "./harness.js";

const fast = { reconnect: { initialDelayMs: 100, maxDelayMs: 300 } };

async function historyTexts(client: HubbubClient, conversation: string): Promise<string[]> {
  const page = await client.history(conversation, { limit: 100 });
  return page.messages.map((m) => m.text).reverse();
}

test("message.send while offline is queued and flushed on reconnect, once each", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const spy = new Spy();
  const alice = server.client(t, { token: server.appToken("app_alice"), WebSocket: spy.WebSocket, ...fast });
  const bob = server.client(t, { token: server.appToken("app_bob"), ...fast });
  const bobSaw: MessageNewFrame[] = [];
  bob.on("message.new", (e) => void bobSaw.push(e));
  await Promise.all([alice.connect(), bob.connect()]);
  const group = await alice.createConversation({ kind: "group", members: ["app_bob"] });

  await server.kill("SIGKILL");
  await waitFor(() => alice.state !== "open", "alice to see the server gone");
  const sends = ["one", "two", "three", "four", "five"].map((text) => alice.sendMessage(group.id, text));
  assert.equal(alice.pendingMessages.length, 5);
  assert.ok(alice.pendingMessages.every((m) => !m.sending), "nothing can be sent while offline");
  const sentBefore = spy.sentOf("message.send").length;
  assert.equal(sentBefore, 0);

  await server.restart();
  const results = await Promise.all(sends);
  assert.deepEqual(
    results.map((m) => m.text),
    ["one", "two", "three", "four", "five"],
  );
  assert.equal(alice.pendingMessages.length, 0);
  await waitFor(() => bobSaw.length >= 5, "bob to get the five messages");
  assert.deepEqual(
    bobSaw.map((e) => e.message.id),
    results.map((m) => m.id),
  );
  assert.deepEqual(await historyTexts(bob, group.id), ["one", "two", "three", "four", "five"]);
  // Each client_msg_id went out as many times as it was attempted, and is unique per message.
  const ids = spy.sentOf("message.send").map((f) => f.client_msg_id);
  assert.equal(new Set(ids).size, 5);
  assert.deepEqual(new Set(ids), new Set(results.map((m) => m.client_msg_id)));
});

test("a send whose reply is lost is retried with the same client_msg_id and delivered once", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const spy = new Spy();
  const alice = server.client(t, { token: server.appToken("app_alice"), WebSocket: spy.WebSocket, ...fast });
  const bob = server.client(t, { token: server.appToken("app_bob"), ...fast });
  const bobSaw: MessageNewFrame[] = [];
  bob.on("message.new", (e) => void bobSaw.push(e));
  await Promise.all([alice.connect(), bob.connect()]);
  const group = await alice.createConversation({ kind: "group", members: ["app_bob"] });

  // The server stores the first attempt and answers it, but the answer is lost with the
  // connection (the network drops it before the client reads it).
  let dropped: Record<string, unknown> | undefined;
  spy.filter = (frame, socket) => {
    const first = spy.sentOf("message.send")[0];
    if (!dropped && first && frame.type === "ok" && frame.id === first.id) {
      dropped = frame;
      socket.cut();
      return false;
    }
    return true;
  };
  const message: Message = await alice.sendMessage(group.id, "exactly once");
  assert.ok(dropped, "the first attempt's ok was dropped");
  const firstId = ((dropped.data as { message: Message }).message as Message).id;
  assert.equal(message.id, firstId, "the retry returned the message the first attempt stored");
  const attempts = spy.sentOf("message.send");
  assert.equal(attempts.length, 2);
  assert.equal(attempts[0]!.client_msg_id, attempts[1]!.client_msg_id, "the retry has the same client_msg_id");
  assert.equal(spy.urls.length, 2, "the retry went on a new connection");

  await alice.sendMessage(group.id, "next");
  await waitFor(() => bobSaw.length >= 2, "bob to get both messages");
  assert.deepEqual(
    bobSaw.map((e) => e.message.text),
    ["exactly once", "next"],
  );
  assert.deepEqual(await historyTexts(bob, group.id), ["exactly once", "next"]);
});

test("unsent messages survive a reload through the storage", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const storage = memoryStorage();
  const token = server.appToken("app_alice");
  const alice1 = server.client(t, { token, storage, ...fast });
  const bob = server.client(t, { token: server.appToken("app_bob"), ...fast });
  const bobSaw: string[] = [];
  bob.on("message.new", (e) => void bobSaw.push(e.message.text));
  await Promise.all([alice1.connect(), bob.connect()]);
  const group = await alice1.createConversation({ kind: "group", members: ["app_bob"] });

  await server.kill("SIGKILL");
  await waitFor(() => alice1.state !== "open", "alice to see the server gone");
  const lost = [alice1.sendMessage(group.id, "written offline 1"), alice1.sendMessage(group.id, "written offline 2")];
  alice1.close(); // the page is closed
  for (const p of lost) await assert.rejects(p, (e) => e instanceof HubbubError && e.code === "closed");
  assert.deepEqual(
    storage.state?.outbox.map((r) => r.fields.text),
    ["written offline 1", "written offline 2"],
  );

  await server.restart();
  const alice2 = server.client(t, { token, storage, ...fast });
  const sent: string[] = [];
  alice2.on("outbox", (e) => {
    if (e.kind === "sent") sent.push(e.result.text);
  });
  await alice2.connect();
  await waitFor(() => sent.length === 2, "the reloaded page to send both");
  assert.deepEqual(sent, ["written offline 1", "written offline 2"]);
  await waitFor(() => bobSaw.length === 2, "bob to get them");
  assert.deepEqual(bobSaw, ["written offline 1", "written offline 2"]);
  await waitFor(() => storage.state?.outbox.length === 0, "the saved outbox to empty");
});

test("a refused message fails at once and leaves the outbox", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const alice = server.client(t, { token: server.appToken("app_alice") });
  const bob = server.client(t, { token: server.appToken("app_bob") });
  await Promise.all([alice.connect(), bob.connect()]);
  const group = await alice.createConversation({ kind: "group", members: [] });
  const failures: string[] = [];
  bob.on("outbox", (e) => {
    if (e.kind === "failed") failures.push(e.error.code);
  });
  await assert.rejects(bob.sendMessage(group.id, "not a member"), (e) => e instanceof HubbubError && e.code === "forbidden");
  assert.deepEqual(failures, ["forbidden"]);
  assert.equal(bob.pendingMessages.length, 0);
  await assert.rejects(bob.sendMessage(group.id, "x".repeat(4001)), (e) => e instanceof HubbubError && e.code === "too_large");
});
