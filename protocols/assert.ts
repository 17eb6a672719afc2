/**
 * Invariant checks that stay on in production. A failed assertion is a bug in
 * twinmesh, never an operating error: bad peers and bad input get typed errors.
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
  if (!condition) throw new AssertionError(`invariant violated: ${message}`);
}
