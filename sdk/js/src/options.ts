/**
 * The client's options, its states and the events it emits besides the pushed frames:
 * the types an app writes against, apart from the client's code.
 */
import type { BackoffOptions } from "./backoff.js";
import type { WebSocketConstructor } from "./env.js";
import type { HubbubError } from "./errors.js";
import type { ErrorFrame, Message, UserRef } from "./generated/protocol.js";
import type { PendingMessage } from "./outbox.js";
import type { PushedEventMap, PushedFrame } from "./protocol.js";
import type { StateStorage } from "./storage.js";
import type { GetToken } from "./token.js";
import type { TypingOptions } from "./typing.js";

/** Where the client is. */
export type ConnectionState =
  /** Created; `connect()` not called yet. */
  | "idle"
  /** Getting a token, opening the socket, waiting for `hello`. */
  | "connecting"
  /** `hello` received: requests flow. */
  | "open"
  /** Disconnected, waiting out the back-off before the next attempt. */
  | "waiting"
  /** `close()` was called, or no token can be had (`authFailed`). Final. */
  | "closed";

/** Close codes the client itself uses (in the range the protocol leaves to applications). */
export const CLIENT_CLOSE = {
  /** No `hello` within `connectTimeoutMs`. */
  helloTimeout: 4900,
  /** The heartbeat got no reply: the connection is presumed dead. */
  heartbeatTimeout: 4901,
  /** `sync` failed: the session cannot promise exactly-once, so it is started again. */
  syncFailed: 4902,
} as const;

export interface ClientOptions {
  /** The server: `https://chat.example.com` (or `ws(s)://`); the socket is `/v1/ws`. */
  url: string;
  /** A token (access token or app token) to use as long as it works. */
  token?: string;
  /**
   * Gives a token when the client needs one: before connecting without one, before the live
   * session's token expires (handed over with the `auth` frame), and after the server closed
   * a session with 4000 or 4001 (then it must be a different token). `AuthSession.getToken`
   * does this for the built-in auth; apps with their own auth fetch an app token here.
   */
  getToken?: GetToken;
  /** The WebSocket constructor (default `globalThis.WebSocket`; in Node 20 pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** Where to keep the last seq, channel offsets and unsent messages (see storage.ts). */
  storage?: StateStorage;
  /**
   * Without saved state, where the first session starts: "latest" (default) takes only
   * events after the connection (load current state with requests), "oldest" replays every
   * retained event (the server keeps 7 days by default).
   */
  startFrom?: "latest" | "oldest";
  /** Default timeout of a request, ms (default 15,000). */
  requestTimeoutMs?: number;
  /** How long to wait for `hello` after opening the socket, ms (default 10,000). */
  connectTimeoutMs?: number;
  /** Reconnect back-off (default 500 ms up to 30 s); `false` to never reconnect. */
  reconnect?: BackoffOptions | false;
  /** Refresh the token this long before it expires, ms (default 60,000; at most a third of its life). */
  refreshMarginMs?: number;
  /** Wait this long to coalesce acks, ms (default 500). */
  ackDelayMs?: number;
  /** Send a heartbeat after this long without a frame from the server, ms (default 25,000; 0: never). */
  heartbeatMs?: number;
  /**
   * The client's own limit on the frames it sends (acks apart), to stay under the server's
   * (`limits.frames_per_s` 20 and `limits.burst` 50 by default): default 18 a second, bursts
   * of 40. Set it to the server's configuration, or `false` to send at once.
   */
  frameRate?: { perSecond: number; burst: number } | false;
  /** Most `message.send`s in flight at once, over all conversations (default 8). */
  maxSendsInFlight?: number;
  typing?: TypingOptions;
}

export interface RequestOptions {
  /** This request's timeout, ms, counted from the call (waiting for a connection included). */
  timeoutMs?: number;
  /**
   * Whether `rate_limited` and `unavailable` answers (nothing was processed) are retried
   * until the timeout (default true).
   */
  retry?: boolean;
}

/** Events of the client itself (besides every pushed frame, by its `type`). */
export interface LifecycleEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  /** A session started (`hello`). */
  connected: { user: UserRef; session: string; lastSeq: number; resumed: boolean };
  /** The session's `sync` is done: every missed event before this one has been delivered. */
  synced: { lastSeq: number };
  /**
   * A connection ended: a session (`wasOpen`), or an attempt that never got `hello` (the
   * server is down, or refused the token: a browser cannot tell which).
   */
  disconnected: { code: number; reason: string; wasOpen: boolean; willReconnect: boolean; delayMs: number | undefined };
  /**
   * Events were lost to the app: the server's retention window passed (`truncated`), or the
   * server knows fewer events than the client processed (`server_behind`: another server, or
   * its data was lost). Reload state (conversations, history) from requests.
   */
  reset: { reason: "truncated" | "server_behind"; lastSeq: number };
  /** The live session runs on a new token until `expiresAt` (server clock, ms). */
  tokenRefreshed: { expiresAt: number };
  /** No usable token: the client closed. Log in again and make a new client. */
  authFailed: { error: HubbubError };
  /** Every pushed frame, after ordering (durable ones once each, in seq order). */
  event: PushedFrame;
  /** An error frame about no request (`"id":null`): a refused typing frame, a bad frame. */
  serverError: ErrorFrame;
  /** Who is typing in a conversation changed. */
  typingChanged: { conversation: string; users: string[] };
  /** An outbox message got its `ok` or was refused (also those restored from storage). */
  outbox: { kind: "sent"; message: PendingMessage; result: Message } | { kind: "failed"; message: PendingMessage; error: HubbubError };
  /** Something went wrong that the client worked around (a failed save, an unsupported request). */
  warning: { message: string; cause?: unknown };
  /** A listener threw or rejected. Without a listener for this, it is logged to the console. */
  listenerError: { event: string; error: unknown };
}

export type ClientEvents = PushedEventMap & LifecycleEvents;
