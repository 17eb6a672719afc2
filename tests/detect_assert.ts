/**
 * The few assertions the detect tests use, kept in detect/ so the tests need
 * no extra registry (the project takes dependencies from npm only).
 */

export class TestAssertionError extends Error {
  override name = "TestAssertionError";
}

export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new TestAssertionError(message);
}

export function assertEquals(actual: unknown, expected: unknown, message = ""): void {
  const a = JSON.stringify(normalise(actual)), e = JSON.stringify(normalise(expected));
  if (a !== e) {
    throw new TestAssertionError(`${message} expected ${e.slice(0, 300)}, got ${a.slice(0, 300)}`);
  }
}

function normalise(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number>);
  return v;
}

export function assertAlmostEquals(
  actual: number,
  expected: number,
  tolerance: number,
  message = "",
): void {
  if (!(Math.abs(actual - expected) <= tolerance)) {
    throw new TestAssertionError(`${message} expected ${expected} ± ${tolerance}, got ${actual}`);
  }
}

export function assertGreater(actual: number, than: number, message = ""): void {
  if (!(actual > than)) {
    throw new TestAssertionError(`${message} expected > ${than}, got ${actual}`);
  }
}

export function assertLessOrEqual(actual: number, than: number, message = ""): void {
  if (!(actual <= than)) {
    throw new TestAssertionError(`${message} expected <= ${than}, got ${actual}`);
  }
}

// deno-lint-ignore no-explicit-any
type ErrorClass<E extends Error> = new (...args: any[]) => E;

export function assertThrows<E extends Error>(fn: () => unknown, type: ErrorClass<E>): E {
  try {
    fn();
  } catch (error) {
    if (error instanceof type) return error;
    throw new TestAssertionError(`expected ${type.name}, got ${String(error)}`);
  }
  throw new TestAssertionError(`expected ${type.name} to be thrown`);
}

export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  type: ErrorClass<E>,
): Promise<E> {
  try {
    await fn();
  } catch (error) {
    if (error instanceof type) return error;
    throw new TestAssertionError(`expected ${type.name}, got ${String(error)}`);
  }
  throw new TestAssertionError(`expected ${type.name} to be rejected`);
}
