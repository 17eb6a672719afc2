/**
 * Turns a welding-arm sample into the channel vector the detectors see:
 * the nine raw channels (current, voltage, temperature, six joints) and
 * their first differences. No state beyond the previous sample.
 */
import { DetectInputError } from "./errors.ts";
import { ARM_JOINTS, type TelemetrySample } from "./types.ts";

/** Raw channel names, in vector order. */
export const ARM_CHANNELS: readonly string[] = [
  "current",
  "voltage",
  "temperature",
  ...Array.from({ length: ARM_JOINTS }, (_, j) => `joint${j}`),
];
/** Raw channels per sample. */
export const ARM_CHANNEL_COUNT = ARM_CHANNELS.length;
/** Feature width: each channel's value and its first difference. */
export const ARM_FEATURE_COUNT = 2 * ARM_CHANNEL_COUNT;
/** Index of the first joint in the channel vector. */
export const FIRST_JOINT_CHANNEL = 3;

/**
 * Checks a sample's shape and values; throws {@link DetectInputError} naming
 * the first bad field.
 */
export function validateSample(sample: TelemetrySample): void {
  if (typeof sample !== "object" || sample === null) {
    throw new DetectInputError("sample", sample, "a TelemetrySample object");
  }
  if (typeof sample.assetId !== "string" || sample.assetId.length === 0) {
    throw new DetectInputError("sample.assetId", sample.assetId, "a non-empty string");
  }
  if (!Number.isFinite(sample.atMs)) {
    throw new DetectInputError("sample.atMs", sample.atMs, "finite ms");
  }
  if (!Array.isArray(sample.joints) || sample.joints.length !== ARM_JOINTS) {
    throw new DetectInputError("sample.joints", sample.joints, `${ARM_JOINTS} angles in radians`);
  }
  for (let j = 0; j < ARM_JOINTS; j++) {
    if (!Number.isFinite(sample.joints[j])) {
      throw new DetectInputError(
        `sample.joints[${j}]`,
        sample.joints[j],
        "a finite angle in radians",
      );
    }
  }
  for (const key of ["current", "voltage", "temperature"] as const) {
    if (!Number.isFinite(sample[key])) {
      throw new DetectInputError(`sample.${key}`, sample[key], "finite");
    }
  }
  if (typeof sample.mode !== "string") {
    throw new DetectInputError("sample.mode", sample.mode, "a string");
  }
}

/** Writes the raw channel values of `sample` into `out` (length {@link ARM_CHANNEL_COUNT}). */
export function channelsOf(sample: TelemetrySample, out: Float64Array): void {
  out[0] = sample.current;
  out[1] = sample.voltage;
  out[2] = sample.temperature;
  for (let j = 0; j < ARM_JOINTS; j++) out[FIRST_JOINT_CHANNEL + j] = sample.joints[j]!;
}

/** Squashes a z-score into [0, 1] (±4σ span the unit interval), the detectors' input scale. */
export function squash(z: number): number {
  const u = 0.5 + z / 8;
  return u < 0 ? 0 : u > 1 ? 1 : u;
}
