import { clearTimer, setTimer } from "./env.js";
import { HubbubError } from "./errors.js";
export class RequestTable {
    pending = new Map();
    nextId = 1;
    /** Sends `{...fields, type, id}` on `conn`; settles with the reply's `data` or an error. */
    send(conn, type, fields, timeoutMs) {
        const id = `r${this.nextId++}`;
        return new Promise((resolve, reject) => {
            const timer = setTimer(() => {
                this.pending.delete(id);
                reject(new HubbubError("timeout", `${type}: no reply within ${Math.round(timeoutMs)} ms; the outcome is unknown`, {
                    requestType: type,
                }));
            }, timeoutMs);
            this.pending.set(id, { type, resolve, reject, timer });
            if (!conn.send({ ...fields, type, id })) {
                clearTimer(timer);
                this.pending.delete(id);
                reject(new HubbubError("disconnected", `${type}: the connection closed before it was sent`, { requestType: type }));
            }
        });
    }
    /** An `ok` or `error` frame with an id: settles its request. False if none awaits it (late). */
    settle(frame) {
        if (typeof frame.id !== "string")
            return false;
        const pending = this.pending.get(frame.id);
        if (!pending)
            return false;
        this.pending.delete(frame.id);
        clearTimer(pending.timer);
        if (frame.type === "ok") {
            pending.resolve(frame.data ?? {});
            return true;
        }
        const retryAfter = frame.retry_after_ms;
        const code = typeof frame.code === "string" ? frame.code : "internal";
        const message = typeof frame.message === "string" ? frame.message : "error";
        pending.reject(new HubbubError(code, `${pending.type}: ${message}`, {
            requestType: pending.type,
            ...(typeof retryAfter === "number" ? { retryAfterMs: retryAfter } : {}),
        }));
        return true;
    }
    /** The connection ended (or the client closed): every request fails with `error`'s code. */
    failAll(error) {
        const all = [...this.pending.values()];
        this.pending.clear();
        for (const pending of all) {
            clearTimer(pending.timer);
            pending.reject(new HubbubError(error.code, `${pending.type}: ${error.message}`, { requestType: pending.type }));
        }
    }
}
