/**
 * Supervisor watchdog: a pure state machine. An owning gateway that has heard
 * from none of its configured safety supervisors for longer than `timeoutMs`
 * must put its assets into the configured safe state. Hearing = any valid
 * e-stop frame (heartbeats included) from a supervisor on a live stream.
 *
 * It trips once per outage and reports recovery once a supervisor is heard
 * again; what to do on recovery (nothing automatic for a latched stop) is the
 * caller's decision.
 *
 * @example
 * ```ts
 * import { SupervisorWatchdog } from "./estop_watchdog.ts";
 * const watchdog = new SupervisorWatchdog({ supervisors: ["sup-1"], timeoutMs: 1_000 }, 0);
 * console.assert(watchdog.tick(500) === undefined);
 * console.assert(watchdog.tick(1_001)?.type === "trip");
 * ```
 */
import { assert } from "./assert.ts";

/** Options. */
export interface SupervisorWatchdogInit {
  /** Peer IDs of the safety supervisors; empty disables the watchdog. */
  supervisors: readonly string[];
  /** Silence longer than this trips the watchdog; 0 disables it. */
  timeoutMs: number;
}

/** A change of the watchdog's state. */
export type WatchdogTransition =
  | { readonly type: "trip"; readonly silentForMs: number; readonly lastHeard: string | undefined }
  | { readonly type: "recover"; readonly supervisor: string; readonly trippedForMs: number };

/** Tracks when any supervisor was last heard. */
export class SupervisorWatchdog {
  readonly supervisors: ReadonlySet<string>;
  readonly timeoutMs: number;
  #lastHeardAtMs: number;
  #lastHeardPeer: string | undefined;
  #trippedAtMs: number | undefined;

  /** `nowMs` starts the grace period: a gateway gets `timeoutMs` to find its supervisors. */
  constructor(init: SupervisorWatchdogInit, nowMs: number) {
    assert(init.timeoutMs >= 0, "watchdog timeout is not negative");
    this.supervisors = new Set(init.supervisors);
    this.timeoutMs = init.timeoutMs;
    this.#lastHeardAtMs = nowMs;
  }

  /** False when no supervisors or no timeout are configured. */
  get enabled(): boolean {
    return this.supervisors.size > 0 && this.timeoutMs > 0;
  }

  /** True between a trip and the next recovery. */
  get tripped(): boolean {
    return this.#trippedAtMs !== undefined;
  }

  /** Something arrived from `peer`; returns a recovery when this ends an outage. */
  heard(peer: string, nowMs: number): WatchdogTransition | undefined {
    if (!this.supervisors.has(peer)) return undefined;
    this.#lastHeardAtMs = Math.max(this.#lastHeardAtMs, nowMs);
    this.#lastHeardPeer = peer;
    if (this.#trippedAtMs === undefined) return undefined;
    const trippedForMs = nowMs - this.#trippedAtMs;
    this.#trippedAtMs = undefined;
    return { type: "recover", supervisor: peer, trippedForMs };
  }

  /** Checks the silence; returns a trip when it just exceeded the timeout. */
  tick(nowMs: number): WatchdogTransition | undefined {
    if (!this.enabled || this.#trippedAtMs !== undefined) return undefined;
    const silentForMs = nowMs - this.#lastHeardAtMs;
    if (silentForMs <= this.timeoutMs) return undefined;
    this.#trippedAtMs = nowMs;
    return { type: "trip", silentForMs, lastHeard: this.#lastHeardPeer };
  }
}
