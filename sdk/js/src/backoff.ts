/**
 * Reconnect delays: exponential back-off with jitter, so that a server coming back is not
 * met by every client at the same instant.
 */

export interface BackoffOptions {
  /** The ceiling of the first delay, ms (default 500). */
  initialDelayMs?: number;
  /** The largest delay, ms (default 30,000). */
  maxDelayMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
}

/**
 * The delay before attempt `attempt` (0 for the first retry). The first is drawn from
 * [0, initial] ("full jitter", so a crowd reconnects spread out but soon); later ones from
 * [cap/2, cap] with cap = min(max, initial·factor^attempt), so they keep growing.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialDelayMs ?? 500;
  const max = options.maxDelayMs ?? 30_000;
  const factor = options.factor ?? 2;
  if (attempt <= 0) return Math.round(random() * initial);
  const cap = Math.min(max, initial * Math.pow(factor, attempt));
  return Math.round(cap / 2 + (random() * cap) / 2);
}
