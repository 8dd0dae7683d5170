/**
 * Token lifetime on a live session (PROTOCOL.md 1.1): with access tokens of a few seconds,
 * the client refreshes over HTTP and hands each new token to the session with `auth`, so the
 * connection outlives many tokens; without a way to refresh, the server closes it with 4001;
 * and after 4000/4001 the client never connects with the same token again.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { jwtExpiry, type TokenReason } from "../src/index.js";
import { Spy, TestServer, waitFor } from "./harness.js";

// Tokens live 4 s; a session may outlive its token by 1 s without `auth`.
const SHORT_TOKENS = { HUBBUB_AUTH__ACCESS_TTL_S: "4", HUBBUB_AUTH__EXPIRY_GRACE_S: "1" };

test("a token expires and is refreshed without losing the connection", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t, SHORT_TOKENS);
  const alice = await server.signup("alice");
  const spy = new Spy();
  const client = server.client(t, { getToken: alice.getToken, WebSocket: spy.WebSocket });
  const refreshed: number[] = [];
  const closes: number[] = [];
  client.on("tokenRefreshed", (e) => void refreshed.push(e.expiresAt));
  client.on("disconnected", (e) => void closes.push(e.code));
  await client.connect();
  const session = client.session;
  const firstToken = spy.tokens[0]!;
  const firstExpiry = jwtExpiry(firstToken)!;
  assert.ok(firstExpiry - Date.now() < 5_000, "the server gives 4-second tokens");

  // Three refreshes, and past the first token's expiry plus the grace (plus a margin): a
  // session still on it would have been closed with 4001 by now.
  await waitFor(() => refreshed.length >= 3 && Date.now() > firstExpiry + 1_000 + 1_500, "three refreshes", 30_000);
  assert.deepEqual(closes, [], "the connection was never lost");
  assert.equal(client.session, session, "the same session throughout");
  assert.equal(spy.urls.length, 1, "one connection only");
  const auths = spy.sentOf("auth");
  assert.ok(auths.length >= 3);
  assert.equal(new Set(auths.map((f) => f.access_token)).size, auths.length, "each auth frame carries a new token");
  for (let i = 1; i < refreshed.length; i++) assert.ok(refreshed[i]! >= refreshed[i - 1]!, "expiries move forward");
  // The session works on the latest token.
  const conversation = await client.createConversation({ kind: "group", members: [] });
  const message = await client.sendMessage(conversation.id, "still here");
  assert.equal(message.text, "still here");
  assert.equal(client.session, session);
});

test("without a refresh the server closes with 4001, and that token is never used again", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t, SHORT_TOKENS);
  const spy = new Spy();
  // A static app token of 3 s and no getToken: nothing can refresh it.
  const client = server.client(t, { token: server.appToken("app_static", 3), WebSocket: spy.WebSocket });
  const closes: number[] = [];
  client.on("disconnected", (e) => void closes.push(e.code));
  const failed = client.next("authFailed");
  await client.connect();
  const { error } = await failed;
  assert.deepEqual(closes, [4001]);
  assert.equal(error.code, "auth_failed");
  assert.equal(client.state, "closed");
  assert.equal(spy.urls.length, 1, "no reconnect with the refused token");
});

test("after 4001 the client asks for a new token and resumes", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const spy = new Spy();
  const reasons: TokenReason[] = [];
  const client = server.client(t, {
    WebSocket: spy.WebSocket,
    reconnect: { initialDelayMs: 100 },
    getToken: ({ reason }) => {
      reasons.push(reason);
      return server.appToken("app_revoked");
    },
  });
  const messages: string[] = [];
  client.on("message.new", (e) => void messages.push(e.message.text));
  const sessions: string[] = [];
  client.on("connected", (e) => void sessions.push(e.session));
  const closes: number[] = [];
  client.on("disconnected", (e) => void closes.push(e.code));
  await client.connect();
  const conversation = await client.createConversation({ kind: "group", members: [] });
  await client.sendMessage(conversation.id, "before");

  // "Log out everywhere": every session of the user is closed with 4001 at once.
  const response = await fetch(`${server.url}/v1/auth/revoke`, {
    method: "POST",
    headers: { authorization: `Bearer ${spy.tokens[0]}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(response.status, 200);
  await waitFor(() => sessions.length === 2, "a new session");
  assert.deepEqual(closes, [4001]);
  assert.deepEqual(reasons, ["connect", "rejected"]);
  assert.notEqual(spy.tokens[1], spy.tokens[0], "the new session has a new token");
  assert.ok(!spy.tokens.slice(1).includes(spy.tokens[0]!), "the refused token is never used again");
  await client.sendMessage(conversation.id, "after");
  await waitFor(() => messages.length === 2, "both messages");
  assert.deepEqual(messages, ["before", "after"]);
});

test("a getToken that gives back the refused token fails the client instead of reusing it", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t);
  const spy = new Spy();
  const token = server.appToken("app_stubborn");
  const client = server.client(t, { WebSocket: spy.WebSocket, getToken: () => token });
  await client.connect();
  const failed = client.next("authFailed");
  const response = await fetch(`${server.url}/v1/auth/revoke`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(response.status, 200);
  const { error } = await failed;
  assert.equal(error.code, "auth_failed");
  assert.equal(client.state, "closed");
  assert.equal(spy.urls.length, 1);
});
