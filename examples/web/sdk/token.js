/**
 * The session's token: where it comes from (a static token, or the app's `getToken`), when
 * it expires (the JWT's `exp`, or what the app or the server says), when to refresh it, and
 * the rule of PROTOCOL.md 1.1 that a token the server closed a session for (4000, 4001) is
 * never used again.
 */
import { base64ToString } from "./env.js";
import { HubbubError } from "./errors.js";
/** The `exp` of a JWT in ms since the epoch, or undefined when it is not a JWT with `exp`. */
export function jwtExpiry(token) {
    const parts = token.split(".");
    if (parts.length !== 3)
        return undefined;
    try {
        const claims = JSON.parse(base64ToString(parts[1]));
        return typeof claims.exp === "number" && Number.isFinite(claims.exp) ? claims.exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
export class TokenKeeper {
    options;
    current;
    burned = new Set();
    inflight;
    /** Server clock minus local clock, ms (from `hello`'s `server_ts`). */
    skewMs = 0;
    constructor(options) {
        this.options = options;
        if (options.token !== undefined)
            this.current = this.make(options.token, undefined);
    }
    get token() {
        return this.current?.token;
    }
    /** Whether the app can give new tokens. */
    get canRefresh() {
        return this.options.getToken !== undefined;
    }
    /** Expiry of the current token on the local clock, ms. */
    get expiresAtLocal() {
        const at = this.current?.expiresAt;
        return at === undefined ? undefined : at - this.skewMs;
    }
    /** The server closed a session opened with `token` with 4000 or 4001. */
    burn(token) {
        this.burned.add(token);
    }
    isBurned(token) {
        return this.burned.has(token);
    }
    /** The server says the current token (handed over with `auth`) expires at `expiresTs`. */
    confirm(token, expiresTs) {
        if (this.current?.token === token)
            this.current.expiresAt = expiresTs;
    }
    /**
     * A token to open a connection with: the current one while it is usable, else a new one.
     * `reason` is "connect" unless the caller knows better.
     */
    async forConnect(reason = "connect", localNow = Date.now()) {
        const current = this.current;
        const usable = current !== undefined &&
            !this.burned.has(current.token) &&
            reason === "connect" &&
            !this.expiring(current, localNow, 5_000);
        if (usable)
            return current.token;
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
    fetch(reason) {
        if (this.inflight)
            return this.inflight;
        const getToken = this.options.getToken;
        if (!getToken)
            return Promise.reject(new HubbubError("auth_failed", "no getToken to refresh the token with"));
        const previous = this.current?.token;
        this.inflight = (async () => {
            try {
                const input = await getToken({ reason, previous });
                const token = typeof input === "string" ? input : input.token;
                if (typeof token !== "string" || token === "")
                    throw new HubbubError("auth_failed", "getToken gave no token");
                if (this.burned.has(token)) {
                    throw new HubbubError("auth_failed", "getToken gave the token the server closed the session for (4000/4001); it must not be used again");
                }
                const explicit = typeof input === "string" ? undefined : input.expiresAt;
                this.current = this.make(token, explicit);
                return token;
            }
            finally {
                this.inflight = undefined;
            }
        })();
        return this.inflight;
    }
    /** Local time at which to refresh the current token, or undefined (no expiry, or no way). */
    refreshAt() {
        const current = this.current;
        if (!current || current.expiresAt === undefined || !this.canRefresh)
            return undefined;
        const expiresLocal = current.expiresAt - this.skewMs;
        const lifetime = Math.max(0, expiresLocal - current.obtainedAt);
        const margin = Math.min(this.options.refreshMarginMs ?? 60_000, lifetime / 3);
        return expiresLocal - margin;
    }
    expiring(current, localNow, withinMs) {
        if (current.expiresAt === undefined)
            return false;
        return current.expiresAt - this.skewMs - localNow < withinMs;
    }
    make(token, explicitExpiry) {
        return { token, expiresAt: explicitExpiry ?? jwtExpiry(token), obtainedAt: Date.now() };
    }
}
