/**
 * `HubbubClient`: one user's live session with a hubbub server, kept alive across network
 * failures and server restarts. It owns the connection's life (token, reconnects with
 * back-off, heartbeat, token refresh on the live session), resumes with `sync` and
 * `channel.sync` on every new session, hands events to the app exactly once and in order
 * (inbox.ts), acknowledges them (coalesced), persists what a reload needs (storage.ts), and
 * sends requests as promises with timeouts, `message.send` through the outbox (outbox.ts).
 */
import { backoffDelay, FrameBudget } from "./backoff.js";
import { ChannelTracker } from "./channels.js";
import { Connection } from "./connection.js";
import { Emitter } from "./emitter.js";
import { clearTimer, defaultWebSocket, now, onOnline, randomId, reportError, setTimer, sleep, } from "./env.js";
import { HubbubError } from "./errors.js";
import { wsEndpoint } from "./http.js";
import { SeqInbox } from "./inbox.js";
import { Outbox } from "./outbox.js";
import { PresenceHelper } from "./presence.js";
import { RequestTable } from "./requests.js";
import { CLIENT_CLOSE, } from "./options.js";
import { parseState, Saver } from "./storage.js";
import { TokenKeeper } from "./token.js";
import { Typing } from "./typing.js";
/**
 * Requests whose repetition changes nothing (reads, and writes that are idempotent by the
 * protocol): `request` sends them again on the next session when the connection is lost
 * before their reply. Other requests reject with `disconnected` (the outcome is unknown).
 */
const REPEATABLE = new Set([
    "conversation.add",
    "conversation.remove",
    "conversation.list",
    "conversation.get",
    "conversation.members",
    "message.history",
    "message.search",
    "message.read",
    "block.add",
    "block.remove",
    "block.list",
    "presence.set",
    "presence.watch",
    "presence.unwatch",
    "post.like",
    "post.unlike",
    "follow",
    "unfollow",
    "timeline.get",
    "post.watch",
    "post.unwatch",
    "channel.subscribe",
    "channel.unsubscribe",
]);
export class HubbubClient extends Emitter {
    typing;
    presence;
    options;
    WebSocketImpl;
    tokens;
    outbox;
    requests = new RequestTable();
    channels;
    saver;
    budget;
    stateValue = "idle";
    conn;
    connToken;
    userValue;
    flagsValue = {};
    sessionValue;
    failures = 0;
    everOpened = false;
    loaded = null;
    // Durable events: what was accepted (for sync) and what the app has processed (for acks,
    // persistence). `generation` changes on a reset so that late events do not count.
    inbox;
    stateUser;
    processedSeq = 0;
    ackedSeq = 0;
    generation = 0;
    postWatches = new Set();
    queue = [];
    draining = false;
    waiters = new Set();
    ready;
    reconnectTimer;
    connectTimer;
    refreshTimer;
    heartbeatTimer;
    ackTimer;
    offOnline;
    constructor(options) {
        super((type, error) => this.listenerFailed(String(type), error));
        this.options = options;
        this.WebSocketImpl = options.WebSocket ?? defaultWebSocket();
        this.tokens = new TokenKeeper({ token: options.token, getToken: options.getToken, refreshMarginMs: options.refreshMarginMs });
        if (options.token === undefined && options.getToken === undefined) {
            throw new HubbubError("auth_failed", "give a token or getToken");
        }
        const rate = options.frameRate ?? { perSecond: 18, burst: 40 };
        this.budget = rate === false ? undefined : new FrameBudget(rate.perSecond, rate.burst);
        this.outbox = new Outbox({
            attempt: (fields) => this.sendOnSession("message.send", fields, this.requestTimeoutMs).then((data) => data.message),
            canSend: () => this.stateValue === "open",
            changed: () => this.persist(),
            sent: (message, result) => this.emit("outbox", { kind: "sent", message, result }),
            failed: (message, error) => this.emit("outbox", { kind: "failed", message, error }),
            maxInFlight: options.maxSendsInFlight ?? 8,
        });
        this.typing = new Typing((conversation, state) => this.signal("typing", { conversation, state }), (conversation, users) => this.emit("typingChanged", { conversation, users }), options.typing);
        this.channels = new ChannelTracker({
            sync: (conversation, afterOffset) => this.sendOnSession("channel.sync", { conversation, after_offset: afterOffset }, this.requestTimeoutMs),
            sameSession: (conn) => conn === this.conn && this.stateValue === "open",
            deliver: (event, done) => this.enqueueChannel(event, done),
            changed: () => this.persist(),
            warn: (message, cause) => this.emit("warning", { message, cause }),
        });
        const storage = options.storage;
        this.saver = storage
            ? new Saver(storage, () => this.snapshot(), (cause) => this.emit("warning", { message: "could not save the state", cause }))
            : undefined;
        this.presence = new PresenceHelper({
            watch: (users) => this.request("presence.watch", { users }),
            unwatch: (users) => this.request("presence.unwatch", { users }),
            set: (status) => this.request("presence.set", { status }),
            changed: (frame) => this.enqueuePlain(frame),
        });
    }
    // -------------------------------------------------------------------------------------
    // The app's API.
    get state() {
        return this.stateValue;
    }
    /** The user, once the first session started. */
    get user() {
        return this.userValue;
    }
    /** The current session's id (changes on every reconnect). */
    /** The user's feature flags, as the server evaluated them (`hello`, then `flags` pushes). */
    get flags() {
        return this.flagsValue;
    }
    get session() {
        return this.sessionValue;
    }
    /** The highest seq the app has processed (what is saved and acknowledged). */
    get lastSeq() {
        return this.processedSeq;
    }
    /** Messages not yet acknowledged by the server, oldest first. */
    get pendingMessages() {
        return this.outbox.pending;
    }
    /**
     * Starts the session (and keeps it up until `close()`). Resolves once the first session
     * has synced: every event missed since the saved seq has been delivered. Rejects only if
     * the client closes first (`close()`, or no usable token).
     */
    connect() {
        if (this.stateValue === "closed")
            return Promise.reject(new HubbubError("closed", "the client is closed"));
        if (this.ready)
            return this.ready.promise;
        let resolve;
        let reject;
        const promise = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        this.ready = { promise, resolve, reject };
        this.offOnline = onOnline(() => this.reconnectNow());
        void this.start();
        return promise;
    }
    /**
     * Ends the session for good: acks what was processed, closes the socket, rejects pending
     * requests with `closed`. Unsent messages stay in storage (sent by the next client with the
     * same storage) but their promises reject.
     */
    close() {
        if (this.stateValue === "closed")
            return;
        this.flushAck();
        this.shutdown(new HubbubError("closed", "the client was closed"));
    }
    async request(type, fields = {}, options = {}) {
        const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
        const deadline = now() + timeoutMs;
        for (let attempt = 1;; attempt++) {
            await this.whenOpen(deadline, type);
            try {
                const data = await this.sendOnSession(type, fields, deadline - now());
                if (type === "conversation.list")
                    this.trackListedChannels(data);
                return data;
            }
            catch (error) {
                if (!(error instanceof HubbubError) || options.retry === false)
                    throw error;
                // Nothing was processed: any request may be sent again.
                const notProcessed = error.code === "rate_limited" || error.code === "unavailable";
                // The connection went before the reply: only requests that are safe to repeat.
                const lost = error.code === "disconnected" && REPEATABLE.has(type);
                if (!notProcessed && !lost)
                    throw error;
                const delay = lost ? 0 : (error.retryAfterMs ?? backoffDelay(attempt, { initialDelayMs: 250, maxDelayMs: 5_000 }));
                if (now() + delay >= deadline)
                    throw error;
                if (delay > 0)
                    await sleep(delay);
            }
        }
    }
    /** Sends a frame that gets no reply (`typing`, `comment.typing`); false when not connected. */
    signal(type, fields) {
        if (this.stateValue !== "open" || !this.conn?.isOpen)
            return false;
        // Over the rate, the server drops typing frames silently; so does the client.
        if (this.budget && !this.budget.tryTake())
            return false;
        return this.conn.send({ ...fields, type });
    }
    /**
     * Sends a message. It waits in the outbox while offline and is retried with the same
     * `client_msg_id` until the server answers (so it is delivered once); messages to one
     * conversation go in the order sent. Resolves with the message as stored; rejects when the
     * server refuses it (`forbidden`, `not_found`, `too_large`, ...), on `cancelMessage`, or
     * with `closed` on `close()` (it then stays in storage for the next client).
     */
    sendMessage(conversation, text, extra = {}) {
        if (this.stateValue === "closed")
            return Promise.reject(new HubbubError("closed", "the client is closed"));
        this.typing.stop(conversation);
        const fields = { ...extra, conversation, text, client_msg_id: extra.client_msg_id ?? randomId() };
        return this.outbox.add(fields);
    }
    /** Drops an unsent message from the outbox (false if an attempt is under way). */
    cancelMessage(clientMsgId) {
        return this.outbox.cancel(clientMsgId);
    }
    /** Watches posts' engagement (renewed on every new session). */
    async watchPosts(posts) {
        await this.request("post.watch", { posts });
        for (const p of posts)
            this.postWatches.add(p);
    }
    async unwatchPosts(posts) {
        for (const p of posts)
            this.postWatches.delete(p);
        await this.request("post.unwatch", { posts });
    }
    /**
     * Subscribes to a public channel (PROTOCOL.md 1.1) and follows its messages from the
     * first one that arrives; they are resumed with `channel.sync` on every new session.
     */
    async subscribeChannel(conversation) {
        await this.request("channel.subscribe", { conversation });
        this.trackChannel(conversation, null);
    }
    async unsubscribeChannel(conversation) {
        await this.request("channel.unsubscribe", { conversation });
        this.channels.untrack(conversation);
    }
    /** Follows a channel from `afterOffset` (its messages after it are delivered, then live). */
    trackChannel(conversation, afterOffset) {
        if (!this.channels.track(conversation, afterOffset))
            return;
        if (afterOffset !== null && this.stateValue === "open" && this.conn)
            void this.channels.resume(conversation, this.conn);
    }
    /** The last offset the app processed in each followed channel. */
    get channelOffsets() {
        return this.channels.offsets();
    }
    // Shortcuts for the common requests.
    createConversation(fields, options) {
        return this.request("conversation.create", fields, options).then((d) => d.conversation);
    }
    /** The direct conversation with `user` (created if needed, else the existing one). */
    directConversation(user, options) {
        return this.createConversation({ kind: "direct", members: [user] }, options);
    }
    listConversations(options) {
        return this.request("conversation.list", {}, options).then((d) => d.conversations);
    }
    history(conversation, page = {}, options) {
        return this.request("message.history", { conversation, ...page }, options);
    }
    markRead(conversation, message, options) {
        return this.request("message.read", { conversation, message }, options).then(() => undefined);
    }
    // -------------------------------------------------------------------------------------
    // Connection life.
    get requestTimeoutMs() {
        return this.options.requestTimeoutMs ?? 15_000;
    }
    async start() {
        if (this.options.storage) {
            try {
                this.loaded = parseState(await this.options.storage.load());
            }
            catch (cause) {
                this.emit("warning", { message: "could not load the saved state; starting without it", cause });
            }
            if (this.loaded)
                this.outbox.restore(this.loaded.outbox);
        }
        if (this.stateValue === "closed")
            return;
        void this.open();
    }
    /** (A method, so that TypeScript does not narrow the state across an await.) */
    isClosed() {
        return this.stateValue === "closed";
    }
    setState(state) {
        const previous = this.stateValue;
        if (previous === state)
            return;
        this.stateValue = state;
        this.emit("state", { state, previous });
    }
    async open() {
        this.reconnectTimer = undefined;
        if (this.stateValue === "closed")
            return;
        this.setState("connecting");
        let reason = "connect";
        if (this.connToken !== undefined && this.tokens.isBurned(this.connToken))
            reason = "rejected";
        else if (this.failures > 0 && this.failures % 3 === 0 && this.tokens.canRefresh)
            reason = "connect_failed";
        let token;
        try {
            token = await this.tokens.forConnect(reason);
        }
        catch (cause) {
            if (this.isClosed())
                return;
            const error = asError(cause);
            if (error.code === "auth_failed" || error.code === "unauthorized" || error.code === "forbidden") {
                this.emit("authFailed", { error });
                this.shutdown(error);
                return;
            }
            this.emit("warning", { message: `could not get a token: ${error.message}`, cause: error });
            this.failures += 1;
            this.scheduleReconnect(undefined);
            return;
        }
        if (this.isClosed())
            return;
        const WebSocketImpl = this.WebSocketImpl;
        if (!WebSocketImpl) {
            this.shutdown(new HubbubError("closed", "no WebSocket in this environment: pass options.WebSocket (in Node 20, `ws`)"));
            return;
        }
        this.connToken = token;
        const url = `${wsEndpoint(this.options.url)}?access_token=${encodeURIComponent(token)}`;
        let conn;
        try {
            conn = new Connection(WebSocketImpl, url, {
                onOpen: () => { },
                onFrame: (frame) => this.onFrame(conn, frame),
                onGarbage: (line) => this.emit("warning", { message: `not a JSON object from the server: ${line.slice(0, 200)}` }),
                onClose: (code, why) => this.onClose(conn, code, why),
            });
        }
        catch (cause) {
            this.emit("warning", { message: "could not open a WebSocket", cause });
            this.failures += 1;
            this.scheduleReconnect(undefined);
            return;
        }
        this.conn = conn;
        this.connectTimer = setTimer(() => conn.close(CLIENT_CLOSE.helloTimeout, "no hello in time"), this.options.connectTimeoutMs ?? 10_000);
    }
    scheduleReconnect(closed) {
        const reconnect = this.options.reconnect;
        if (reconnect === false) {
            if (closed)
                this.emit("disconnected", { ...closed, willReconnect: false, delayMs: undefined });
            this.shutdown(new HubbubError("disconnected", `disconnected (${closed?.code ?? "no connection"}) and reconnect is off`));
            return;
        }
        const delay = backoffDelay(this.failures, reconnect ?? {});
        this.setState("waiting");
        if (closed)
            this.emit("disconnected", { ...closed, willReconnect: true, delayMs: delay });
        clearTimer(this.reconnectTimer);
        this.reconnectTimer = setTimer(() => void this.open(), delay);
    }
    /** The network is back (browser): skip the rest of the back-off. */
    reconnectNow() {
        if (this.stateValue !== "waiting")
            return;
        clearTimer(this.reconnectTimer);
        void this.open();
    }
    onClose(conn, code, reason) {
        if (conn !== this.conn)
            return;
        this.conn = undefined;
        clearTimer(this.connectTimer);
        clearTimer(this.refreshTimer);
        clearTimer(this.heartbeatTimer);
        this.requests.failAll(new HubbubError("disconnected", `the connection closed (${code}) before the reply; the outcome is unknown`));
        this.typing.sessionEnded();
        const wasOpen = this.stateValue === "open";
        this.sessionValue = undefined;
        if (this.stateValue === "closed")
            return;
        if ((code === 4000 || code === 4001) && this.connToken !== undefined)
            this.tokens.burn(this.connToken);
        // A session that opened resets the back-off: its first retry comes soon.
        this.failures = wasOpen ? 0 : this.failures + 1;
        this.scheduleReconnect({ code, reason, wasOpen });
    }
    shutdown(error) {
        if (this.stateValue === "closed")
            return;
        this.setState("closed");
        for (const timer of [this.reconnectTimer, this.connectTimer, this.refreshTimer, this.heartbeatTimer, this.ackTimer]) {
            clearTimer(timer);
        }
        this.offOnline?.();
        const conn = this.conn;
        this.conn = undefined;
        conn?.close(1000, "client closed");
        this.requests.failAll(error);
        for (const waiter of this.waiters) {
            clearTimer(waiter.timer);
            waiter.reject(error);
        }
        this.waiters.clear();
        this.outbox.rejectAll(error.code === "auth_failed" ? error : new HubbubError("closed", "the client closed before the message was sent"));
        this.typing.sessionEnded();
        this.ready?.reject(error);
        // Nobody may be awaiting connect(); do not make that an unhandled rejection.
        this.ready?.promise.catch(() => { });
        this.persist();
    }
    // -------------------------------------------------------------------------------------
    // Frames.
    onFrame(conn, frame) {
        if (conn !== this.conn)
            return;
        this.armHeartbeat();
        switch (frame.type) {
            case "hello":
                this.onHello(conn, frame);
                return;
            case "ok":
            case "error": {
                if (this.requests.settle(frame))
                    return;
                if (frame.type === "error")
                    this.emit("serverError", frame);
                return;
            }
            default:
                this.onPushed(conn, frame);
        }
    }
    onHello(conn, hello) {
        clearTimer(this.connectTimer);
        const resumed = this.everOpened;
        this.everOpened = true;
        this.failures = 0;
        this.userValue = hello.user;
        this.sessionValue = hello.session;
        this.flagsValue = hello.flags ?? {};
        this.tokens.skewMs = hello.server_ts - now();
        this.adoptState(hello);
        const inbox = this.inbox;
        if (inbox.lastSeq > hello.last_seq) {
            // The server knows fewer events than we processed: another server, or lost data.
            this.generation += 1;
            inbox.resetTo(hello.last_seq);
            this.processedSeq = hello.last_seq;
            this.ackedSeq = 0;
            this.persist();
            this.enqueue(() => this.emitAndWait("reset", { reason: "server_behind", lastSeq: hello.last_seq }));
        }
        inbox.beginSession();
        this.setState("open");
        this.emit("connected", { user: hello.user, session: hello.session, lastSeq: hello.last_seq, resumed });
        void this.syncInbox(conn, inbox.lastSeq);
        this.channels.beginSession(conn);
        this.presence.resume().catch((cause) => this.emit("warning", { message: "could not renew presence watches", cause }));
        if (this.postWatches.size > 0) {
            this.request("post.watch", { posts: [...this.postWatches] }).catch((cause) => this.emit("warning", { message: "could not renew post watches", cause }));
        }
        if (this.processedSeq > this.ackedSeq)
            this.scheduleAck();
        this.scheduleRefresh();
        for (const waiter of this.waiters) {
            clearTimer(waiter.timer);
            waiter.resolve();
        }
        this.waiters.clear();
        this.outbox.pump();
    }
    /** On the first hello (or a new user): the saved state if it is this user's, else a fresh one. */
    adoptState(hello) {
        if (this.stateUser === hello.user.id && this.inbox)
            return;
        const saved = this.loaded && this.loaded.user === hello.user.id ? this.loaded : null;
        if (!saved)
            this.outbox.dropRestored();
        this.loaded = null;
        this.generation += 1;
        this.stateUser = hello.user.id;
        const start = saved ? saved.lastSeq : this.options.startFrom === "oldest" ? 0 : hello.last_seq;
        this.inbox = new SeqInbox(start);
        this.processedSeq = start;
        this.ackedSeq = 0;
        this.channels.load(saved?.channels ?? {});
        this.persist();
    }
    async syncInbox(conn, afterSeq) {
        let reply;
        try {
            reply = (await this.sendOnSession("sync", { after_seq: afterSeq }, this.requestTimeoutMs));
        }
        catch (cause) {
            if (conn !== this.conn)
                return;
            this.emit("warning", { message: "sync failed; reconnecting", cause });
            conn.close(CLIENT_CLOSE.syncFailed, "sync failed");
            return;
        }
        if (conn !== this.conn || !this.inbox)
            return;
        const inbox = this.inbox;
        if (reply.truncated) {
            const generation = this.generation;
            this.enqueue(async () => {
                if (generation === this.generation)
                    await this.emitAndWait("reset", { reason: "truncated", lastSeq: reply.last_seq });
            });
        }
        for (const event of inbox.syncDone(reply.last_seq))
            this.enqueueDurable(event);
        // Seqs the server skipped count as processed once what precedes them is.
        const upTo = inbox.lastSeq;
        const generation = this.generation;
        this.enqueue(async () => {
            if (generation !== this.generation)
                return;
            if (upTo > this.processedSeq) {
                this.processedSeq = upTo;
                this.persist();
                this.scheduleAck();
            }
            this.emit("synced", { lastSeq: upTo });
            this.ready?.resolve();
        });
    }
    onPushed(conn, frame) {
        const seq = frame.seq;
        if (typeof seq === "number") {
            if (!this.inbox)
                return;
            for (const event of this.inbox.accept(frame))
                this.enqueueDurable(event);
            return;
        }
        if (frame.type === "channel.message" && typeof frame.offset === "number" && typeof frame.conversation === "string") {
            this.channels.accept(frame, conn);
            return;
        }
        this.enqueuePlain(frame);
    }
    trackListedChannels(reply) {
        for (const c of reply.conversations) {
            if (c.kind === "channel" && typeof c.last_offset === "number")
                this.trackChannel(c.id, c.last_offset);
        }
    }
    // -------------------------------------------------------------------------------------
    // Delivery to the app: one event at a time, in order.
    enqueue(task) {
        this.queue.push(task);
        if (!this.draining)
            void this.drain();
    }
    async drain() {
        this.draining = true;
        try {
            for (let task = this.queue.shift(); task; task = this.queue.shift()) {
                try {
                    await task();
                }
                catch (error) {
                    this.listenerFailed("event", error);
                }
            }
        }
        finally {
            this.draining = false;
        }
    }
    enqueueDurable(event) {
        const generation = this.generation;
        this.enqueue(async () => {
            if (generation !== this.generation)
                return;
            await this.deliver(event);
            if (generation !== this.generation)
                return;
            if (event.seq > this.processedSeq) {
                this.processedSeq = event.seq;
                this.persist();
                this.scheduleAck();
            }
        });
    }
    enqueueChannel(event, done) {
        const generation = this.generation;
        this.enqueue(async () => {
            if (generation !== this.generation)
                return;
            await this.deliver(event);
            if (generation === this.generation)
                done();
        });
    }
    enqueuePlain(frame) {
        this.enqueue(() => this.deliver(frame));
    }
    async deliver(frame) {
        if (frame.type === "typing")
            this.typing.received(frame);
        if (frame.type === "presence")
            this.presence.received(frame);
        if (frame.type === "flags")
            this.flagsValue = frame.flags;
        await this.emitAndWait(frame.type, frame);
        await this.emitAndWait("event", frame);
    }
    // -------------------------------------------------------------------------------------
    // Requests.
    /** Resolves when a session is open, or rejects at `deadline` or when the client closes. */
    whenOpen(deadline, type) {
        if (this.stateValue === "open")
            return Promise.resolve();
        if (this.stateValue === "closed")
            return Promise.reject(new HubbubError("closed", "the client is closed", { requestType: type }));
        if (this.stateValue === "idle") {
            return Promise.reject(new HubbubError("closed", "not connected: call connect() first", { requestType: type }));
        }
        return new Promise((resolve, reject) => {
            const waiter = {
                resolve,
                reject,
                timer: setTimer(() => {
                    this.waiters.delete(waiter);
                    reject(new HubbubError("timeout", `${type}: no connection within the timeout`, { requestType: type }));
                }, deadline - now()),
            };
            this.waiters.add(waiter);
        });
    }
    /**
     * Sends one request on the current session, within the frame budget; rejects on error,
     * timeout or disconnection.
     */
    async sendOnSession(type, fields, timeoutMs) {
        const deadline = now() + timeoutMs;
        const conn = this.conn;
        if (!conn || this.stateValue !== "open") {
            throw new HubbubError("disconnected", `${type}: not connected`, { requestType: type });
        }
        // Acks do not count against the server's frame limit.
        const wait = type === "ack" || !this.budget ? 0 : this.budget.reserve();
        if (wait > 0) {
            if (now() + wait >= deadline) {
                await sleep(Math.max(0, deadline - now()));
                throw new HubbubError("timeout", `${type}: not sent within the timeout (the client's frame rate)`, { requestType: type });
            }
            await sleep(wait);
            if (conn !== this.conn || this.stateValue !== "open") {
                throw new HubbubError("disconnected", `${type}: the connection closed before it was sent`, { requestType: type });
            }
        }
        return this.requests.send(conn, type, fields, deadline - now());
    }
    // -------------------------------------------------------------------------------------
    // Acks, heartbeat, token refresh, persistence.
    scheduleAck() {
        if (this.ackTimer !== undefined)
            return;
        this.ackTimer = setTimer(() => {
            this.ackTimer = undefined;
            this.flushAck();
        }, this.options.ackDelayMs ?? 500);
    }
    flushAck() {
        clearTimer(this.ackTimer);
        this.ackTimer = undefined;
        if (this.processedSeq <= this.ackedSeq || this.stateValue !== "open" || !this.conn)
            return;
        if (this.conn.send({ type: "ack", seq: this.processedSeq }))
            this.ackedSeq = this.processedSeq;
    }
    armHeartbeat() {
        clearTimer(this.heartbeatTimer);
        const interval = this.options.heartbeatMs ?? 25_000;
        if (interval <= 0)
            return;
        const conn = this.conn;
        this.heartbeatTimer = setTimer(() => {
            if (!conn || conn !== this.conn || this.stateValue !== "open")
                return;
            // An ack with an id gets a reply: a cheap proof that the connection still works.
            this.sendOnSession("ack", { seq: this.ackedSeq }, Math.min(interval, 10_000)).catch((error) => {
                if (conn === this.conn && error instanceof HubbubError && error.code === "timeout") {
                    conn.close(CLIENT_CLOSE.heartbeatTimeout, "heartbeat unanswered");
                }
            });
        }, interval);
    }
    scheduleRefresh() {
        clearTimer(this.refreshTimer);
        const at = this.tokens.refreshAt();
        if (at === undefined || this.stateValue !== "open")
            return;
        this.refreshTimer = setTimer(() => void this.refreshLive(), at - now());
    }
    async refreshLive() {
        const conn = this.conn;
        if (!conn || this.stateValue !== "open")
            return;
        try {
            const token = await this.tokens.fetch("expiring");
            if (conn !== this.conn)
                return;
            const reply = (await this.sendOnSession("auth", { access_token: token }, this.requestTimeoutMs));
            this.tokens.confirm(token, reply.expires_ts);
            this.connToken = token;
            this.emit("tokenRefreshed", { expiresAt: reply.expires_ts });
            this.scheduleRefresh();
        }
        catch (cause) {
            if (conn !== this.conn)
                return;
            const error = asError(cause);
            this.emit("warning", { message: `token refresh failed: ${error.message}`, cause: error });
            // getToken failed for good (a dead refresh token): the session runs until the server
            // closes it with 4001, and the reconnect then reports authFailed. A refused `auth`
            // frame (requestType "auth") is retried with a new token.
            const fromApp = error.requestType !== "auth";
            if (fromApp && (error.code === "auth_failed" || error.code === "unauthorized" || error.code === "forbidden"))
                return;
            // Try again while there is time; past expiry and grace the server closes with 4001.
            const left = (this.tokens.expiresAtLocal ?? now() + 20_000) - now();
            this.refreshTimer = setTimer(() => void this.refreshLive(), Math.min(5_000, Math.max(500, left / 4)));
        }
    }
    persist() {
        this.saver?.save();
    }
    snapshot() {
        if (this.stateUser === undefined)
            return undefined;
        return {
            v: 1,
            user: this.stateUser,
            lastSeq: this.processedSeq,
            channels: this.channels.offsets(),
            outbox: this.outbox.records(),
        };
    }
    listenerFailed(event, error) {
        if (event !== "listenerError" && this.listenerCount("listenerError") > 0) {
            this.emit("listenerError", { event, error });
        }
        else {
            reportError(`hubbub: a listener of "${event}" failed:`, error);
        }
    }
}
function asError(cause) {
    return cause instanceof HubbubError ? cause : new HubbubError("network", String(cause), { cause });
}
