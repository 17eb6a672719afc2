/**
 * Bounded trailing windows for streaming univariate detectors: a fixed ring
 * of recent values, the windowed-Gaussian surprise of a value against the
 * ring (the classic "windowed Gaussian" NAB baseline, before any
 * likelihood stage), and the threshold-then-rest post-processing that turns
 * a score stream into short detection pulses.
 */
import { DetectInputError } from "./errors.ts";

/** Largest ring the helpers accept (memory stays bounded per stream). */
export const MAX_WINDOW_ROWS = 1 << 16;

function checkSize(what: string, size: number): void {
  if (!Number.isInteger(size) || size < 1 || size > MAX_WINDOW_ROWS) {
    throw new DetectInputError(what, size, `1..${MAX_WINDOW_ROWS}`);
  }
}

/** Fixed-capacity ring of the most recent values. */
export class RingBuffer {
  private readonly buf: Float64Array;
  private pos = 0;
  private fillCount = 0;

  constructor(capacity: number) {
    checkSize("RingBuffer.capacity", capacity);
    this.buf = new Float64Array(capacity);
  }

  /** Values held (≤ capacity). */
  get size(): number {
    return this.fillCount;
  }

  get capacity(): number {
    return this.buf.length;
  }

  /** Appends `x`, dropping the oldest value when full; returns the dropped value or NaN. */
  push(x: number): number {
    const dropped = this.fillCount === this.buf.length ? this.buf[this.pos]! : NaN;
    this.buf[this.pos] = x;
    this.pos = (this.pos + 1) % this.buf.length;
    if (this.fillCount < this.buf.length) this.fillCount++;
    return dropped;
  }

  /** The k-th most recent value (0 = newest); k < size. */
  get(k: number): number {
    const n = this.buf.length;
    return this.buf[(((this.pos - 1 - k) % n) + n) % n]!;
  }
}

/**
 * Surprise of each value against the mean and spread of the previous
 * `windowRows` values: |x − mean| / std (a z-score), then the value joins
 * the window. Running sums make it O(1) per row.
 */
export class WindowedGaussian {
  private readonly ring: RingBuffer;
  private sum = 0;
  private sumSq = 0;
  private readonly minRows: number;

  constructor(windowRows: number, minRows = 10) {
    checkSize("WindowedGaussian.windowRows", windowRows);
    this.ring = new RingBuffer(windowRows);
    this.minRows = minRows;
  }

  /** True once `minRows` values are in the window. */
  get ready(): boolean {
    return this.ring.size > this.minRows;
  }

  /** z-score of `x` against the window before it; 0 until `minRows` values are seen. */
  score(x: number): number {
    let z = 0;
    const n = this.ring.size;
    if (n >= this.minRows) {
      const mean = this.sum / n;
      const std = Math.sqrt(Math.max(this.sumSq / n - mean * mean, 0));
      // The floor keeps a flat line from dividing by zero without hiding a real step.
      z = Math.abs(x - mean) / (std + 1e-9 + 1e-6 * Math.abs(mean));
    }
    const dropped = this.ring.push(x);
    if (!Number.isNaN(dropped)) {
      this.sum -= dropped;
      this.sumSq -= dropped * dropped;
    }
    this.sum += x;
    this.sumSq += x * x;
    return z;
  }
}

/**
 * Threshold-then-rest: a score at or above `detectionScore` passes and
 * starts a rest of `restRows` rows whose output is 0. Benchmarks such as
 * NAB count every row above threshold, so one alarm per event (a short
 * pulse rather than a plateau) is the standard post-processing.
 */
export class DetectionRest {
  private left = 0;

  constructor(readonly restRows: number, readonly detectionScore: number) {
    if (!Number.isInteger(restRows) || restRows < 0 || restRows > MAX_WINDOW_ROWS) {
      throw new DetectInputError("DetectionRest.restRows", restRows, `0..${MAX_WINDOW_ROWS}`);
    }
  }

  apply(score: number): number {
    if (this.left > 0) {
      this.left--;
      return 0;
    }
    if (score >= this.detectionScore) this.left = this.restRows;
    return score;
  }
}
