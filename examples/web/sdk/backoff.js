/**
 * Reconnect delays: exponential back-off with jitter, so that a server coming back is not
 * met by every client at the same instant.
 */
/**
 * The delay before attempt `attempt` (0 for the first retry). The first is drawn from
 * [0, initial] ("full jitter", so a crowd reconnects spread out but soon); later ones from
 * [cap/2, cap] with cap = min(max, initial·factor^attempt), so they keep growing.
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
    const initial = options.initialDelayMs ?? 500;
    const max = options.maxDelayMs ?? 30_000;
    const factor = options.factor ?? 2;
    if (attempt <= 0)
        return Math.round(random() * initial);
    const cap = Math.min(max, initial * Math.pow(factor, attempt));
    return Math.round(cap / 2 + (random() * cap) / 2);
}
/**
 * A token bucket for the frames the client sends, so that it stays under the server's rate
 * limit (PROTOCOL.md "Limits": 20 frames/s, bursts of 50 by default; five times over in a
 * second closes the connection with 1008). Reservations are first come, first served.
 */
export class FrameBudget {
    perSecond;
    burst;
    clock;
    tokens;
    updated;
    constructor(perSecond, burst, clock = Date.now) {
        this.perSecond = perSecond;
        this.burst = burst;
        this.clock = clock;
        this.tokens = burst;
        this.updated = clock();
    }
    /** Takes one frame's worth; returns how long to wait before sending it, ms (0: now). */
    reserve() {
        this.refill();
        this.tokens -= 1;
        return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.perSecond) * 1000);
    }
    /** Takes one frame's worth only if it is there now (for frames that may be dropped). */
    tryTake() {
        this.refill();
        if (this.tokens < 1)
            return false;
        this.tokens -= 1;
        return true;
    }
    refill() {
        const t = this.clock();
        this.tokens = Math.min(this.burst, this.tokens + ((t - this.updated) / 1000) * this.perSecond);
        this.updated = t;
    }
}
