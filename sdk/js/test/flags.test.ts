/**
 * Feature flags (PROTOCOL.md 1.1): the client knows its flags from `hello`, and a runtime
 * config change pushes the new map (`flags`), changed through the real admin API.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { TestServer, waitFor } from "./harness.js";

const BOOTSTRAP = "sdk-tests-bootstrap-key-0123456789abcdef";

test("flags come with hello and follow a runtime config change", { timeout: 60_000 }, async (t) => {
  const server = await TestServer.start(t, { HUBBUB_API__BOOTSTRAP_KEY: BOOTSTRAP });
  const alice = await server.signup("alice");
  const a = server.client(t, { getToken: alice.getToken });
  const pushed: Record<string, boolean>[] = [];
  a.on("flags", (e) => void pushed.push(e.flags));
  await a.connect();
  assert.deepEqual(a.flags, {});
  const admin = (method: string, body?: unknown) =>
    fetch(`${server.url}/v1/admin/config`, {
      method,
      headers: { Authorization: `Bearer ${BOOTSTRAP}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const now = (await (await admin("GET")).json()) as { version: number };
  const put = await admin("PUT", {
    version: now.version,
    config: { flags: { composer: { enabled: true, users: [alice.user.id] }, other: { enabled: false } } },
  });
  assert.equal(put.status, 200);
  await waitFor(() => pushed.length === 1, "the flags push");
  assert.deepEqual(pushed[0], { composer: true, other: false });
  assert.deepEqual(a.flags, { composer: true, other: false });
});
