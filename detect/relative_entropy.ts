/**
 * Relative-entropy change score for a univariate stream (after Wang et al.,
 * "Statistical techniques for online anomaly detection in data centers",
 * 2011): the histogram of the most recent `shortRows` values is compared with
 * the histogram of the `referenceRows` values before them, over bins spanning
 * both windows. The statistic is 2·n·KL(recent ‖ reference), which is
 * asymptotically χ² with (bins − 1) degrees of freedom when both windows come
 * from the same distribution, so it grows when the value distribution changes
 * (level shifts, new spikes, a missing pattern), not merely when one value
 * is large.
 */
import { DetectInputError } from "./errors.ts";
import { RingBuffer } from "./windowed_stats.ts";

/** Most histogram bins. */
export const MAX_ENTROPY_BINS = 256;

/** Options of {@link RelativeEntropy}. */
export interface RelativeEntropyOptions {
  /** Recent rows whose distribution is tested (default 24). */
  readonly shortRows?: number;
  /** Rows before them forming the reference distribution (default 400). */
  readonly referenceRows?: number;
  /** Equal-width bins over the two windows' range (default 8). */
  readonly bins?: number;
}

/** Streaming relative-entropy score; see the module comment. */
export class RelativeEntropy {
  private readonly ring: RingBuffer;
  private readonly shortRows: number;
  private readonly referenceRows: number;
  private readonly recent: Float64Array;
  private readonly reference: Float64Array;

  constructor(options: RelativeEntropyOptions = {}) {
    this.shortRows = options.shortRows ?? 24;
    this.referenceRows = options.referenceRows ?? 400;
    const bins = options.bins ?? 8;
    if (!Number.isInteger(this.shortRows) || this.shortRows < 2) {
      throw new DetectInputError("RelativeEntropy.shortRows", this.shortRows, ">= 2");
    }
    if (!Number.isInteger(this.referenceRows) || this.referenceRows < this.shortRows) {
      throw new DetectInputError(
        "RelativeEntropy.referenceRows",
        this.referenceRows,
        `>= shortRows (${this.shortRows})`,
      );
    }
    if (!Number.isInteger(bins) || bins < 2 || bins > MAX_ENTROPY_BINS) {
      throw new DetectInputError("RelativeEntropy.bins", bins, `2..${MAX_ENTROPY_BINS}`);
    }
    this.ring = new RingBuffer(this.shortRows + this.referenceRows);
    this.recent = new Float64Array(bins);
    this.reference = new Float64Array(bins);
  }

  /** True once both windows are full (earlier scores are 0 placeholders). */
  get ready(): boolean {
    return this.ring.size === this.ring.capacity;
  }

  /** Adds `x` and returns 2·n·KL(recent ‖ reference); 0 until both windows are full. */
  score(x: number): number {
    this.ring.push(x);
    const total = this.shortRows + this.referenceRows;
    if (this.ring.size < total) return 0;
    let lo = Infinity, hi = -Infinity;
    for (let k = 0; k < total; k++) {
      const v = this.ring.get(k);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const bins = this.recent.length;
    const span = hi - lo > 0 ? hi - lo : 1;
    this.recent.fill(0);
    this.reference.fill(0);
    const binOf = (v: number) => Math.min(bins - 1, Math.floor((v - lo) / span * bins));
    for (let k = 0; k < this.shortRows; k++) {
      const b = binOf(this.ring.get(k));
      this.recent[b] = this.recent[b]! + 1;
    }
    for (let k = this.shortRows; k < total; k++) {
      const b = binOf(this.ring.get(k));
      this.reference[b] = this.reference[b]! + 1;
    }
    // Half-count (Jeffreys) smoothing keeps an empty reference bin finite.
    const refTotal = this.referenceRows + 0.5 * bins;
    let kl = 0;
    for (let b = 0; b < bins; b++) {
      const p = this.recent[b]! / this.shortRows;
      if (p > 0) kl += p * Math.log(p / ((this.reference[b]! + 0.5) / refTotal));
    }
    return 2 * this.shortRows * kl;
  }
}
