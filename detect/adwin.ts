/**
 * ADWIN (ADaptive WINdowing, Bifet & Gavaldà 2007), the ADWIN2 variant with
 * an exponential histogram: the window is kept as buckets of 2^row values
 * (at most `maxBuckets` per row), so memory is O(log W) and bounded by
 * {@link MAX_ADWIN_ROWS}. Whenever two sub-windows' means differ by more than
 * the Hoeffding-style bound ε_cut, the older part is dropped and a change is
 * reported; the gateway uses that to reset a drifted channel's statistics.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";

/**
 * Rows of the exponential histogram. Row r holds buckets of 2^r values, so 32
 * rows cover more than 4·10^9 values per window — years of 100 Hz telemetry.
 * Beyond it the oldest bucket is dropped, keeping memory fixed.
 */
export const MAX_ADWIN_ROWS = 32;
/** Upper bound on buckets per row (the paper's M). */
export const MAX_ADWIN_BUCKETS_PER_ROW = 64;

/** Construction options. */
export interface AdwinOptions {
  /** Confidence: false-alarm probability bound (default 0.002). */
  readonly delta?: number;
  /** Buckets per histogram row before two merge (default 5). */
  readonly maxBuckets?: number;
  /** Check for a cut every this many insertions (default 32). */
  readonly clock?: number;
  /** Smallest sub-window on either side of a cut (default 5). */
  readonly minSubWindow?: number;
}

/** Drift detector over a stream of numbers. */
export class Adwin {
  readonly delta: number;
  readonly maxBuckets: number;
  readonly clock: number;
  readonly minSubWindow: number;
  /** Per row: bucket totals and variances (sum of squared deviations), oldest first. */
  private readonly totals: Float64Array;
  private readonly variances: Float64Array;
  private readonly rowCount: Uint8Array;
  private rows = 0;
  private widthN = 0;
  private totalSum = 0;
  private varianceSum = 0;
  private ticks = 0;
  /** Number of changes detected so far. */
  detections = 0;

  constructor(options: AdwinOptions = {}) {
    this.delta = options.delta ?? 0.002;
    this.maxBuckets = options.maxBuckets ?? 5;
    this.clock = options.clock ?? 32;
    this.minSubWindow = options.minSubWindow ?? 5;
    if (!(this.delta > 0 && this.delta < 1)) {
      throw new DetectInputError("Adwin.delta", this.delta, "a number in (0, 1)");
    }
    if (
      !Number.isInteger(this.maxBuckets) || this.maxBuckets < 2 ||
      this.maxBuckets > MAX_ADWIN_BUCKETS_PER_ROW
    ) {
      throw new DetectInputError(
        "Adwin.maxBuckets",
        this.maxBuckets,
        `2..${MAX_ADWIN_BUCKETS_PER_ROW}`,
      );
    }
    if (!Number.isInteger(this.clock) || this.clock < 1) {
      throw new DetectInputError("Adwin.clock", this.clock, "a positive integer");
    }
    const slots = MAX_ADWIN_ROWS * (this.maxBuckets + 1);
    this.totals = new Float64Array(slots);
    this.variances = new Float64Array(slots);
    this.rowCount = new Uint8Array(MAX_ADWIN_ROWS);
  }

  /** Values in the current window. */
  get width(): number {
    return this.widthN;
  }

  /** Mean of the current window (0 when empty). */
  get mean(): number {
    return this.widthN > 0 ? this.totalSum / this.widthN : 0;
  }

  /** Population variance of the current window. */
  get variance(): number {
    return this.widthN > 0 ? this.varianceSum / this.widthN : 0;
  }

  /**
   * Adds `value`; returns true when a change was detected (the window then
   * holds only the recent, post-change part).
   */
  update(value: number): boolean {
    if (!Number.isFinite(value)) {
      throw new DetectInputError("Adwin.update value", value, "a finite number");
    }
    this.insert(value);
    this.ticks++;
    if (this.ticks % this.clock !== 0 || this.widthN < 2 * this.minSubWindow) return false;
    let changed = false;
    while (this.cutOnce()) changed = true;
    if (changed) this.detections++;
    return changed;
  }

  private slot(row: number, i: number): number {
    return row * (this.maxBuckets + 1) + i;
  }

  private insert(value: number): void {
    if (this.widthN > 0) {
      const mean = this.totalSum / this.widthN;
      this.varianceSum += this.widthN * (value - mean) * (value - mean) / (this.widthN + 1);
    }
    this.widthN++;
    this.totalSum += value;
    this.appendBucket(0, value, 0);
    for (let row = 0; row < this.rows; row++) {
      if (this.rowCount[row]! <= this.maxBuckets) break;
      // Merge the two oldest buckets of this row into one of the next row.
      const n = 2 ** row;
      const a = this.slot(row, 0), b = this.slot(row, 1);
      const ta = this.totals[a]!, tb = this.totals[b]!;
      const d = ta / n - tb / n;
      const mergedVar = this.variances[a]! + this.variances[b]! + n * n * d * d / (2 * n);
      this.shiftRow(row, 2);
      if (row + 1 >= MAX_ADWIN_ROWS) {
        // The histogram is full: forget the merged oldest values.
        this.removeFromTotals(2 * n, ta + tb, mergedVar);
      } else {
        this.appendBucket(row + 1, ta + tb, mergedVar);
      }
    }
    assert(this.rows <= MAX_ADWIN_ROWS, "ADWIN rows stay bounded");
  }

  private appendBucket(row: number, total: number, variance: number): void {
    const count = this.rowCount[row]!;
    assert(count <= this.maxBuckets, "a row has room before appending");
    const s = this.slot(row, count);
    this.totals[s] = total;
    this.variances[s] = variance;
    this.rowCount[row] = count + 1;
    if (row + 1 > this.rows) this.rows = row + 1;
  }

  /** Removes the `k` oldest buckets of `row`. */
  private shiftRow(row: number, k: number): void {
    const count = this.rowCount[row]!;
    const base = this.slot(row, 0);
    this.totals.copyWithin(base, base + k, base + count);
    this.variances.copyWithin(base, base + k, base + count);
    this.rowCount[row] = count - k;
    while (this.rows > 0 && this.rowCount[this.rows - 1] === 0) this.rows--;
  }

  private removeFromTotals(n: number, total: number, variance: number): void {
    const restN = this.widthN - n;
    const restTotal = this.totalSum - total;
    if (restN > 0) {
      const d = total / n - restTotal / restN;
      this.varianceSum -= variance + n * restN * d * d / (n + restN);
    } else {
      this.varianceSum = 0;
    }
    if (this.varianceSum < 0) this.varianceSum = 0;
    this.widthN = restN;
    this.totalSum = restTotal;
  }

  /** The paper's ε_cut for sub-windows of n0 and n1 values. */
  cutThreshold(n0: number, n1: number): number {
    const m = 1 / (1 / n0 + 1 / n1);
    const deltaPrime = this.delta / Math.log(this.widthN);
    const logTerm = Math.log(2 / deltaPrime);
    return Math.sqrt((2 / m) * this.variance * logTerm) + (2 / (3 * m)) * logTerm;
  }

  /** Tries every bucket boundary, oldest first; drops the oldest bucket on a cut. */
  private cutOnce(): boolean {
    if (this.widthN < 2 * this.minSubWindow) return false;
    let n0 = 0, t0 = 0;
    for (let row = this.rows - 1; row >= 0; row--) {
      const n = 2 ** row;
      for (let i = 0; i < this.rowCount[row]!; i++) {
        n0 += n;
        t0 += this.totals[this.slot(row, i)]!;
        const n1 = this.widthN - n0;
        if (n1 < this.minSubWindow) return false;
        if (n0 < this.minSubWindow) continue;
        const diff = Math.abs(t0 / n0 - (this.totalSum - t0) / n1);
        if (diff > this.cutThreshold(n0, n1)) {
          const oldest = this.rows - 1;
          const s = this.slot(oldest, 0);
          this.removeFromTotals(2 ** oldest, this.totals[s]!, this.variances[s]!);
          this.shiftRow(oldest, 1);
          return true;
        }
      }
    }
    return false;
  }

  /** Empties the window. */
  reset(): void {
    this.rowCount.fill(0);
    this.rows = 0;
    this.widthN = 0;
    this.totalSum = 0;
    this.varianceSum = 0;
    this.ticks = 0;
  }
}
