/**
 * Contextual novelty of a univariate stream, in the spirit of the
 * "contextual anomaly" family of NAB detectors: a value is judged in the
 * context of the values just before it. Values are normalised by the range
 * seen so far and quantised into `levels` levels; the level sequences ending
 * at the current row, of every length 2..`order`, are looked up in a table
 * of sequences seen before. The score is the fraction of those sequences
 * that were never seen: 0 for a familiar pattern, 1 for a completely new
 * one. A jump at an unusual phase of a daily pattern, a missing jump, or a
 * value outside the known range all make unseen sequences.
 *
 * The table is bounded: when it holds more than `maxContexts` sequences all
 * counts are halved and sequences seen only once are forgotten.
 */
import { DetectInputError } from "./errors.ts";

/** Most quantisation levels. */
export const MAX_CONTEXT_LEVELS = 64;
/** Longest context. */
export const MAX_CONTEXT_ORDER = 8;

/** Options of {@link ContextNovelty}. */
export interface ContextNoveltyOptions {
  /** Quantisation levels over the range seen so far (default 8). */
  readonly levels?: number;
  /** Longest level sequence (default 4). */
  readonly order?: number;
  /** Table size that triggers forgetting (default 50 000). */
  readonly maxContexts?: number;
}

/** Streaming contextual novelty; see the module comment. */
export class ContextNovelty {
  private readonly levels: number;
  private readonly order: number;
  private readonly maxContexts: number;
  private readonly counts = new Map<number, number>();
  private readonly recent: Int32Array;
  private recentCount = 0;
  private min = Infinity;
  private max = -Infinity;

  constructor(options: ContextNoveltyOptions = {}) {
    this.levels = options.levels ?? 8;
    this.order = options.order ?? 4;
    this.maxContexts = options.maxContexts ?? 50_000;
    if (!Number.isInteger(this.levels) || this.levels < 2 || this.levels > MAX_CONTEXT_LEVELS) {
      throw new DetectInputError("ContextNovelty.levels", this.levels, `2..${MAX_CONTEXT_LEVELS}`);
    }
    if (!Number.isInteger(this.order) || this.order < 2 || this.order > MAX_CONTEXT_ORDER) {
      throw new DetectInputError("ContextNovelty.order", this.order, `2..${MAX_CONTEXT_ORDER}`);
    }
    if (!Number.isInteger(this.maxContexts) || this.maxContexts < 16) {
      throw new DetectInputError("ContextNovelty.maxContexts", this.maxContexts, ">= 16");
    }
    this.recent = new Int32Array(this.order);
  }

  /** True once a full-length context exists. */
  get ready(): boolean {
    return this.recentCount === this.order;
  }

  /** Adds `x`; returns the fraction of its contexts (lengths 2..order) never seen before. */
  score(x: number): number {
    if (x < this.min) this.min = x;
    if (x > this.max) this.max = x;
    const span = this.max - this.min;
    const level = span > 0
      ? Math.min(this.levels - 1, Math.floor((x - this.min) / span * this.levels))
      : 0;
    this.recent.copyWithin(1, 0);
    this.recent[0] = level;
    if (this.recentCount < this.order) this.recentCount++;
    // Exact key: digits base (levels + 1) of the sequence, newest first, then its length.
    const base = this.levels + 1;
    let key = 0, scale = 1, novel = 0, tested = 0;
    for (let len = 1; len <= this.recentCount; len++) {
      key += (this.recent[len - 1]! + 1) * scale;
      scale *= base;
      const seen = this.counts.get(key) ?? 0;
      if (len >= 2) {
        tested++;
        if (seen === 0) novel++;
      }
      this.counts.set(key, seen + 1);
    }
    if (this.counts.size > this.maxContexts) this.forget();
    return tested > 0 ? novel / tested : 0;
  }

  private forget(): void {
    for (const [key, count] of this.counts) {
      if (count <= 1) this.counts.delete(key);
      else this.counts.set(key, count >> 1);
    }
  }
}
