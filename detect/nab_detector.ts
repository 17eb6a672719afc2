/**
 * A univariate streaming detector for NAB-like series (one metric, unknown
 * range, daily patterns, occasional level shifts, spikes and pattern
 * changes). It is an ensemble of three classic, complementary raw scores,
 * each calibrated by its own HTM-style anomaly likelihood:
 *
 * - windowed Gaussian: how far the value lies from the recent mean (spikes,
 *   sudden level shifts);
 * - relative entropy: whether the distribution of the last few hours differs
 *   from the one before (sustained level or variance changes, spike bursts);
 * - contextual novelty: whether the recent sequence of quantised levels was
 *   ever seen (a jump at an unusual phase of a daily cycle, a missing jump).
 *
 * The output is the largest of the three likelihoods, passed through a
 * threshold-then-rest stage: a likelihood at or above `detectionScore` (0.5
 * on the log scale = a one-in-100 000 event, HTM's customary alarm level)
 * is emitted and followed by `restRows` rows of 0, so one event gives one
 * short pulse. Half-Space Trees remain available as an optional component.
 *
 * Memory per stream is bounded: fixed rings plus a capped context table.
 */
import { AnomalyLikelihood, type AnomalyLikelihoodOptions } from "./anomaly_likelihood.ts";
import { ContextNovelty, type ContextNoveltyOptions } from "./context_novelty.ts";
import { DetectInputError } from "./errors.ts";
import { HalfSpaceTrees } from "./half_space_trees.ts";
import { RelativeEntropy, type RelativeEntropyOptions } from "./relative_entropy.ts";
import { DetectionRest, WindowedGaussian } from "./windowed_stats.ts";

/** Raw scorers the ensemble can combine. */
export type UnivariateComponent = "gauss" | "entropy" | "context" | "hst";

/** One configuration for the whole corpus. */
export interface UnivariateDetectorOptions {
  /** Raw scorers combined (default gauss, entropy, context). */
  readonly components?: readonly UnivariateComponent[];
  /** Trailing rows of the windowed Gaussian (default 1000). */
  readonly gaussRows?: number;
  readonly entropy?: RelativeEntropyOptions;
  readonly context?: ContextNoveltyOptions;
  /** Likelihood stage applied to every component (default history 2000, short 3, quiet warm-up). */
  readonly likelihood?: AnomalyLikelihoodOptions;
  /** Output at or above this starts a rest (default 0.5). */
  readonly detectionScore?: number;
  /** Rows of 0 after a detection (default 200; 0 = no rest). */
  readonly restRows?: number;
  /** Shingle of the optional Half-Space Trees component (default 1). */
  readonly hstShingle?: number;
  readonly seed?: number;
}

/** Longest Half-Space-Trees shingle. */
export const MAX_SHINGLE = 64;

interface RawScorer {
  score(x: number): number;
  /** False while the scorer is still filling its windows (its score is a placeholder). */
  readonly ready: boolean;
}

/** Half-Space Trees on a range-normalised shingle (value and change per lag). */
class HstScorer implements RawScorer {
  private readonly hst: HalfSpaceTrees;
  private readonly recent: Float64Array;
  private readonly features: Float64Array;
  private min = Infinity;
  private max = -Infinity;
  private seen = 0;

  get ready(): boolean {
    return this.hst.ready;
  }

  constructor(private readonly shingle: number, seed: number) {
    if (!Number.isInteger(shingle) || shingle < 1 || shingle > MAX_SHINGLE) {
      throw new DetectInputError("UnivariateDetector.hstShingle", shingle, `1..${MAX_SHINGLE}`);
    }
    this.recent = new Float64Array(shingle + 1);
    this.features = new Float64Array(2 * shingle);
    this.hst = new HalfSpaceTrees({
      nFeatures: this.features.length,
      nTrees: 25,
      height: 8,
      windowSize: 250,
      seed,
    });
  }

  score(value: number): number {
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
    const raw = this.hst.scoreAndLearn(this.features);
    return this.hst.ready ? raw : 0;
  }
}

/** Streaming univariate detector; see the module comment. */
export class UnivariateDetector {
  private readonly parts: { raw: RawScorer; likelihood: AnomalyLikelihood }[];
  private readonly rest: DetectionRest;

  constructor(options: UnivariateDetectorOptions = {}) {
    const components = options.components ?? ["gauss", "entropy", "context"];
    if (components.length === 0) {
      throw new DetectInputError("UnivariateDetector.components", components, "at least one");
    }
    const likelihood: AnomalyLikelihoodOptions = {
      historySize: 2000,
      shortSize: 3,
      warmupScore: 0,
      ...options.likelihood,
    };
    this.parts = components.map((c) => {
      let raw: RawScorer;
      switch (c) {
        case "gauss":
          raw = new WindowedGaussian(options.gaussRows ?? 1000);
          break;
        case "entropy":
          raw = new RelativeEntropy(options.entropy);
          break;
        case "context":
          raw = new ContextNovelty(options.context);
          break;
        case "hst":
          raw = new HstScorer(options.hstShingle ?? 1, options.seed ?? 7);
          break;
        default:
          throw new DetectInputError(
            "UnivariateDetector.components",
            c,
            "gauss|entropy|context|hst",
          );
      }
      return { raw, likelihood: new AnomalyLikelihood(likelihood) };
    });
    this.rest = new DetectionRest(options.restRows ?? 200, options.detectionScore ?? 0.5);
  }

  /** Scores the next value; returns an anomaly score in [0, 1]. */
  update(value: number): number {
    if (!Number.isFinite(value)) {
      throw new DetectInputError("UnivariateDetector value", value, "finite");
    }
    let score = 0;
    for (const part of this.parts) {
      const raw = part.raw.score(value);
      // Placeholders from a filling window would make the likelihood's history degenerate.
      if (!part.raw.ready) continue;
      const s = part.likelihood.update(raw);
      if (s > score) score = s;
    }
    return this.rest.apply(score);
  }
}
