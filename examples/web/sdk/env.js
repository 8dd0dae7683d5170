/**
 * What the SDK takes from its host (timers, fetch, WebSocket, crypto, localStorage), typed
 * here so that the package needs neither the DOM's nor Node's type definitions and works in
 * both. Everything optional is looked up when used, so an app may inject its own.
 */
const host = globalThis;
export function setTimer(callback, ms) {
    return host.setTimeout(callback, Math.max(0, ms));
}
export function clearTimer(handle) {
    if (handle !== undefined)
        host.clearTimeout(handle);
}
export function now() {
    return Date.now();
}
/** Resolves after `ms`. */
export function sleep(ms) {
    return new Promise((resolve) => setTimer(resolve, ms));
}
export function defaultWebSocket() {
    return host.WebSocket;
}
export function defaultFetch() {
    return host.fetch?.bind(globalThis);
}
export function defaultLocalStorage() {
    try {
        return host.localStorage;
    }
    catch {
        // Access throws in some sandboxed iframes.
        return undefined;
    }
}
/** A random UUID (v4), for `client_msg_id`s. */
export function randomId() {
    const c = host.crypto;
    if (c?.randomUUID)
        return c.randomUUID();
    const bytes = new Uint8Array(16);
    if (c?.getRandomValues)
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < 16; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
/** Decodes base64 (standard or URL alphabet, padding optional) to a UTF-8 string. */
export function base64ToString(data) {
    const b64 = data.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(data.length / 4) * 4, "=");
    if (!host.atob)
        throw new Error("no atob in this environment");
    const binary = host.atob(b64);
    const bytes = Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
    return textFrom(bytes);
}
/** A WebSocket message's data as text (`ws` may hand over a Buffer or ArrayBuffer). */
export function textFrom(data) {
    if (typeof data === "string")
        return data;
    if (host.TextDecoder)
        return new host.TextDecoder().decode(data);
    return String(data);
}
/** Calls `listener` when the browser says the network is back; returns the unsubscribe. */
export function onOnline(listener) {
    const add = host.addEventListener;
    const remove = host.removeEventListener;
    // Only browsers (and workers) fire "online"; Node's globalThis has no addEventListener.
    if (typeof add !== "function" || typeof remove !== "function")
        return () => { };
    add.call(globalThis, "online", listener);
    return () => remove.call(globalThis, "online", listener);
}
export function reportError(...args) {
    host.console?.error(...args);
}
