/** Close codes the client itself uses (in the range the protocol leaves to applications). */
export const CLIENT_CLOSE = {
    /** No `hello` within `connectTimeoutMs`. */
    helloTimeout: 4900,
    /** The heartbeat got no reply: the connection is presumed dead. */
    heartbeatTimeout: 4901,
    /** `sync` failed: the session cannot promise exactly-once, so it is started again. */
    syncFailed: 4902,
};
