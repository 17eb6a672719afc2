/**
 * Event-loop lag: how late a 50 ms timer fires. Everything in a gateway
 * (e-stop frames, gossip, HTTP) waits behind the task that is running, so
 * this is the first figure to read when latency grows.
 */
const PERIOD_MS = 50;
/** The reported maximum covers this many of the latest seconds. */
export const LOOP_LAG_WINDOW_S = 10;

export class LoopLagMonitor {
  #timer: ReturnType<typeof setInterval> | undefined;
  #expected = 0;
  /** Max lag per second, newest last. */
  #perSecond: number[] = [0];
  #secondStartedAt = 0;
  #lastMs = 0;

  start(): void {
    this.#expected = performance.now() + PERIOD_MS;
    this.#secondStartedAt = performance.now();
    this.#timer = setInterval(() => this.#tick(), PERIOD_MS);
    Deno.unrefTimer(this.#timer);
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    const now = performance.now();
    this.#lastMs = Math.max(0, now - this.#expected);
    this.#expected = now + PERIOD_MS;
    if (now - this.#secondStartedAt >= 1000) {
      this.#secondStartedAt = now;
      this.#perSecond.push(0);
      if (this.#perSecond.length > LOOP_LAG_WINDOW_S) this.#perSecond.shift();
    }
    const i = this.#perSecond.length - 1;
    this.#perSecond[i] = Math.max(this.#perSecond[i]!, this.#lastMs);
  }

  /** `lastMs`: the latest tick; `maxMs`: the worst over the last ~10 s. */
  get stats(): { eventLoopLagMs: number; eventLoopLagMaxMs: number } {
    return {
      eventLoopLagMs: Math.round(this.#lastMs * 10) / 10,
      eventLoopLagMaxMs: Math.round(Math.max(...this.#perSecond) * 10) / 10,
    };
  }
}
