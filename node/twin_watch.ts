/**
 * Reads that wait for a twin to change (`GET /twins/:id` with `If-None-Match`
 * and `Prefer: wait=N`): a dashboard or script learns of a change as soon as
 * the gateway has it, instead of polling for it. Waiting is bounded in count
 * and in time, and a stopping gateway releases every waiter at once.
 */

/** Reads waiting at once per gateway; more are refused (HTTP 503) rather than queued. */
export const MAX_TWIN_WATCHERS = 1_024;
/** Longest wait a read may ask for. */
export const MAX_TWIN_WAIT_S = 60;

/** Why a wait ended. */
export type WaitOutcome = "changed" | "timeout" | "closed" | "aborted";

interface Waiter {
  done(outcome: WaitOutcome): void;
}

/** The waiting reads of one gateway, by twin. */
export class TwinWatchers {
  #byTwin = new Map<string, Set<Waiter>>();
  #count = 0;
  #closed = false;

  /** Reads waiting now. */
  get waiting(): number {
    return this.#count;
  }

  /** True once the gateway is stopping: nothing waits any more. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Resolves when {@link changed} is called for `assetId`, after `waitMs`, on
   * {@link close}, or when `signal` aborts (the client went away: its slot is
   * freed at once); undefined (refuse the read) when {@link MAX_TWIN_WATCHERS}
   * are already waiting or the gateway is stopping.
   */
  wait(assetId: string, waitMs: number, signal?: AbortSignal): Promise<WaitOutcome> | undefined {
    if (this.#closed || this.#count >= MAX_TWIN_WATCHERS || signal?.aborted) return undefined;
    return new Promise((resolve) => {
      const waiters = this.#byTwin.get(assetId) ?? new Set<Waiter>();
      this.#byTwin.set(assetId, waiters);
      const waiter: Waiter = {
        done: (outcome) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          if (!waiters.delete(waiter)) return;
          this.#count--;
          if (waiters.size === 0) this.#byTwin.delete(assetId);
          resolve(outcome);
        },
      };
      const onAbort = () => waiter.done("aborted");
      signal?.addEventListener("abort", onAbort);
      const timer = setTimeout(() => waiter.done("timeout"), waitMs);
      waiters.add(waiter);
      this.#count++;
    });
  }

  /** Wakes every read waiting on `assetId`. */
  changed(assetId: string): void {
    const waiters = this.#byTwin.get(assetId);
    if (!waiters) return;
    for (const waiter of [...waiters]) waiter.done("changed");
  }

  /** Wakes every waiting read and refuses new ones (the gateway is stopping). */
  close(): void {
    this.#closed = true;
    for (const waiters of [...this.#byTwin.values()]) {
      for (const waiter of [...waiters]) waiter.done("closed");
    }
  }
}
