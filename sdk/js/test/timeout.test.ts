/**
 * Requests time out: the server is frozen with SIGSTOP (its socket stays open, nothing
 * answers), or there is no connection at all. A frozen server is also found out by the
 * heartbeat, which drops the dead connection and reconnects once the server answers again.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { HubbubError, CLIENT_CLOSE } from "../src/index.js";
import { Spy, TestServer, waitFor } from "./harness.js";

const isCode = (code: string) => (error: unknown) => error instanceof HubbubError && error.code === code;

test("a request times out when the server does not answer", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const spy = new Spy();
  const client = server.client(t, { token: server.appToken("app_alice"), WebSocket: spy.WebSocket, heartbeatMs: 0 });
  await client.connect();
  const conversation = await client.createConversation({ kind: "group", members: [] });

  await server.pause();
  t.after(() => server.resume());
  await assert.rejects(client.request("conversation.get", { conversation: conversation.id }, { timeoutMs: 300 }), (e) => {
    assert.ok(isCode("timeout")(e), String(e));
    assert.ok((e as HubbubError).outcomeUnknown);
    return true;
  });
  assert.equal(client.state, "open", "a timeout does not end the session");
  assert.ok(spy.sentOf("conversation.get").length === 1, "the request was sent");

  // The server comes back: its late reply is dropped, and the session goes on.
  server.resume();
  const again = await client.request("conversation.get", { conversation: conversation.id });
  assert.equal(again.conversation.id, conversation.id);
  assert.equal(spy.urls.length, 1);
});

test("a request times out while there is no connection", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const client = server.client(t, { token: server.appToken("app_bob"), reconnect: { initialDelayMs: 100, maxDelayMs: 300 } });
  await client.connect();
  await server.kill("SIGKILL");
  await waitFor(() => client.state !== "open", "the client to see the server gone");
  await assert.rejects(client.request("conversation.list", {}, { timeoutMs: 300 }), isCode("timeout"));
  // Requests made while disconnected wait for the next session.
  const waiting = client.request("conversation.list", {}, { timeoutMs: 20_000 });
  await server.restart();
  const reply = await waiting;
  assert.deepEqual(reply.conversations, []);
});

test("the heartbeat finds a dead connection and the client reconnects", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const client = server.client(t, {
    token: server.appToken("app_carol"),
    heartbeatMs: 300,
    reconnect: { initialDelayMs: 100, maxDelayMs: 300 },
    connectTimeoutMs: 2_000,
  });
  const closes: number[] = [];
  client.on("disconnected", (e) => void closes.push(e.code));
  await client.connect();
  const first = client.session;
  await server.pause();
  await waitFor(() => closes.includes(CLIENT_CLOSE.heartbeatTimeout), "the heartbeat to give up");
  server.resume();
  await waitFor(() => client.state === "open" && client.session !== first, "a new session");
  const reply = await client.request("conversation.list");
  assert.deepEqual(reply.conversations, []);
});

test("a read whose reply is lost goes again on the next session; a create does not", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const spy = new Spy();
  const client = server.client(t, { token: server.appToken("app_dave"), WebSocket: spy.WebSocket, reconnect: { initialDelayMs: 50 } });
  await client.connect();
  const cutReplyTo = (type: string) => {
    let done = false;
    spy.filter = (frame, socket) => {
      const request = spy.sentOf(type)[0];
      if (!done && request && frame.id === request.id) {
        done = true;
        socket.cut();
        return false;
      }
      return true;
    };
  };

  cutReplyTo("conversation.list");
  const reply = await client.request("conversation.list");
  assert.deepEqual(reply.conversations, []);
  assert.equal(spy.sentOf("conversation.list").length, 2, "sent again after the reconnect");
  assert.equal(spy.urls.length, 2);

  // A create is not repeated behind the app's back: the outcome is unknown.
  cutReplyTo("conversation.create");
  await assert.rejects(client.createConversation({ kind: "group", members: [] }), isCode("disconnected"));
  assert.equal(spy.sentOf("conversation.create").length, 1);
});
