/**
 * A multivariate streaming detector for slowly sampled process data (SKAB's
 * kind: a handful of correlated sensors at 1 Hz): PCA monitoring with
 * Hotelling's T² (distance inside the principal subspace) and the Q / SPE
 * statistic (distance from it), the classic process-monitoring pair.
 *
 * Fit on a short anomaly-free training prefix: per-channel standardisation,
 * the correlation matrix's eigenvectors, the number of components that
 * explain `explainedVariance` of it. Streaming, each row's T² and Q are
 * averaged over a short trailing window (a fault is a regime, not a spike,
 * and averaging removes sensor noise) and divided by thresholds taken from
 * the training rows' own smoothed scores (quantile × factor). The decision
 * score is the larger ratio: > 1 means anomalous.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";
import { symmetricEigen } from "./linalg.ts";

/** Longest smoothing window: the ring buffers of recent scores are this big. */
export const MAX_SMOOTHING_ROWS = 4096;
/** Most channels; the eigen-solver is O(d³) per sweep. */
export const MAX_PCA_CHANNELS = 64;

/** Tuning of {@link PcaMonitor}; one configuration serves a whole benchmark. */
export interface PcaMonitorOptions {
  /** Fraction of standardised variance the principal subspace keeps (default 0.9). */
  readonly explainedVariance?: number;
  /** Trailing rows averaged into the decision score (default 20). */
  readonly smoothingRows?: number;
  /** Quantile of smoothed training scores used as the base threshold (default 0.99). */
  readonly quantile?: number;
  /** Multiplier on that quantile (default 1.5). */
  readonly thresholdFactor?: number;
  /**
   * Keep the training part's last scores in the smoothing windows, for a
   * stream that continues right after its training rows (SKAB's protocol),
   * so the first scored rows are smoothed like the rest (default false:
   * the windows start empty).
   */
  readonly continueFromTraining?: boolean;
}

/** Trailing mean over a fixed ring of values. */
class TrailingMean {
  private readonly ring: Float64Array;
  private fill = 0;
  private pos = 0;
  private sum = 0;
  constructor(size: number) {
    this.ring = new Float64Array(size);
  }
  push(x: number): number {
    if (this.fill === this.ring.length) this.sum -= this.ring[this.pos]!;
    else this.fill++;
    this.ring[this.pos] = x;
    this.sum += x;
    this.pos = (this.pos + 1) % this.ring.length;
    return this.sum / this.fill;
  }
  clear(): void {
    this.fill = this.pos = 0;
    this.sum = 0;
  }
}

function quantileOf(values: number[], q: number): number {
  const sorted = values.slice().sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** PCA T² + Q monitor; see the module comment. */
export class PcaMonitor {
  readonly d: number;
  /** Components kept in the principal subspace. */
  readonly k: number;
  private readonly mean: Float64Array;
  private readonly std: Float64Array;
  private readonly vectors: Float64Array;
  private readonly values: Float64Array;
  private readonly z: Float64Array;
  private readonly t2Mean: TrailingMean;
  private readonly qMean: TrailingMean;
  readonly t2Threshold: number;
  readonly qThreshold: number;

  /** Fits on `training` rows (anomaly-free by the benchmark's protocol). */
  constructor(training: readonly ArrayLike<number>[], options: PcaMonitorOptions = {}) {
    const first = training[0];
    if (!first || training.length < 10) {
      throw new DetectInputError("PcaMonitor training rows", training.length, ">= 10 rows");
    }
    const d = first.length;
    if (d < 1 || d > MAX_PCA_CHANNELS) {
      throw new DetectInputError("PcaMonitor channels", d, `1..${MAX_PCA_CHANNELS}`);
    }
    this.d = d;
    const smoothingRows = options.smoothingRows ?? 20;
    if (
      !Number.isInteger(smoothingRows) || smoothingRows < 1 || smoothingRows > MAX_SMOOTHING_ROWS
    ) {
      throw new DetectInputError(
        "PcaMonitor.smoothingRows",
        smoothingRows,
        `1..${MAX_SMOOTHING_ROWS}`,
      );
    }
    const n = training.length;
    this.mean = new Float64Array(d);
    this.std = new Float64Array(d);
    for (const row of training) {
      for (let j = 0; j < d; j++) this.mean[j] = this.mean[j]! + row[j]! / n;
    }
    for (const row of training) {
      for (let j = 0; j < d; j++) this.std[j] = this.std[j]! + (row[j]! - this.mean[j]!) ** 2 / n;
    }
    for (let j = 0; j < d; j++) this.std[j] = Math.sqrt(Math.max(this.std[j]!, 1e-12));
    const corr = new Float64Array(d * d);
    for (const row of training) {
      for (let i = 0; i < d; i++) {
        const zi = (row[i]! - this.mean[i]!) / this.std[i]!;
        for (let j = 0; j < d; j++) {
          corr[i * d + j] = corr[i * d + j]! + zi * (row[j]! - this.mean[j]!) / this.std[j]! / n;
        }
      }
    }
    const { values, vectors } = symmetricEigen(corr, d);
    let totalVar = 0;
    for (let i = 0; i < d; i++) totalVar += Math.max(values[i]!, 0);
    const explained = options.explainedVariance ?? 0.9;
    let k = 0, acc = 0;
    while (k < d && acc < explained * totalVar) acc += Math.max(values[k++]!, 0);
    this.k = Math.max(1, Math.min(k, d - 1));
    this.values = values.map((v) => Math.max(v, 1e-6));
    this.vectors = vectors;
    this.z = new Float64Array(d);
    this.t2Mean = new TrailingMean(smoothingRows);
    this.qMean = new TrailingMean(smoothingRows);
    const t2s: number[] = [], qs: number[] = [];
    for (const row of training) {
      const [t2, q] = this.rawScores(row);
      t2s.push(this.t2Mean.push(t2));
      qs.push(this.qMean.push(q));
    }
    const quantile = options.quantile ?? 0.99;
    const factor = options.thresholdFactor ?? 1.5;
    this.t2Threshold = Math.max(quantileOf(t2s, quantile) * factor, 1e-9);
    this.qThreshold = Math.max(quantileOf(qs, quantile) * factor, 1e-9);
    if (!(options.continueFromTraining ?? false)) {
      this.t2Mean.clear();
      this.qMean.clear();
    }
  }

  /** T² and Q of one row, before smoothing. */
  rawScores(row: ArrayLike<number>): [number, number] {
    assert(row.length === this.d, "row width matches training");
    const d = this.d;
    for (let j = 0; j < d; j++) this.z[j] = (row[j]! - this.mean[j]!) / this.std[j]!;
    let t2 = 0, q = 0;
    for (let c = 0; c < d; c++) {
      let proj = 0;
      for (let j = 0; j < d; j++) proj += this.vectors[j * d + c]! * this.z[j]!;
      if (c < this.k) t2 += proj * proj / this.values[c]!;
      else q += proj * proj;
    }
    return [t2, q];
  }

  /** Scores the next row of the stream: > 1 means anomalous. */
  update(row: ArrayLike<number>): number {
    const [t2, q] = this.rawScores(row);
    const st2 = this.t2Mean.push(t2) / this.t2Threshold;
    const sq = this.qMean.push(q) / this.qThreshold;
    return Math.max(st2, sq);
  }
}
