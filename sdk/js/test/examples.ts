/**
 * The README's examples, type-checked with the tests (never run): if the API changes, the
 * build fails here before the README lies.
 */
import WebSocket from "ws";
import {
  AuthSession,
  HubbubClient,
  localStorageAdapter,
  memoryStorage,
  type MessageNewFrame,
  type WebSocketConstructor,
} from "../src/index.js";

declare function render(message: MessageNewFrame["message"]): void;
declare function showTyping(conversation: string, users: string[]): void;
declare const input: { addEventListener(type: string, listener: () => void): void };
declare const bobId: string;
declare const carolId: string;

export async function examples(): Promise<void> {
  const auth = await AuthSession.login("https://chat.example.com", { handle: "alice", password: "..." }, {
    onTokens: (tokens) => void JSON.stringify(tokens),
  });
  const restored = new AuthSession("https://chat.example.com", auth.toJSON());
  void restored;

  const client = new HubbubClient({
    url: "https://chat.example.com",
    getToken: auth.getToken,
    storage: localStorageAdapter("hubbub.state.alice", memoryLocalStorage()),
    WebSocket: WebSocket as unknown as WebSocketConstructor,
  });
  client.on("message.new", (event) => render(event.message));
  await client.connect();

  const appClient = new HubbubClient({
    url: "https://chat.example.com",
    getToken: async ({ reason }) => `token for ${reason}`,
    storage: memoryStorage(),
  });
  void appClient;

  const group = await client.createConversation({ kind: "group", members: [bobId], title: "team" });
  const direct = await client.directConversation(bobId);
  const message = await client.sendMessage(group.id, "hello");
  const page = await client.history(group.id, { limit: 50 });
  await client.markRead(group.id, message.id);
  const { conversations } = await client.request("conversation.list");
  const { members, more } = await client.request("conversation.members", { conversation: group.id }, { timeoutMs: 5000 });
  await client.request("message.edit", { conversation: group.id, message: message.id, text: "hi" });
  void [direct, page.more, conversations, members, more];

  client.on("conversation.updated", (e) => void e.conversation.id);
  client.on("receipt.read", (e) => void e.message);
  client.on("notification", (e) => void e.kind);
  client.on("typing", (e) => void e.state);
  client.on("presence", (e) => void e.status);
  client.on("channel.message", (e) => void e.offset);
  client.on("event", (frame) => void frame.type);
  const off = client.on("message.new", (e) => void e.seq);
  off();
  await client.next("synced");
  client.on("disconnected", (e) => void [e.code, e.wasOpen, e.willReconnect, e.delayMs]);
  client.on("outbox", (e) => void (e.kind === "sent" ? e.result.id : e.error.code));

  input.addEventListener("input", () => client.typing.start(group.id));
  client.typing.stop(group.id);
  client.on("typingChanged", ({ conversation, users }) => showTyping(conversation, users));
  client.typing.who(group.id);
  const now = await client.presence.watch([bobId, carolId]);
  void now[0]?.last_seen_ts;
  client.presence.get(bobId);
  await client.presence.set("away");
  await client.presence.unwatch([carolId]);
  await client.subscribeChannel("c1");
  client.close();
}

function memoryLocalStorage() {
  const map = new Map<string, string>();
  return {
    getItem: (k: string) => map.get(k) ?? null,
    setItem: (k: string, v: string) => void map.set(k, v),
    removeItem: (k: string) => void map.delete(k),
  };
}
