/**
 * The one error type of the SDK: a server's error code (PROTOCOL.md) or one of the client's
 * own, so that an app tests `error.code` whatever went wrong.
 */
import type { ErrorCode } from "./generated/protocol.js";

/**
 * Codes the client adds to the server's:
 * - `timeout`: no reply within the request's timeout (the outcome is unknown),
 * - `disconnected`: the connection was lost before the reply (the outcome is unknown),
 * - `closed`: the client was closed (or never connected) before the request could be sent,
 * - `auth_failed`: no usable token (the app's `getToken` failed for good, or gave back the
 *   token the server closed the session for),
 * - `network`: an HTTP request did not get an answer,
 * - `cancelled`: the app cancelled an outbox message.
 */
export type ClientErrorCode = "timeout" | "disconnected" | "closed" | "auth_failed" | "network" | "cancelled";

export class HubbubError extends Error {
  override readonly name = "HubbubError";
  /** The server's code, or the client's own. */
  readonly code: ErrorCode | ClientErrorCode;
  /** With `rate_limited`: when the server will take one more frame. */
  readonly retryAfterMs: number | undefined;
  /** For HTTP errors, the status. */
  readonly status: number | undefined;
  /** The request type, for errors about a request. */
  readonly requestType: string | undefined;

  constructor(
    code: ErrorCode | ClientErrorCode,
    message: string,
    extra: { retryAfterMs?: number; status?: number; requestType?: string; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.code = code;
    this.retryAfterMs = extra.retryAfterMs;
    this.status = extra.status;
    this.requestType = extra.requestType;
  }

  /**
   * Whether the outcome of the request is unknown: it may or may not have taken effect
   * (re-sending a `message.send` with the same `client_msg_id` is always safe).
   */
  get outcomeUnknown(): boolean {
    return this.code === "timeout" || this.code === "disconnected" || this.code === "internal";
  }
}
