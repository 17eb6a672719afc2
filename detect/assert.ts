/**
 * Invariant checks for `detect/` that stay on in production. A failed
 * assertion is a bug in this module, never an operating error: bad telemetry,
 * bad peers and bad files get the typed errors of `errors.ts` instead.
 *
 * @example
 * ```ts
 * import { assert } from "./assert.ts";
 * assert(1 + 1 === 2, "arithmetic holds");
 * ```
 */
export class AssertionError extends Error {
  override name = "AssertionError";
}

/** Throws {@link AssertionError} when `condition` is false. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(`detect invariant violated: ${message}`);
}
