/**
 * One WebSocket to `/v1/ws`: opens it, splits the server's text frames into JSON objects
 * (the server may batch several per frame, separated by newlines), sends frames, and reports
 * its end exactly once. It knows nothing of sessions, requests or retries.
 */
import { textFrom, type CloseEventLike, type MessageEventLike, type WebSocketConstructor, type WebSocketLike } from "./env.js";

export interface ConnectionHandlers {
  onOpen(): void;
  onFrame(frame: Record<string, unknown>): void;
  /** A line that is not a JSON object (the server never sends one; reported, not fatal). */
  onGarbage(line: string): void;
  /** Called once, whether the socket closed, failed to open, or was closed by us. */
  onClose(code: number, reason: string): void;
}

const OPEN = 1;

export class Connection {
  private readonly ws: WebSocketLike;
  private ended = false;

  constructor(WebSocketImpl: WebSocketConstructor, url: string, private readonly handlers: ConnectionHandlers) {
    this.ws = new WebSocketImpl(url);
    this.ws.onopen = () => {
      if (!this.ended) this.handlers.onOpen();
    };
    this.ws.onmessage = (event: MessageEventLike) => {
      if (!this.ended) this.receive(textFrom(event.data));
    };
    this.ws.onclose = (event: CloseEventLike) => this.end(event.code, event.reason);
    // An error is always followed by a close event; the close carries the code.
    this.ws.onerror = () => {};
  }

  get isOpen(): boolean {
    return !this.ended && this.ws.readyState === OPEN;
  }

  /** Sends one frame; false if the socket is not open (nothing was sent). */
  send(frame: object): boolean {
    if (!this.isOpen) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Closes the socket and reports the end at once with `code` (a client may only send 1000
   * or 3000–4999; the code reported to the handler is the one given here).
   */
  close(code = 1000, reason = ""): void {
    if (this.ended) return;
    try {
      this.ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
    } catch {
      // Already closing.
    }
    this.end(code, reason);
  }

  private receive(text: string): void {
    for (const line of text.split("\n")) {
      if (this.ended) return;
      if (line.trim() === "") continue;
      let frame: unknown;
      try {
        frame = JSON.parse(line);
      } catch {
        this.handlers.onGarbage(line);
        continue;
      }
      if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
        this.handlers.onGarbage(line);
        continue;
      }
      this.handlers.onFrame(frame as Record<string, unknown>);
    }
  }

  private end(code: number, reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.ws.onopen = null;
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.handlers.onClose(code, reason ?? "");
  }
}
