export class HubbubError extends Error {
    name = "HubbubError";
    /** The server's code, or the client's own. */
    code;
    /** With `rate_limited`: when the server will take one more frame. */
    retryAfterMs;
    /** For HTTP errors, the status. */
    status;
    /** The request type, for errors about a request. */
    requestType;
    constructor(code, message, extra = {}) {
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
    get outcomeUnknown() {
        return this.code === "timeout" || this.code === "disconnected" || this.code === "internal";
    }
}
