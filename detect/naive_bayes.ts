/**
 * Incremental Gaussian Naive Bayes: per class, per feature running mean and
 * variance (Welford). Sufficient statistics merge exactly (Chan et al.), so
 * two peers' models combine into the model of their pooled data.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";

/** Most classes (fault labels) one model tracks. */
export const MAX_NB_CLASSES = 64;
/** Most features one model tracks. */
export const MAX_NB_FEATURES = 1024;
/**
 * Variance added to every Gaussian, relative to the feature's pooled
 * variance; stops a class seen with one constant value from giving zero
 * likelihood to everything else.
 */
export const NB_VARIANCE_SMOOTHING = 1e-9;

const LOG_2PI = Math.log(2 * Math.PI);

/** Gaussian Naive Bayes over `nFeatures` numbers and `nClasses` labels 0..nClasses-1. */
export class GaussianNaiveBayes {
  /** Weight seen per class. */
  readonly classCount: Float64Array;
  /** `[class][feature]` running means. */
  readonly mean: Float64Array;
  /** `[class][feature]` sums of squared deviations. */
  readonly m2: Float64Array;
  private readonly logLik: Float64Array;

  constructor(readonly nFeatures: number, readonly nClasses: number) {
    if (!Number.isInteger(nFeatures) || nFeatures < 1 || nFeatures > MAX_NB_FEATURES) {
      throw new DetectInputError(
        "GaussianNaiveBayes.nFeatures",
        nFeatures,
        `1..${MAX_NB_FEATURES}`,
      );
    }
    if (!Number.isInteger(nClasses) || nClasses < 2 || nClasses > MAX_NB_CLASSES) {
      throw new DetectInputError("GaussianNaiveBayes.nClasses", nClasses, `2..${MAX_NB_CLASSES}`);
    }
    this.classCount = new Float64Array(nClasses);
    this.mean = new Float64Array(nClasses * nFeatures);
    this.m2 = new Float64Array(nClasses * nFeatures);
    this.logLik = new Float64Array(nClasses);
  }

  /** Total weight seen. */
  get total(): number {
    let s = 0;
    for (let c = 0; c < this.nClasses; c++) s += this.classCount[c]!;
    return s;
  }

  private checkLabel(label: number): void {
    if (!Number.isInteger(label) || label < 0 || label >= this.nClasses) {
      throw new DetectInputError(
        "GaussianNaiveBayes label",
        label,
        `integer 0..${this.nClasses - 1}`,
      );
    }
  }

  /** Learns one labelled observation. */
  learn(x: ArrayLike<number>, label: number, weight = 1): void {
    this.checkLabel(label);
    if (x.length !== this.nFeatures) {
      throw new DetectInputError("GaussianNaiveBayes observation length", x.length, this.nFeatures);
    }
    const n = this.classCount[label]! + weight;
    const base = label * this.nFeatures;
    for (let j = 0; j < this.nFeatures; j++) {
      const v = x[j]!;
      const delta = v - this.mean[base + j]!;
      const mean = this.mean[base + j]! + delta * weight / n;
      this.m2[base + j] = this.m2[base + j]! + weight * delta * (v - mean);
      this.mean[base + j] = mean;
    }
    this.classCount[label] = n;
  }

  /** Variance of feature `j` within class `c`. */
  variance(c: number, j: number): number {
    const n = this.classCount[c]!;
    return n > 0 ? this.m2[c * this.nFeatures + j]! / n : 0;
  }

  private smoothing(): number {
    let maxVar = 0;
    for (let c = 0; c < this.nClasses; c++) {
      for (let j = 0; j < this.nFeatures; j++) maxVar = Math.max(maxVar, this.variance(c, j));
    }
    return NB_VARIANCE_SMOOTHING * Math.max(maxVar, 1);
  }

  /** Writes class probabilities into `out` (uniform before any learning). */
  predictProba(
    x: ArrayLike<number>,
    out: Float64Array = new Float64Array(this.nClasses),
  ): Float64Array {
    assert(out.length >= this.nClasses, "output has a slot per class");
    const total = this.total;
    if (total === 0) {
      out.fill(1 / this.nClasses);
      return out;
    }
    const eps = this.smoothing();
    let best = -Infinity;
    for (let c = 0; c < this.nClasses; c++) {
      const n = this.classCount[c]!;
      if (n === 0) {
        this.logLik[c] = -Infinity;
        continue;
      }
      let ll = Math.log(n / total);
      const base = c * this.nFeatures;
      for (let j = 0; j < this.nFeatures; j++) {
        const v = this.m2[base + j]! / n + eps;
        const d = x[j]! - this.mean[base + j]!;
        ll -= 0.5 * (LOG_2PI + Math.log(v) + d * d / v);
      }
      this.logLik[c] = ll;
      if (ll > best) best = ll;
    }
    let sum = 0;
    for (let c = 0; c < this.nClasses; c++) {
      const p = Math.exp(this.logLik[c]! - best);
      out[c] = p;
      sum += p;
    }
    for (let c = 0; c < this.nClasses; c++) out[c] = out[c]! / sum;
    return out;
  }

  /** Most probable class. */
  predict(x: ArrayLike<number>): number {
    const p = this.predictProba(x);
    let best = 0;
    for (let c = 1; c < this.nClasses; c++) if (p[c]! > p[best]!) best = c;
    return best;
  }

  /** Folds `other`'s sufficient statistics in exactly. */
  merge(other: GaussianNaiveBayes): void {
    if (other.nFeatures !== this.nFeatures || other.nClasses !== this.nClasses) {
      throw new DetectInputError(
        "GaussianNaiveBayes.merge shape",
        `${other.nFeatures}×${other.nClasses}`,
        `${this.nFeatures}×${this.nClasses}`,
      );
    }
    for (let c = 0; c < this.nClasses; c++) {
      const na = this.classCount[c]!, nb = other.classCount[c]!;
      if (nb === 0) continue;
      const n = na + nb;
      const base = c * this.nFeatures;
      for (let j = 0; j < this.nFeatures; j++) {
        const delta = other.mean[base + j]! - this.mean[base + j]!;
        this.mean[base + j] = this.mean[base + j]! + delta * nb / n;
        this.m2[base + j] = this.m2[base + j]! + other.m2[base + j]! + delta * delta * na * nb / n;
      }
      this.classCount[c] = n;
    }
  }

  /** Size of {@link toBytes}' output. */
  get byteLength(): number {
    return 8 + 8 * this.nClasses * (1 + 2 * this.nFeatures);
  }

  /** Little-endian: nFeatures, nClasses, then counts, means, M2s as float64. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.byteLength);
    const v = new DataView(out.buffer);
    v.setUint32(0, this.nFeatures, true);
    v.setUint32(4, this.nClasses, true);
    let o = 8;
    for (const arr of [this.classCount, this.mean, this.m2]) {
      for (let i = 0; i < arr.length; i++, o += 8) v.setFloat64(o, arr[i]!, true);
    }
    return out;
  }

  /** Inverse of {@link toBytes}. */
  static fromBytes(bytes: Uint8Array): GaussianNaiveBayes {
    if (bytes.length < 8) {
      throw new DetectInputError("naive Bayes bytes.length", bytes.length, ">= 8");
    }
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const nb = new GaussianNaiveBayes(v.getUint32(0, true), v.getUint32(4, true));
    if (bytes.length !== nb.byteLength) {
      throw new DetectInputError("naive Bayes bytes.length", bytes.length, nb.byteLength);
    }
    let o = 8;
    for (const arr of [nb.classCount, nb.mean, nb.m2]) {
      for (let i = 0; i < arr.length; i++, o += 8) {
        const x = v.getFloat64(o, true);
        if (!Number.isFinite(x)) throw new DetectInputError("naive Bayes statistic", x, "finite");
        arr[i] = x;
      }
    }
    return nb;
  }
}
