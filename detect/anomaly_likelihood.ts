/**
 * Anomaly likelihood in the style of Numenta's HTM detector (Ahmad et al.
 * 2017): a raw anomaly score is only surprising relative to its own recent
 * history. Keep the raw scores of a long trailing window, compare the mean
 * of the last few with the long window's mean and spread, and report the
 * Gaussian tail probability of that short-term mean, log-scaled so that
 * 0.5 ≈ one-in-a-hundred-thousand events separate well near 1.
 */
import { DetectInputError } from "./errors.ts";

/** Longest history of raw scores kept (bounded ring buffer). */
export const MAX_LIKELIHOOD_HISTORY = 16384;

/** Options of {@link AnomalyLikelihood}. */
export interface AnomalyLikelihoodOptions {
  /** Raw scores in the long-term distribution (default 2000). */
  readonly historySize?: number;
  /** Raw scores averaged for the short-term mean (default 10). */
  readonly shortSize?: number;
  /** Scores before which the output stays at `warmupScore` (default 300). */
  readonly warmup?: number;
  /** Output during the warm-up (default 0.5, "no opinion"; 0 keeps alarms quiet). */
  readonly warmupScore?: number;
  /**
   * Compute the tail's logarithm directly (asymptotic series for large z)
   * instead of log-scaling 1 − tail (default false). The default's erfc
   * approximation has an absolute error near 1e-7, so deep tails, the part
   * of the scale that ranks strong anomalies, lose their order.
   */
  readonly preciseTail?: boolean;
}

/** Streaming anomaly-likelihood post-processor. */
export class AnomalyLikelihood {
  private readonly history: Float64Array;
  private readonly short: Float64Array;
  private hFill = 0;
  private hPos = 0;
  private hSum = 0;
  private hSumSq = 0;
  private sFill = 0;
  private sPos = 0;
  private sSum = 0;
  private readonly warmup: number;
  private readonly warmupScore: number;
  private readonly preciseTail: boolean;
  private seen = 0;

  constructor(options: AnomalyLikelihoodOptions = {}) {
    const historySize = options.historySize ?? 2000;
    const shortSize = options.shortSize ?? 10;
    if (!Number.isInteger(historySize) || historySize < 2 || historySize > MAX_LIKELIHOOD_HISTORY) {
      throw new DetectInputError(
        "AnomalyLikelihood.historySize",
        historySize,
        `2..${MAX_LIKELIHOOD_HISTORY}`,
      );
    }
    if (!Number.isInteger(shortSize) || shortSize < 1 || shortSize > historySize) {
      throw new DetectInputError("AnomalyLikelihood.shortSize", shortSize, `1..${historySize}`);
    }
    this.history = new Float64Array(historySize);
    this.short = new Float64Array(shortSize);
    this.warmup = options.warmup ?? 300;
    this.warmupScore = options.warmupScore ?? 0.5;
    this.preciseTail = options.preciseTail ?? false;
  }

  /** Folds in one raw score and returns the log-scaled likelihood in [0, 1]. */
  update(raw: number): number {
    if (!Number.isFinite(raw)) throw new DetectInputError("AnomalyLikelihood raw", raw, "finite");
    this.seen++;
    if (this.sFill === this.short.length) this.sSum -= this.short[this.sPos]!;
    else this.sFill++;
    this.short[this.sPos] = raw;
    this.sSum += raw;
    this.sPos = (this.sPos + 1) % this.short.length;
    const shortMean = this.sSum / this.sFill;
    let out = this.warmupScore;
    if (this.seen > this.warmup && this.hFill > 1) {
      const mean = this.hSum / this.hFill;
      const variance = Math.max(this.hSumSq / this.hFill - mean * mean, 0);
      const std = Math.max(Math.sqrt(variance), 1e-4);
      const z = (shortMean - mean) / std;
      out = this.preciseTail
        ? Math.min(1, Math.max(0, -log10GaussianTail(z) / 10))
        : logScale(1 - gaussianTail(z));
    }
    if (this.hFill === this.history.length) {
      const old = this.history[this.hPos]!;
      this.hSum -= old;
      this.hSumSq -= old * old;
    } else {
      this.hFill++;
    }
    this.history[this.hPos] = raw;
    this.hSum += raw;
    this.hSumSq += raw * raw;
    this.hPos = (this.hPos + 1) % this.history.length;
    return out;
  }
}

/** P(Z > z) for a standard normal Z (erfc via Abramowitz–Stegun 7.1.26). */
export function gaussianTail(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * x);
  const erfc = t * (0.254829592 +
    t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) *
    Math.exp(-x * x);
  return z >= 0 ? 0.5 * erfc : 1 - 0.5 * erfc;
}

/**
 * log10 P(Z > z), accurate in the deep tail: the erfc approximation for
 * z < 5, then the asymptotic series φ(z)/z · (1 − 1/z² + 3/z⁴).
 */
export function log10GaussianTail(z: number): number {
  if (z < 5) return Math.log10(Math.max(gaussianTail(z), 1e-300));
  const z2 = z * z;
  const series = 1 - 1 / z2 + 3 / (z2 * z2);
  return (-z2 / 2 - Math.log(z * Math.sqrt(2 * Math.PI)) + Math.log(series)) / Math.LN10;
}

/** Maps a likelihood near 1 onto [0, 1] logarithmically (1 − 1e-10 → 1). */
export function logScale(likelihood: number): number {
  const v = Math.log(1.0000000001 - likelihood) / Math.log(1e-10);
  return Math.min(1, Math.max(0, v));
}
