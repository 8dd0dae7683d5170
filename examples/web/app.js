// The hubbub demo app: sign up or log in, direct chats (unread counts, last messages, typing,
// read receipts, presence) and the feed (the precomputed timeline, likes, comments, and who
// is writing a comment), in plain JavaScript on the SDK (./sdk, compiled from sdk/js).
//
// It talks to the origin that served it: HTTP auth at /v1/auth, the socket at /v1/ws.
// What it keeps in localStorage: the tokens (so a reload stays logged in), the SDK's state
// per user (the last seq processed, so a reload resumes exactly where it was), the handles
// it has learnt, and the open conversation. Everything shown is rebuilt on load from
// requests (conversation.list, message.history, the timeline) and then kept current by
// events; messages are kept by id, so an event that repeats a loaded message changes nothing.
//
// The protocol names users by id; only `GET /v1/users/{handle}` maps a handle to an id. So
// the demo learns handles as it goes: yours at login, those you look up to chat with or
// follow, and the two of a direct conversation, which the demo titles "alice & bob" (the
// creator first, see `startChat`). Others show as their id.
import { AuthSession, HubbubClient, localStorageAdapter } from "./sdk/index.js";

const origin = location.origin;
const $ = (selector) => document.querySelector(selector);

/** Creates an element with a class and text (never HTML: user text stays text). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------------------------
// State

const TOKENS = "hubbub.demo.tokens";
const NAMES = "hubbub.demo.names";

/** @type {HubbubClient | undefined} */
let client;
/** @type {AuthSession | undefined} */
let currentSession;
/** @type {{ id: string, handle: string } | undefined} */
let me;
/** id → handle, learnt as the app goes (see the top). */
const names = new Map(Object.entries(JSON.parse(localStorage.getItem(NAMES) ?? "{}")));
/** conversation id → { conversation, last, unread } */
const conversations = new Map();
/** conversation id → Map(message id → message) */
const messages = new Map();
/**
 * conversation id → Map(user id → the last message id they read). Receipts come only as
 * events, which a reload does not replay (they were processed), so they are saved too.
 */
const reads = new Map();
const readsKey = () => `hubbub.demo.reads.${me.id}`;
function loadReads() {
  for (const [conversation, users] of Object.entries(JSON.parse(localStorage.getItem(readsKey()) ?? "{}"))) {
    reads.set(conversation, new Map(Object.entries(users)));
  }
}
function saveReads() {
  const plain = Object.fromEntries([...reads].map(([c, users]) => [c, Object.fromEntries(users)]));
  localStorage.setItem(readsKey(), JSON.stringify(plain));
}
/** user id → presence ({ status, last_seen_ts }) */
const presence = new Map();
let openId;
/** post id → post; and the feed's order (newest first, as the timeline gives it) */
const posts = new Map();
let feedOrder = [];
/** post id → { writers, comments } from engagement events; post id → comments seen here */
const engagement = new Map();
const comments = new Map();
const liked = new Set();

/** Remembers a handle; one from a title (`force` false) never replaces a known one. */
function learn(id, handle, force = true) {
  if (!id || !handle || names.get(id) === handle || (!force && names.has(id))) return;
  names.set(id, handle);
  localStorage.setItem(NAMES, JSON.stringify(Object.fromEntries(names)));
}

const handleOf = (id) => names.get(id) ?? id;
const nameOf = (id) => (id === me?.id ? "you" : handleOf(id));

/** Message ids are decimal strings that grow with time. */
const byId = (a, b) => a.id.length - b.id.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

// ---------------------------------------------------------------------------------------
// Logging in

async function boot() {
  const saved = localStorage.getItem(TOKENS);
  if (saved) {
    try {
      await start(new AuthSession(origin, JSON.parse(saved), { onTokens: saveTokens }));
      return;
    } catch (error) {
      // Log in again when the tokens are no good; otherwise say what failed.
      if (!["auth_failed", "unauthorized"].includes(error?.code) && me) {
        failed(error);
        return;
      }
      localStorage.removeItem(TOKENS);
      showAuth(`Log in again (${error.message ?? error}).`);
      return;
    }
  }
  showAuth();
}

function saveTokens(tokens) {
  localStorage.setItem(TOKENS, JSON.stringify(tokens));
}

function showAuth(message = "") {
  $("#auth").hidden = false;
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#me").textContent = "";
  $("#auth-error").textContent = message;
}

$("#auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { handle: $("#handle").value.trim(), password: $("#password").value };
  const how = event.submitter?.value === "login" ? "login" : "signup";
  $("#auth-error").textContent = "";
  let session;
  try {
    session = await AuthSession[how](origin, body, { onTokens: saveTokens });
  } catch (error) {
    $("#auth-error").textContent = error.message ?? String(error);
    return;
  }
  await start(session).catch(failed);
});

/** Something the page could not do, said in the header (and the console). */
function failed(error) {
  console.error(error);
  $("#state").textContent = `error: ${error?.message ?? error}`;
  $("#state").dataset.state = "error";
}

$("#logout").addEventListener("click", () => {
  client?.close();
  client = undefined;
  localStorage.removeItem(TOKENS);
  location.reload();
});

/** Connects as the session's user and loads what the page shows. */
async function start(session) {
  currentSession = session;
  me = session.user;
  learn(me.id, me.handle);
  loadReads();
  client = new HubbubClient({
    url: origin,
    getToken: session.getToken,
    storage: localStorageAdapter(`hubbub.demo.state.${me.id}`),
  });
  listen(client);
  $("#auth").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#me").textContent = `@${me.handle}`;
  // Resolves once every event missed since the saved seq was delivered (to the listeners).
  await client.connect();
  await loadConversations();
  const open = localStorage.getItem(`hubbub.demo.open.${me.id}`);
  if (open && conversations.has(open)) await openConversation(open);
}

// ---------------------------------------------------------------------------------------
// Events

function listen(c) {
  c.on("state", ({ state }) => {
    $("#state").textContent = state;
    $("#state").dataset.state = state;
  });
  c.on("authFailed", () => {
    localStorage.removeItem(TOKENS);
    showAuth("Your session ended: log in again.");
  });
  c.on("reset", () => reloadAll().catch(failed));
  c.on("message.new", ({ message }) => addMessage(message, true));
  // A message written before a reload and sent by this page's client from the saved outbox.
  c.on("outbox", (e) => {
    if (e.kind === "sent") addMessage(e.result, false);
  });
  c.on("message.updated", ({ message }) => addMessage(message, false));
  c.on("conversation.updated", ({ conversation }) => {
    const known = conversations.get(conversation.id);
    conversations.set(conversation.id, { last: null, unread: 0, ...known, conversation });
    nameDirect(conversation);
    watchPeers().catch(failed);
    renderConversations();
  });
  c.on("receipt.read", ({ conversation, user, message }) => {
    if (user === me.id) {
      // Read on another device of mine.
      const entry = conversations.get(conversation);
      if (entry) entry.unread = 0;
      renderConversations();
      return;
    }
    if (!reads.has(conversation)) reads.set(conversation, new Map());
    // Saved before the listener returns: the SDK counts the event processed only then.
    reads.get(conversation).set(user, message);
    saveReads();
    if (conversation === openId) renderMessages();
  });
  c.on("typingChanged", ({ conversation }) => {
    if (conversation === openId) renderTyping();
  });
  c.on("presence", ({ user, status, last_seen_ts }) => {
    presence.set(user, { status, last_seen_ts });
    renderConversations();
    renderPresence();
  });
  c.on("timeline", ({ items }) => setFeed(items));
  c.on("engagement", ({ post, writers, comments: count, top }) => {
    // "N people": the others; the top list says whether I am one of the writers.
    const mine = top.some((t) => t.user === me.id) ? 1 : 0;
    engagement.set(post, { writers: Math.max(0, writers - mine), comments: count });
    const p = posts.get(post);
    if (p) p.comments = count;
    renderPost(post);
  });
  c.on("notification", ({ kind, data }) => {
    const who = nameOf(data?.user ?? data?.comment?.author);
    const what = { like: "liked your post", comment: "commented on your post", follow: "follows you" }[kind];
    if (what) {
      const item = el("li", "", `${who} ${what}`);
      $("#notifications").prepend(item);
    }
    // There is no request listing a post's comments: show those this page hears of.
    const c = data?.comment;
    if (kind === "comment" && c && !(comments.get(c.post) ?? []).some((x) => x.id === c.id)) {
      if (!comments.has(c.post)) comments.set(c.post, []);
      comments.get(c.post).push(c);
      renderPost(c.post);
    }
    if (kind === "like" || kind === "comment") refreshFeedSoon();
  });
}

async function reloadAll() {
  messages.clear();
  await loadConversations();
  if (openId) await openConversation(openId);
  await refreshFeed();
}

// ---------------------------------------------------------------------------------------
// Conversations

async function loadConversations() {
  const list = await client.listConversations();
  for (const c of list) {
    const { last_message, unread, ...conversation } = c;
    conversations.set(c.id, { conversation, last: last_message ?? null, unread: unread ?? 0 });
    nameDirect(conversation);
  }
  renderConversations();
  watchPeers().catch(failed);
}

/** The other member of a direct conversation. */
const peerOf = (conversation) => conversation.members?.find((m) => m !== me.id);

/** Learns the handles of a direct conversation from its title, "creator & other". */
function nameDirect(conversation) {
  if (conversation.kind !== "direct" || !conversation.title) return;
  const [creator, other] = conversation.title.split(" & ");
  const otherId = conversation.members?.find((m) => m !== conversation.created_by);
  if (!creator || !other || !otherId) return;
  learn(conversation.created_by, creator, false);
  learn(otherId, other, false);
}

function titleOf(conversation) {
  if (conversation.kind === "direct") return `@${nameOf(peerOf(conversation))}`;
  return conversation.title ?? conversation.id;
}

const watched = new Set();
async function watchPeers() {
  const peers = [...conversations.values()].map((e) => peerOf(e.conversation)).filter((p) => p && !watched.has(p));
  if (peers.length === 0) return;
  peers.forEach((p) => watched.add(p));
  for (const p of await client.presence.watch(peers)) presence.set(p.user, p);
  renderConversations();
  renderPresence();
}

async function startChat(handle) {
  handle = handle.replace(/^@/, "").trim();
  const user = await lookUp(handle);
  // The title carries both handles so that the other side can name us (see the top).
  const { conversation } = await client.request("conversation.create", {
    kind: "direct",
    members: [user.id],
    title: `${me.handle} & ${user.handle}`,
  });
  const known = conversations.get(conversation.id);
  conversations.set(conversation.id, { last: null, unread: 0, ...known, conversation });
  renderConversations();
  watchPeers().catch(failed);
  await openConversation(conversation.id);
}

async function lookUp(handle) {
  const response = await fetch(`${origin}/v1/users/${encodeURIComponent(handle)}`, {
    headers: { Authorization: `Bearer ${await accessToken()}` },
  });
  if (!response.ok) throw new Error(response.status === 404 ? `no user @${handle}` : `lookup failed (${response.status})`);
  const user = await response.json();
  learn(user.id, user.handle);
  return user;
}

async function openConversation(id) {
  openId = id;
  localStorage.setItem(`hubbub.demo.open.${me.id}`, id);
  $("#composer").hidden = false;
  const entry = conversations.get(id);
  $("#chat-title").textContent = entry ? titleOf(entry.conversation) : id;
  const page = await client.history(id, { limit: 50 });
  const map = messages.get(id) ?? new Map();
  for (const m of page.messages) map.set(m.id, m);
  messages.set(id, map);
  renderConversations();
  renderMessages();
  renderTyping();
  renderPresence();
  markRead();
}

/** A message from an event (`fresh`: a new one, which may count as unread). */
function addMessage(message, fresh) {
  const id = message.conversation;
  const entry = conversations.get(id);
  const map = messages.get(id);
  const seen = map?.has(message.id);
  if (map) map.set(message.id, message);
  if (entry && (!entry.last || byId(entry.last, message) <= 0)) entry.last = message;
  if (entry && fresh && !seen && message.sender !== me.id && id !== openId) entry.unread += 1;
  renderConversations();
  if (id === openId) {
    renderMessages();
    markRead();
  }
}

/** Tells the server the open conversation is read up to its newest message. */
let lastMarked = "";
function markRead() {
  const list = [...(messages.get(openId)?.values() ?? [])].sort(byId);
  const newest = list.filter((m) => m.sender !== me.id).at(-1);
  const entry = conversations.get(openId);
  if (entry) entry.unread = 0;
  renderConversations();
  if (!newest || lastMarked === `${openId}/${newest.id}`) return;
  lastMarked = `${openId}/${newest.id}`;
  client.markRead(openId, newest.id).catch((e) => console.warn("markRead", e));
}

// ---------------------------------------------------------------------------------------
// Rendering the chat

function renderConversations() {
  const ul = $("#conversations");
  ul.replaceChildren();
  const entries = [...conversations.values()].sort((a, b) => (b.last?.ts ?? b.conversation.created_ts) - (a.last?.ts ?? a.conversation.created_ts));
  for (const { conversation, last, unread } of entries) {
    const li = el("li", conversation.id === openId ? "open" : "");
    li.dataset.conversation = conversation.id;
    const head = el("div", "row between");
    const title = el("span", "title", titleOf(conversation));
    const peer = peerOf(conversation);
    if (conversation.kind === "direct" && peer) {
      title.prepend(el("span", `dot ${presence.get(peer)?.status ?? "offline"}`));
    }
    head.append(title);
    if (unread > 0) head.append(el("span", "unread", String(unread)));
    li.append(head, el("div", "last", last ? `${nameOf(last.sender)}: ${last.text}` : "no messages yet"));
    li.addEventListener("click", () => openConversation(conversation.id).catch(failed));
    ul.append(li);
  }
}

function renderMessages() {
  const ol = $("#messages");
  const list = [...(messages.get(openId)?.values() ?? [])].sort(byId);
  // The newest message each other member has read, for the receipts on mine.
  const readUpTo = [...(reads.get(openId)?.values() ?? [])].map((id) => ({ id }));
  ol.replaceChildren();
  for (const m of list) {
    const mine = m.sender === me.id;
    const li = el("li", `message ${mine ? "mine" : "theirs"}`);
    li.dataset.id = m.id;
    li.append(el("div", "text", m.deleted ? "(deleted)" : m.text));
    const meta = el("div", "meta", `${mine ? "you" : nameOf(m.sender)} · ${new Date(m.ts).toLocaleTimeString()}`);
    if (mine) {
      const read = readUpTo.some((r) => byId(m, r) <= 0);
      meta.append(el("span", read ? "receipt read" : "receipt", read ? " · read ✓✓" : " · sent ✓"));
    }
    li.append(meta);
    ol.append(li);
  }
  ol.scrollTop = ol.scrollHeight;
}

function renderTyping() {
  const users = openId ? client.typing.who(openId).filter((u) => u !== me.id) : [];
  $("#typing").textContent =
    users.length === 0 ? "" : `${users.map(nameOf).join(", ")} ${users.length === 1 ? "is" : "are"} typing…`;
}

function renderPresence() {
  const entry = openId && conversations.get(openId);
  const peer = entry && peerOf(entry.conversation);
  const p = peer && presence.get(peer);
  const node = $("#chat-presence");
  if (!p) {
    node.textContent = "";
    return;
  }
  node.dataset.status = p.status;
  node.textContent =
    p.status === "offline" && p.last_seen_ts ? `offline, last seen ${new Date(p.last_seen_ts).toLocaleTimeString()}` : p.status;
}

$("#new-chat").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await startChat($("#new-chat-handle").value);
    $("#new-chat-handle").value = "";
  } catch (error) {
    alertIn("#new-chat-handle", error);
  }
});

$("#message-input").addEventListener("input", () => {
  if (openId) client.typing.start(openId);
});

$("#composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#message-input").value.trim();
  if (!text || !openId) return;
  $("#message-input").value = "";
  // The outbox sends it (again after a lost connection, with the same client_msg_id); the
  // stored message comes back here and as `message.new`, kept once by id.
  client.sendMessage(openId, text).then(
    (m) => addMessage(m, false),
    (error) => alertIn("#message-input", error),
  );
});

// ---------------------------------------------------------------------------------------
// The feed

function setFeed(items) {
  for (const p of items) posts.set(p.id, p);
  feedOrder = items.map((p) => p.id);
  $("#feed-note").textContent = items.length ? "" : "Nothing yet: post, or follow someone.";
  renderFeed();
  client.watchPosts(feedOrder.slice(0, 50)).catch((e) => console.warn("watchPosts", e));
}

async function refreshFeed() {
  const { items } = await client.request("timeline.get", { limit: 50 });
  setFeed(items);
}

let refreshTimer;
function refreshFeedSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refreshFeed().catch((e) => console.warn("timeline", e)), 300);
}

function renderFeed() {
  const ol = $("#feed");
  const drafts = new Map([...ol.querySelectorAll("li.post")].map((li) => [li.dataset.post, li]));
  ol.replaceChildren(...feedOrder.map((id) => keepDraft(drafts.get(id), postNode(id))));
}

function renderPost(id) {
  const old = document.querySelector(`#feed li[data-post="${CSS.escape(id)}"]`);
  if (old) old.replaceWith(keepDraft(old, postNode(id)));
}

/** A post drawn again keeps the comment being written in it, and the focus. */
function keepDraft(old, fresh) {
  const was = old?.querySelector(".comment-input");
  if (was) {
    const input = fresh.querySelector(".comment-input");
    input.value = was.value;
    if (document.activeElement === was) queueMicrotask(() => input.focus());
  }
  return fresh;
}

function postNode(id) {
  const p = posts.get(id);
  const li = el("li", "post");
  li.dataset.post = id;
  li.append(el("div", "author", `@${handleOf(p.author)}`), el("div", "text", p.text));
  const bar = el("div", "row");
  const like = el("button", liked.has(id) ? "like liked small" : "like small secondary", `♥ ${p.likes}`);
  like.type = "button";
  like.addEventListener("click", () => toggleLike(id).catch(failed));
  bar.append(like, el("span", "comments-count muted", `${p.comments} comment${p.comments === 1 ? "" : "s"}`));
  li.append(bar);
  const list = el("ul", "comments");
  for (const c of comments.get(id) ?? []) list.append(el("li", "", `${nameOf(c.author)}: ${c.text}`));
  li.append(list);
  const writers = engagement.get(id)?.writers ?? 0;
  li.append(
    el("div", "writers", writers === 0 ? "" : `${writers} ${writers === 1 ? "person is" : "people are"} writing a comment`),
  );
  const form = el("form", "row comment");
  const input = el("input", "comment-input");
  input.placeholder = "Write a comment";
  input.required = true;
  input.maxLength = 4000;
  input.addEventListener("input", () => commentTyping(id, input.value));
  const send = el("button", "small", "Comment");
  send.type = "submit";
  form.append(input, send);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    comment(id, input.value.trim()).catch(failed);
  });
  li.append(form);
  return li;
}

async function toggleLike(id) {
  const type = liked.has(id) ? "post.unlike" : "post.like";
  const { likes } = await client.request(type, { post: id });
  if (type === "post.like") liked.add(id);
  else liked.delete(id);
  posts.get(id).likes = likes;
  renderPost(id);
}

async function comment(id, text) {
  if (!text) return;
  const { comment: c } = await client.request("comment.create", { post: id, text });
  const input = document.querySelector(`#feed li[data-post="${CSS.escape(id)}"] .comment-input`);
  if (input) input.value = "";
  if (!comments.has(id)) comments.set(id, []);
  comments.get(id).push(c);
  posts.get(id).comments += 1;
  renderPost(id);
}

/** `comment.typing` with the words so far, at most once a second per post. */
const typingSent = new Map();
function commentTyping(post, text) {
  const now = Date.now();
  if (now - (typingSent.get(post) ?? 0) < 1000) return;
  typingSent.set(post, now);
  const words = text.trim().split(/\s+/).filter(Boolean).length;
  client.signal("comment.typing", { post, words });
}

$("#new-post").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("#post-input").value.trim();
  if (!text) return;
  try {
    const { post } = await client.request("post.create", { text });
    $("#post-input").value = "";
    posts.set(post.id, post);
    feedOrder = [post.id, ...feedOrder.filter((p) => p !== post.id)];
    renderFeed();
    client.watchPosts([post.id]).catch(() => {});
  } catch (error) {
    alertIn("#post-input", error);
  }
});

$("#follow").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const user = await lookUp($("#follow-handle").value.replace(/^@/, "").trim());
    await client.request("follow", { user: user.id });
    $("#follow-handle").value = "";
    $("#feed-note").textContent = `Following @${user.handle}.`;
    // The follow triggers a precompute of the timeline; it shows their posts once it ran.
    refreshFeedSoon();
  } catch (error) {
    alertIn("#follow-handle", error);
  }
});

$("#refresh-feed").addEventListener("click", () => refreshFeed().catch(failed));

// ---------------------------------------------------------------------------------------
// Small things

/** The access token for plain HTTP calls (the session refreshes it when it is near expiry). */
async function accessToken() {
  const result = await currentSession.getToken({ reason: "connect", previous: undefined });
  return typeof result === "string" ? result : result.token;
}

function alertIn(selector, error) {
  const input = $(selector);
  input.setCustomValidity(error.message ?? String(error));
  input.reportValidity();
  setTimeout(() => input.setCustomValidity(""), 3000);
}

void boot();
