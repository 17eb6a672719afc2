/**
 * One testbed per machine: the namespaces (`tm-*`), the state directory and the process markers
 * are machine-wide, so a second run (another engineer's `scripts/test.sh`, a manual setup)
 * would tear the first one down under its feet. Every entry point that builds or destroys the
 * testbed (scenario runs, the infra test, the setup and teardown CLIs) holds this lock.
 *
 * The lock is a kernel `flock` on {@link LOCK_FILE}, held by a small `flock(1)` child whose
 * stdin is a pipe from this process: when this process exits for any reason (even kill -9)
 * the pipe closes, the child ends and the kernel releases the lock. No stale locks.
 *
 * @module
 */

import { TestbedBusyError } from "./errors.ts";

/** The lock file (outside the state dir, which setup deletes). */
export const LOCK_FILE = "/tmp/twinmesh-testbed.lock";
/** Who holds the lock, for the busy message (best effort; the flock is the truth). */
export const LOCK_OWNER_FILE = "/tmp/twinmesh-testbed.lock.owner";
/** Exit code `flock -E` gives when the lock stayed busy for the whole wait. */
const BUSY_EXIT = 75;

/** A held testbed lock. */
export interface TestbedLock {
  /** Releases the lock (idempotent). */
  release(): Promise<void>;
}

/**
 * Takes the machine-wide testbed lock, waiting up to `waitMs` for another holder to finish;
 * throws {@link TestbedBusyError} naming the holder when it stays busy.
 *
 * @example
 * ```ts
 * const lock = await acquireTestbedLock("partition scenario", 60_000);
 * try {
 *   // set up, run, tear down
 * } finally {
 *   await lock.release();
 * }
 * ```
 */
export async function acquireTestbedLock(what: string, waitMs: number): Promise<TestbedLock> {
  const waitS = Math.max(0, Math.ceil(waitMs / 1000));
  const child = new Deno.Command("flock", {
    args: [
      ...(waitS === 0 ? ["-n"] : ["-w", String(waitS)]),
      "-E",
      String(BUSY_EXIT),
      LOCK_FILE,
      // Holds the lock until our end of its stdin closes.
      "sh",
      "-c",
      "echo locked; exec cat >/dev/null",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  reader.releaseLock();
  if (first.done || !first.value.startsWith("locked")) {
    await child.stdin.close().catch(() => {});
    const status = await child.status;
    const owner = await Deno.readTextFile(LOCK_OWNER_FILE).catch(() => "unknown");
    throw new TestbedBusyError(
      status.code === BUSY_EXIT
        ? `the testbed is in use (held by ${owner.trim()}); waited ${waitS} s`
        : `flock exited with ${status.code} without taking ${LOCK_FILE}`,
    );
  }
  await Deno.writeTextFile(
    LOCK_OWNER_FILE,
    `pid ${Deno.pid} (${what}) since ${new Date().toISOString()}\n`,
  ).catch(() => {});
  child.stdout.cancel().catch(() => {});
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await Deno.remove(LOCK_OWNER_FILE).catch(() => {});
      await child.stdin.close().catch(() => {});
      await child.status;
    },
  };
}
