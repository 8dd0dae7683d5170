/**
 * One WebSocket to `/v1/ws`: opens it, splits the server's text frames into JSON objects
 * (the server may batch several per frame, separated by newlines), sends frames, and reports
 * its end exactly once. It knows nothing of sessions, requests or retries.
 */
import { textFrom } from "./env.js";
const OPEN = 1;
export class Connection {
    handlers;
    ws;
    ended = false;
    constructor(WebSocketImpl, url, handlers) {
        this.handlers = handlers;
        this.ws = new WebSocketImpl(url);
        this.ws.onopen = () => {
            if (!this.ended)
                this.handlers.onOpen();
        };
        this.ws.onmessage = (event) => {
            if (!this.ended)
                this.receive(textFrom(event.data));
        };
        this.ws.onclose = (event) => this.end(event.code, event.reason);
        // An error is always followed by a close event; the close carries the code.
        this.ws.onerror = () => { };
    }
    get isOpen() {
        return !this.ended && this.ws.readyState === OPEN;
    }
    /** Sends one frame; false if the socket is not open (nothing was sent). */
    send(frame) {
        if (!this.isOpen)
            return false;
        try {
            this.ws.send(JSON.stringify(frame));
            return true;
        }
        catch {
            return false;
        }
    }
    /**
     * Closes the socket and reports the end at once with `code` (a client may only send 1000
     * or 3000–4999; the code reported to the handler is the one given here).
     */
    close(code = 1000, reason = "") {
        if (this.ended)
            return;
        try {
            this.ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
        }
        catch {
            // Already closing.
        }
        this.end(code, reason);
    }
    receive(text) {
        for (const line of text.split("\n")) {
            if (this.ended)
                return;
            if (line.trim() === "")
                continue;
            let frame;
            try {
                frame = JSON.parse(line);
            }
            catch {
                this.handlers.onGarbage(line);
                continue;
            }
            if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
                this.handlers.onGarbage(line);
                continue;
            }
            this.handlers.onFrame(frame);
        }
    }
    end(code, reason) {
        if (this.ended)
            return;
        this.ended = true;
        this.ws.onopen = null;
        this.ws.onmessage = null;
        this.ws.onclose = null;
        this.handlers.onClose(code, reason ?? "");
    }
}
