/**
 * Typed errors of `detect/`. Each names the offending value and what was
 * expected, so a gateway log line is enough to find the cause.
 */

/** A caller passed a value outside what a learner or codec accepts. */
export class DetectInputError extends Error {
  override name = "DetectInputError";
  /**
   * @param what the parameter or field, e.g. `"HalfSpaceTrees.height"`
   * @param value the value that was passed
   * @param expected what would have been accepted
   */
  constructor(readonly what: string, readonly value: unknown, readonly expected: string | number) {
    super(`${what} = ${describe(value)}; expected ${expected}`);
  }
}

/** A `.tflite` file could not be parsed or uses something the loader lacks. */
export class TfliteModelError extends Error {
  override name = "TfliteModelError";
  constructor(message: string) {
    super(message);
  }
}

/** Why a shared model was refused; the running model is kept in every case. */
export type ModelRejectReason =
  | "oversized"
  | "truncated"
  | "bad-magic"
  | "unsupported-format"
  | "wrong-kind"
  | "wrong-asset-kind"
  | "unsigned"
  | "bad-signature"
  | "stale-version"
  | "incompatible"
  | "corrupt-payload";

/** A shared model was refused; `reason` says why. */
export class ModelRejectedError extends Error {
  override name = "ModelRejectedError";
  constructor(readonly reason: ModelRejectReason, detail: string) {
    super(`model refused (${reason}): ${detail}`);
  }
}

/** Renders a value for an error message without dumping huge arrays. */
export function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.slice(0, 80));
  if (typeof value === "number" || typeof value === "boolean" || value == null) {
    return String(value);
  }
  if (ArrayBuffer.isView(value)) {
    return `${value.constructor.name}(${(value as Uint8Array).length})`;
  }
  if (Array.isArray(value)) return `array(${value.length})`;
  try {
    return JSON.stringify(value).slice(0, 120);
  } catch {
    return typeof value;
  }
}
