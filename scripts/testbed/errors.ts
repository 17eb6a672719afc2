/**
 * Errors of the testbed: an assertion for broken invariants (bugs), and one typed error per
 * operating condition, each naming the value and what was expected.
 *
 * @module
 */

/** A broken invariant of the testbed code itself. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

/**
 * Throws {@link AssertionError} when `condition` is false.
 *
 * @example
 * ```ts
 * assert(1 + 1 === 2, "arithmetic holds");
 * ```
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(`invariant violated: ${message}`);
}

/** A caller passed a value the testbed does not accept. */
export class TestbedInputError extends Error {
  override name = "TestbedInputError";
  constructor(readonly what: string, readonly value: unknown, readonly expected: string) {
    super(`${what} = ${JSON.stringify(value)}; expected ${expected}`);
  }
}

/** An external command (`ip`, `nft`, `wg`, …) failed or timed out. */
export class CommandError extends Error {
  override name = "CommandError";
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
    readonly timedOut: boolean,
  ) {
    const why = timedOut ? "timed out" : `exited with ${code}`;
    super(`\`${argv.join(" ")}\` ${why}: ${stderr.trim().slice(0, 500)}`);
  }
}

/** The machine lacks something the testbed needs (a tool, root, namespace support). */
export class TestbedUnavailableError extends Error {
  override name = "TestbedUnavailableError";
  constructor(message: string) {
    super(message);
  }
}

/** A daemon did not become ready in time. */
export class TestbedTimeoutError extends Error {
  override name = "TestbedTimeoutError";
  constructor(readonly what: string, readonly timeoutMs: number, detail = "") {
    super(`${what} not ready within ${timeoutMs} ms${detail ? `: ${detail}` : ""}`);
  }
}

/** Another run holds the machine-wide testbed (see `lock.ts`). */
export class TestbedBusyError extends Error {
  override name = "TestbedBusyError";
  constructor(message: string) {
    super(message);
  }
}

/** A gateway process exited while starting (a gateway bug, not a missing capability). */
export class GatewayExitedError extends Error {
  override name = "GatewayExitedError";
  constructor(readonly gateway: string, readonly logTail: string) {
    super(`gateway ${gateway} exited during start; log tail:\n${logTail}`);
  }
}
