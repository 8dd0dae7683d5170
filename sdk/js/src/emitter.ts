/**
 * A small typed event emitter. `emit` calls listeners synchronously; `emitAndWait` also
 * waits for the promises they return, which is how durable events are delivered one at a
 * time, in order. A listener that throws never stops the others.
 */

type Listener<T> = (event: T) => unknown;

export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  constructor(private readonly onListenerError: (type: keyof Events, error: unknown) => void) {}

  /** Calls `listener` for every `type` event; returns the function that removes it. */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(type, listener);
  }

  /** Calls `listener` for the next `type` event only. */
  once<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(type, (event) => {
      off();
      return listener(event);
    });
    return off;
  }

  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.listeners.get(type)?.delete(listener as Listener<never>);
  }

  /** Resolves with the next `type` event for which `accept` (if given) is true. */
  next<K extends keyof Events>(type: K, accept?: (event: Events[K]) => boolean): Promise<Events[K]> {
    return new Promise((resolve) => {
      const off = this.on(type, (event) => {
        if (accept && !accept(event)) return;
        off();
        resolve(event);
      });
    });
  }

  listenerCount(type: keyof Events): number {
    return this.listeners.get(type)?.size ?? 0;
  }

  protected emit<K extends keyof Events>(type: K, event: Events[K]): void {
    for (const listener of this.listenersOf(type)) {
      try {
        const result = listener(event as never);
        if (isPromise(result)) result.catch((error: unknown) => this.onListenerError(type, error));
      } catch (error) {
        this.onListenerError(type, error);
      }
    }
  }

  protected async emitAndWait<K extends keyof Events>(type: K, event: Events[K]): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (const listener of this.listenersOf(type)) {
      try {
        const result = listener(event as never);
        if (isPromise(result)) waits.push(result.catch((error: unknown) => this.onListenerError(type, error)));
      } catch (error) {
        this.onListenerError(type, error);
      }
    }
    if (waits.length > 0) await Promise.all(waits);
  }

  private listenersOf(type: keyof Events): Listener<never>[] {
    const set = this.listeners.get(type);
    return set ? [...set] : [];
  }
}

function isPromise(value: unknown): value is Promise<unknown> {
  return typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function";
}
