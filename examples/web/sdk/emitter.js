/**
 * A small typed event emitter. `emit` calls listeners synchronously; `emitAndWait` also
 * waits for the promises they return, which is how durable events are delivered one at a
 * time, in order. A listener that throws never stops the others.
 */
export class Emitter {
    onListenerError;
    listeners = new Map();
    constructor(onListenerError) {
        this.onListenerError = onListenerError;
    }
    /** Calls `listener` for every `type` event; returns the function that removes it. */
    on(type, listener) {
        let set = this.listeners.get(type);
        if (!set) {
            set = new Set();
            this.listeners.set(type, set);
        }
        set.add(listener);
        return () => this.off(type, listener);
    }
    /** Calls `listener` for the next `type` event only. */
    once(type, listener) {
        const off = this.on(type, (event) => {
            off();
            return listener(event);
        });
        return off;
    }
    off(type, listener) {
        this.listeners.get(type)?.delete(listener);
    }
    /** Resolves with the next `type` event for which `accept` (if given) is true. */
    next(type, accept) {
        return new Promise((resolve) => {
            const off = this.on(type, (event) => {
                if (accept && !accept(event))
                    return;
                off();
                resolve(event);
            });
        });
    }
    listenerCount(type) {
        return this.listeners.get(type)?.size ?? 0;
    }
    emit(type, event) {
        for (const listener of this.listenersOf(type)) {
            try {
                const result = listener(event);
                if (isPromise(result))
                    result.catch((error) => this.onListenerError(type, error));
            }
            catch (error) {
                this.onListenerError(type, error);
            }
        }
    }
    async emitAndWait(type, event) {
        const waits = [];
        for (const listener of this.listenersOf(type)) {
            try {
                const result = listener(event);
                if (isPromise(result))
                    waits.push(result.catch((error) => this.onListenerError(type, error)));
            }
            catch (error) {
                this.onListenerError(type, error);
            }
        }
        if (waits.length > 0)
            await Promise.all(waits);
    }
    listenersOf(type) {
        const set = this.listeners.get(type);
        return set ? [...set] : [];
    }
}
function isPromise(value) {
    return typeof value === "object" && value !== null && typeof value.then === "function";
}
