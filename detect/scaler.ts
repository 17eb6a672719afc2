/**
 * Online feature scaling: per-feature running mean and variance (Welford),
 * exact, O(features) memory, mergeable (Chan et al.'s parallel update) and
 * serialisable. Used to standardise telemetry before detectors see it.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";

/** Most features one scaler tracks; welding-arm samples have ~20. */
export const MAX_SCALER_FEATURES = 1024;
/** Variances below this are treated as this, so constant channels do not divide by 0. */
export const MIN_SCALER_VARIANCE = 1e-12;

/** Running mean/variance per feature. */
export class OnlineScaler {
  readonly count: Float64Array;
  readonly mean: Float64Array;
  /** Sum of squared deviations from the mean (Welford's M2). */
  readonly m2: Float64Array;

  constructor(readonly nFeatures: number) {
    if (!Number.isInteger(nFeatures) || nFeatures < 1 || nFeatures > MAX_SCALER_FEATURES) {
      throw new DetectInputError("OnlineScaler.nFeatures", nFeatures, `1..${MAX_SCALER_FEATURES}`);
    }
    this.count = new Float64Array(nFeatures);
    this.mean = new Float64Array(nFeatures);
    this.m2 = new Float64Array(nFeatures);
  }

  /** Adds one observation (NaN entries are skipped for that feature). */
  learn(x: ArrayLike<number>): void {
    assert(x.length === this.nFeatures, "observation width matches the scaler");
    for (let i = 0; i < this.nFeatures; i++) {
      const v = x[i]!;
      if (v !== v) continue;
      const n = this.count[i]! + 1;
      const delta = v - this.mean[i]!;
      const mean = this.mean[i]! + delta / n;
      this.m2[i] = this.m2[i]! + delta * (v - mean);
      this.mean[i] = mean;
      this.count[i] = n;
    }
  }

  /** Population variance of feature `i` (0 before two observations). */
  variance(i: number): number {
    const n = this.count[i]!;
    return n > 1 ? this.m2[i]! / n : 0;
  }

  /** Standard deviation of feature `i`, floored at {@link MIN_SCALER_VARIANCE}. */
  std(i: number): number {
    return Math.sqrt(Math.max(this.variance(i), MIN_SCALER_VARIANCE));
  }

  /** Writes `(x - mean) / std` into `out` (which may be `x`). */
  transform(x: ArrayLike<number>, out: Float64Array | Float32Array): void {
    assert(x.length === this.nFeatures && out.length >= this.nFeatures, "widths match");
    for (let i = 0; i < this.nFeatures; i++) out[i] = (x[i]! - this.mean[i]!) / this.std(i);
  }

  /** Forgets feature `i` (after a detected drift the old statistics mislead). */
  resetFeature(i: number): void {
    assert(i >= 0 && i < this.nFeatures, "feature index in range");
    this.count[i] = 0;
    this.mean[i] = 0;
    this.m2[i] = 0;
  }

  /** Folds another scaler's statistics in exactly (Chan et al. 1979). */
  merge(other: OnlineScaler): void {
    if (other.nFeatures !== this.nFeatures) {
      throw new DetectInputError("OnlineScaler.merge nFeatures", other.nFeatures, this.nFeatures);
    }
    for (let i = 0; i < this.nFeatures; i++) {
      const na = this.count[i]!, nb = other.count[i]!;
      if (nb === 0) continue;
      const n = na + nb;
      const delta = other.mean[i]! - this.mean[i]!;
      this.mean[i] = this.mean[i]! + delta * nb / n;
      this.m2[i] = this.m2[i]! + other.m2[i]! + delta * delta * na * nb / n;
      this.count[i] = n;
    }
  }

  /** Bytes of {@link toBytes}' output. */
  get byteLength(): number {
    return 4 + 24 * this.nFeatures;
  }

  /** Compact little-endian encoding: nFeatures, then count/mean/m2 as float64. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.byteLength);
    const view = new DataView(out.buffer);
    view.setUint32(0, this.nFeatures, true);
    let o = 4;
    for (const arr of [this.count, this.mean, this.m2]) {
      for (let i = 0; i < this.nFeatures; i++, o += 8) view.setFloat64(o, arr[i]!, true);
    }
    return out;
  }

  /** Inverse of {@link toBytes}; throws {@link DetectInputError} on bad input. */
  static fromBytes(bytes: Uint8Array): OnlineScaler {
    if (bytes.length < 4) throw new DetectInputError("scaler bytes", bytes.length, ">= 4 bytes");
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = view.getUint32(0, true);
    const scaler = new OnlineScaler(n);
    if (bytes.length !== scaler.byteLength) {
      throw new DetectInputError("scaler bytes.length", bytes.length, scaler.byteLength);
    }
    let o = 4;
    for (const arr of [scaler.count, scaler.mean, scaler.m2]) {
      for (let i = 0; i < n; i++, o += 8) arr[i] = view.getFloat64(o, true);
    }
    return scaler;
  }
}
