/**
 * The built-in auth endpoints over HTTP (signup, login, refresh, revoke) and `AuthSession`,
 * which keeps an access/refresh token pair and gives the client fresh access tokens
 * (`getToken`). Apps with their own auth (app tokens) do not need this module.
 */
import { defaultFetch } from "./env.js";
import { HubbubError } from "./errors.js";
/** `http://host:port` from an http(s) or ws(s) URL, without a trailing slash or path. */
export function httpBase(url) {
    const m = /^(https?|wss?):\/\/([^/?#]+)/i.exec(url.trim());
    if (!m)
        throw new HubbubError("bad_request", `not an http(s) or ws(s) URL: ${url}`);
    const scheme = m[1].toLowerCase();
    return `${scheme === "wss" || scheme === "https" ? "https" : "http"}://${m[2]}`;
}
/** The WebSocket URL of `/v1/ws` for a server's http(s) or ws(s) base URL. */
export function wsEndpoint(url) {
    return httpBase(url).replace(/^http/, "ws") + "/v1/ws";
}
/** Sends a JSON request and returns the JSON answer; an error status becomes a HubbubError. */
export async function httpJson(baseUrl, method, path, body, options = {}) {
    const fetchImpl = options.fetch ?? defaultFetch();
    if (!fetchImpl)
        throw new HubbubError("network", "no fetch in this environment (pass one)");
    const headers = { accept: "application/json" };
    if (body !== undefined)
        headers["content-type"] = "application/json";
    if (options.accessToken)
        headers.authorization = `Bearer ${options.accessToken}`;
    let response;
    try {
        response = await fetchImpl(httpBase(baseUrl) + path, {
            method,
            headers,
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        });
    }
    catch (cause) {
        throw new HubbubError("network", `${method} ${path}: no answer`, { cause });
    }
    const text = await response.text().catch(() => "");
    let parsed = undefined;
    try {
        parsed = text === "" ? undefined : JSON.parse(text);
    }
    catch {
        // Not JSON: reported below by status.
    }
    if (!response.ok) {
        const err = parsed?.error;
        const code = (err?.code ?? statusCode(response.status));
        const retryAfterHeader = Number(response.headers.get("retry-after"));
        const retryAfterMs = err?.retry_after_ms ?? (Number.isFinite(retryAfterHeader) && retryAfterHeader > 0 ? retryAfterHeader * 1000 : undefined);
        throw new HubbubError(code, `${method} ${path}: ${response.status} ${err?.message ?? text.slice(0, 200)}`, {
            status: response.status,
            ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
        });
    }
    return parsed;
}
function statusCode(status) {
    switch (status) {
        case 400:
            return "bad_request";
        case 401:
            return "unauthorized";
        case 403:
            return "forbidden";
        case 404:
            return "not_found";
        case 409:
            return "conflict";
        case 413:
            return "too_large";
        case 429:
            return "rate_limited";
        case 503:
            return "unavailable";
        default:
            return "internal";
    }
}
/** `POST /v1/auth/signup`. */
export function signup(baseUrl, body, options = {}) {
    return httpJson(baseUrl, "POST", "/v1/auth/signup", body, options);
}
/** `POST /v1/auth/login`. */
export function login(baseUrl, body, options = {}) {
    return httpJson(baseUrl, "POST", "/v1/auth/login", body, options);
}
/**
 * `POST /v1/auth/refresh`. The refresh token is single use: sending the same one twice
 * revokes its whole family (docs/protocol.md), so never call this twice with one token.
 */
export function refresh(baseUrl, refreshToken, options = {}) {
    return httpJson(baseUrl, "POST", "/v1/auth/refresh", { refresh_token: refreshToken }, options);
}
/** `POST /v1/auth/revoke` ("log out everywhere", this server's endpoint): every session closes with 4001. */
export async function revokeAll(baseUrl, accessToken, options = {}) {
    await httpJson(baseUrl, "POST", "/v1/auth/revoke", {}, { ...options, accessToken });
}
/**
 * A logged-in user's tokens, refreshed over HTTP when the client asks. Pass
 * `session.getToken` as the client's `getToken`. Refreshes are one at a time, each with the
 * latest refresh token.
 */
export class AuthSession {
    baseUrl;
    options;
    tokens;
    inflight;
    constructor(baseUrl, tokens, options = {}) {
        this.baseUrl = baseUrl;
        this.options = options;
        this.tokens = "expires_at" in tokens ? { ...tokens } : toStored(tokens);
    }
    static async signup(baseUrl, body, options = {}) {
        const session = new AuthSession(baseUrl, await signup(baseUrl, body, options), options);
        options.onTokens?.(session.toJSON());
        return session;
    }
    static async login(baseUrl, body, options = {}) {
        const session = new AuthSession(baseUrl, await login(baseUrl, body, options), options);
        options.onTokens?.(session.toJSON());
        return session;
    }
    get user() {
        return this.tokens.user;
    }
    get accessToken() {
        return this.tokens.access_token;
    }
    /** For the client's `getToken` option. */
    getToken = async ({ reason, previous }) => {
        const fresh = this.tokens.expires_at - Date.now() > 30_000;
        // A token the client has not seen yet (another client refreshed) serves as well.
        if (fresh && (reason === "connect" || this.tokens.access_token !== previous)) {
            return { token: this.tokens.access_token, expiresAt: this.tokens.expires_at };
        }
        const tokens = await this.refresh();
        return { token: tokens.access_token, expiresAt: tokens.expires_at };
    };
    /** Gets a new pair now. A `401` means the user must log in again. */
    refresh() {
        if (!this.inflight) {
            const used = this.tokens.refresh_token;
            this.inflight = refresh(this.baseUrl, used, this.options)
                .then((response) => {
                this.tokens = toStored(response);
                this.options.onTokens?.(this.toJSON());
                return this.tokens;
            })
                .finally(() => {
                this.inflight = undefined;
            });
        }
        return this.inflight;
    }
    /** "Log out everywhere": revokes every token of the user; their sessions close with 4001. */
    revokeAll() {
        return revokeAll(this.baseUrl, this.tokens.access_token, this.options);
    }
    toJSON() {
        return { ...this.tokens };
    }
}
function toStored(response) {
    return {
        user: response.user,
        access_token: response.access_token,
        refresh_token: response.refresh_token,
        expires_at: Date.now() + response.expires_in * 1000,
    };
}
