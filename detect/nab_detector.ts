/**
 * A univariate streaming detector for NAB-like series (one metric, unknown
 * range, daily patterns, occasional level shifts and spikes). Values are
 * normalised with the range seen so far; Half-Space Trees score a short
 * shingle of recent normalised values plus their changes; an
 * anomaly-likelihood stage turns the raw HST score into a calibrated score.
 */
import { AnomalyLikelihood, type AnomalyLikelihoodOptions } from "./anomaly_likelihood.ts";
import { DetectInputError } from "./errors.ts";
import { HalfSpaceTrees } from "./half_space_trees.ts";

/** Longest shingle (recent values fed to the trees together). */
export const MAX_SHINGLE = 64;

/** One configuration for the whole corpus. */
export interface UnivariateDetectorOptions {
  /** Recent values in the feature vector (default 4). */
  readonly shingle?: number;
  readonly nTrees?: number;
  readonly height?: number;
  readonly windowSize?: number;
  readonly seed?: number;
  readonly likelihood?: AnomalyLikelihoodOptions;
  /** Use the likelihood stage (default true). */
  readonly useLikelihood?: boolean;
  /** Raw score: Half-Space Trees or a Gaussian z of the value (default "hst"). */
  readonly raw?: "hst" | "gauss";
  /** Rows of recent output an onset must exceed (0 = off, default 0). */
  readonly onsetRows?: number;
  /** Factor applied to a score that does not exceed the recent maximum (default 0.5). */
  readonly onsetDamping?: number;
  /** EWMA rate of the Gaussian baseline (default 0.01). */
  readonly gaussRate?: number;
}

/** Streaming univariate detector; see the module comment. */
export class UnivariateDetector {
  private readonly hst: HalfSpaceTrees;
  private readonly likelihood: AnomalyLikelihood;
  private readonly recent: Float64Array;
  private readonly features: Float64Array;
  private readonly shingle: number;
  private readonly useLikelihood: boolean;
  private readonly rawMode: "hst" | "gauss";
  private readonly onset: Float64Array;
  private onsetPos = 0;
  private readonly gaussRate: number;
  private readonly onsetDamping: number;
  private ewMean = 0;
  private ewVar = 0;
  private min = Infinity;
  private max = -Infinity;
  private seen = 0;

  constructor(options: UnivariateDetectorOptions = {}) {
    this.shingle = options.shingle ?? 4;
    if (!Number.isInteger(this.shingle) || this.shingle < 1 || this.shingle > MAX_SHINGLE) {
      throw new DetectInputError("UnivariateDetector.shingle", this.shingle, `1..${MAX_SHINGLE}`);
    }
    this.recent = new Float64Array(this.shingle + 1);
    this.features = new Float64Array(2 * this.shingle);
    this.hst = new HalfSpaceTrees({
      nFeatures: this.features.length,
      nTrees: options.nTrees ?? 25,
      height: options.height ?? 8,
      windowSize: options.windowSize ?? 250,
      seed: options.seed ?? 7,
    });
    this.likelihood = new AnomalyLikelihood(options.likelihood);
    this.useLikelihood = options.useLikelihood ?? true;
    this.rawMode = options.raw ?? "hst";
    this.onset = new Float64Array(options.onsetRows ?? 0);
    this.gaussRate = options.gaussRate ?? 0.01;
    this.onsetDamping = options.onsetDamping ?? 0.5;
  }

  private gaussRaw(value: number): number {
    if (this.seen === 1) {
      this.ewMean = value;
      this.ewVar = 0;
      return 0;
    }
    const d = value - this.ewMean;
    const span = this.max - this.min;
    const std = Math.sqrt(this.ewVar) + 1e-3 * (span > 0 ? span : 1);
    const z = Math.abs(d) / std;
    this.ewMean += this.gaussRate * d;
    this.ewVar = (1 - this.gaussRate) * (this.ewVar + this.gaussRate * d * d);
    return 1 - 1 / (1 + z / 4);
  }

  private postProcess(score: number): number {
    const n = this.onset.length;
    if (n === 0) return score;
    let recentMax = 0;
    for (let i = 0; i < n; i++) if (this.onset[i]! > recentMax) recentMax = this.onset[i]!;
    this.onset[this.onsetPos] = score;
    this.onsetPos = (this.onsetPos + 1) % n;
    return score > recentMax ? score : score * this.onsetDamping;
  }

  /** Scores the next value; returns an anomaly score in [0, 1]. */
  update(value: number): number {
    if (!Number.isFinite(value)) {
      throw new DetectInputError("UnivariateDetector value", value, "finite");
    }
    if (value < this.min) this.min = value;
    if (value > this.max) this.max = value;
    this.seen++;
    this.recent.copyWithin(1, 0);
    this.recent[0] = value;
    const span = this.max - this.min;
    const scale = span > 0 ? 1 / span : 1;
    const s = this.shingle;
    for (let i = 0; i < s; i++) {
      const v = this.seen > i ? this.recent[i]! : value;
      const prev = this.seen > i + 1 ? this.recent[i + 1]! : v;
      this.features[i] = (v - this.min) * scale;
      this.features[s + i] = 0.5 + (v - prev) * scale / 2;
    }
    let raw: number;
    if (this.rawMode === "gauss") {
      raw = this.gaussRaw(value);
    } else {
      raw = this.hst.scoreAndLearn(this.features);
      if (!this.hst.ready) return 0;
    }
    return this.postProcess(this.useLikelihood ? this.likelihood.update(raw) : raw);
  }
}
