/**
 * The session's token: where it comes from (a static token, or the app's `getToken`), when
 * it expires (the JWT's `exp`, or what the app or the server says), when to refresh it, and
 * the rule of PROTOCOL.md 1.1 that a token the server closed a session for (4000, 4001) is
 * never used again.
 */
import { base64ToString } from "./env.js";
import { HubbubError } from "./errors.js";

/** Why the client asks the app for a token. */
export type TokenReason =
  /** Before a connection, when there is no token yet or the last one is about to expire. */
  | "connect"
  /** The live session's token is about to expire (it will be handed over with `auth`). */
  | "expiring"
  /** The server closed the session with 4000 or 4001: a new token is required. */
  | "rejected"
  /** Several connection attempts in a row failed before `hello` (the token may be revoked). */
  | "connect_failed";

/** What `getToken` may return: a token, or a token and when it expires (ms since the epoch). */
export type TokenInput = string | { token: string; expiresAt?: number };

export type GetToken = (context: { reason: TokenReason; previous: string | undefined }) => TokenInput | Promise<TokenInput>;

/** The `exp` of a JWT in ms since the epoch, or undefined when it is not a JWT with `exp`. */
export function jwtExpiry(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(base64ToString(parts[1]!)) as { exp?: unknown };
    return typeof claims.exp === "number" && Number.isFinite(claims.exp) ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

export interface TokenOptions {
  token?: string | undefined;
  getToken?: GetToken | undefined;
  /**
   * Refresh this long before expiry, ms (default 60,000), but never later than two thirds
   * into the token's lifetime, so short-lived tokens are refreshed in time too.
   */
  refreshMarginMs?: number | undefined;
}

interface Current {
  token: string;
  /** Expiry on the server's clock, ms; undefined when unknown. */
  expiresAt: number | undefined;
  /** When it was obtained, local clock. */
  obtainedAt: number;
}

export class TokenKeeper {
  private current: Current | undefined;
  private readonly burned = new Set<string>();
  private inflight: Promise<string> | undefined;
  /** Server clock minus local clock, ms (from `hello`'s `server_ts`). */
  skewMs = 0;

  constructor(private readonly options: TokenOptions) {
    if (options.token !== undefined) this.current = this.make(options.token, undefined);
  }

  get token(): string | undefined {
    return this.current?.token;
  }

  /** Whether the app can give new tokens. */
  get canRefresh(): boolean {
    return this.options.getToken !== undefined;
  }

  /** Expiry of the current token on the local clock, ms. */
  get expiresAtLocal(): number | undefined {
    const at = this.current?.expiresAt;
    return at === undefined ? undefined : at - this.skewMs;
  }

  /** The server closed a session opened with `token` with 4000 or 4001. */
  burn(token: string): void {
    this.burned.add(token);
  }

  isBurned(token: string): boolean {
    return this.burned.has(token);
  }

  /** The server says the current token (handed over with `auth`) expires at `expiresTs`. */
  confirm(token: string, expiresTs: number): void {
    if (this.current?.token === token) this.current.expiresAt = expiresTs;
  }

  /**
   * A token to open a connection with: the current one while it is usable, else a new one.
   * `reason` is "connect" unless the caller knows better.
   */
  async forConnect(reason: TokenReason = "connect", localNow = Date.now()): Promise<string> {
    const current = this.current;
    const usable =
      current !== undefined &&
      !this.burned.has(current.token) &&
      reason === "connect" &&
      !this.expiring(current, localNow, 5_000);
    if (usable) return current.token;
    if (!this.options.getToken) {
      if (current && !this.burned.has(current.token) && reason !== "rejected" && !this.expiring(current, localNow, 0)) {
        return current.token;
      }
      throw new HubbubError("auth_failed", "the token was refused or expired, and no getToken was given to get another");
    }
    const actualReason = current !== undefined && this.burned.has(current.token) ? "rejected" : reason;
    return this.fetch(actualReason);
  }

  /** Asks the app for a new token (one request at a time). */
  fetch(reason: TokenReason): Promise<string> {
    if (this.inflight) return this.inflight;
    const getToken = this.options.getToken;
    if (!getToken) return Promise.reject(new HubbubError("auth_failed", "no getToken to refresh the token with"));
    const previous = this.current?.token;
    this.inflight = (async () => {
      try {
        const input = await getToken({ reason, previous });
        const token = typeof input === "string" ? input : input.token;
        if (typeof token !== "string" || token === "") throw new HubbubError("auth_failed", "getToken gave no token");
        if (this.burned.has(token)) {
          throw new HubbubError(
            "auth_failed",
            "getToken gave the token the server closed the session for (4000/4001); it must not be used again",
          );
        }
        const explicit = typeof input === "string" ? undefined : input.expiresAt;
        this.current = this.make(token, explicit);
        return token;
      } finally {
        this.inflight = undefined;
      }
    })();
    return this.inflight;
  }

  /** Local time at which to refresh the current token, or undefined (no expiry, or no way). */
  refreshAt(): number | undefined {
    const current = this.current;
    if (!current || current.expiresAt === undefined || !this.canRefresh) return undefined;
    const expiresLocal = current.expiresAt - this.skewMs;
    const lifetime = Math.max(0, expiresLocal - current.obtainedAt);
    const margin = Math.min(this.options.refreshMarginMs ?? 60_000, lifetime / 3);
    return expiresLocal - margin;
  }

  private expiring(current: Current, localNow: number, withinMs: number): boolean {
    if (current.expiresAt === undefined) return false;
    return current.expiresAt - this.skewMs - localNow < withinMs;
  }

  private make(token: string, explicitExpiry: number | undefined): Current {
    return { token, expiresAt: explicitExpiry ?? jwtExpiry(token), obtainedAt: Date.now() };
  }
}
