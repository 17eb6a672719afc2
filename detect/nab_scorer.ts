/**
 * The Numenta Anomaly Benchmark scorer (Lavin & Ahmad 2015), ported from its
 * documented rules: probationary period, sigmoid-weighted earliest detection
 * per window, position-weighted false positives, one threshold per profile
 * for the whole corpus chosen by sweeping, and normalisation so the null
 * detector scores 0 and the perfect one 100.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";

/** Cost weights of one NAB profile (profiles.json's `CostMatrix`). */
export interface NabProfile {
  readonly tpWeight: number;
  readonly fpWeight: number;
  readonly fnWeight: number;
}

/** One data file's detector output and labels. */
export interface NabFileResult {
  readonly name: string;
  /** Row timestamps in ms since the epoch (ascending). */
  readonly timestampsMs: ArrayLike<number>;
  /** Anomaly score per row, in [0, 1]. */
  readonly scores: ArrayLike<number>;
  /** Anomaly windows as [startMs, endMs], inclusive. */
  readonly windowsMs: readonly (readonly [number, number])[];
}

/** NAB's cap on the probationary period (15 % of 5000 rows). */
export const NAB_MAX_PROBATION_ROWS = 750;
/** NAB's probationary fraction. */
export const NAB_PROBATION_FRACTION = 0.15;

/** Rows at the start of a file that are never scored. */
export function probationRows(rowCount: number): number {
  return Math.min(Math.floor(NAB_PROBATION_FRACTION * rowCount), NAB_MAX_PROBATION_ROWS);
}

/** NAB's scaled sigmoid: 2·σ(−5y) − 1, and −1 for y > 3. */
export function scaledSigmoid(y: number): number {
  if (y > 3) return -1;
  return 2 / (1 + Math.exp(5 * y)) - 1;
}

/** A scorable row: its score, its weighted value if detected, its window (or −1). */
interface ScoredRow {
  score: number;
  weight: number;
  window: number;
}

/**
 * Parses NAB's `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC by convention) to ms.
 * Throws {@link DetectInputError} on anything else.
 */
export function parseNabTimestamp(text: string): number {
  const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?$/.exec(text.trim());
  if (!m) throw new DetectInputError("NAB timestamp", text, "YYYY-MM-DD HH:MM:SS[.ffffff]");
  const [, y, mo, d, h, mi, s, frac] = m;
  const ms = frac ? Math.round(Number(`0.${frac}`) * 1000) : 0;
  return Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
}

/** Turns one file into its scorable rows; windows get ids from `firstWindowId`. */
function sweepRows(file: NabFileResult, profile: NabProfile, firstWindowId: number): {
  rows: ScoredRow[];
  windowIds: number[];
} {
  const n = file.timestampsMs.length;
  if (file.scores.length !== n) {
    throw new DetectInputError(`${file.name} scores.length`, file.scores.length, n);
  }
  const probation = probationRows(n);
  const maxTp = scaledSigmoid(-1);
  // Window limits as row indices: first row at/after start, last row at/before end.
  const windows = file.windowsMs.map(([startMs, endMs]) => {
    let left = -1, right = -1;
    for (let i = 0; i < n; i++) {
      const t = file.timestampsMs[i]!;
      if (left < 0 && t >= startMs) left = i;
      if (t <= endMs) right = i;
    }
    if (left < 0 || right < left) {
      throw new DetectInputError(
        `${file.name} window`,
        [startMs, endMs],
        "a window inside the file",
      );
    }
    return { left, right, width: right - left + 1 };
  });
  const rows: ScoredRow[] = [];
  const windowIds = new Set<number>();
  let w = 0;
  let prevRight = -1, prevWidth = 0;
  for (let i = 0; i < n; i++) {
    const cur = windows[w];
    let weight: number;
    let window = -1;
    if (cur && i >= cur.left && i <= cur.right) {
      window = firstWindowId + w;
      weight = scaledSigmoid(-(cur.right - i + 1) / cur.width) * profile.tpWeight / maxTp;
    } else {
      const unweighted = prevRight < 0
        ? -1
        : scaledSigmoid(Math.abs(prevRight - i) / (prevWidth - 1));
      weight = unweighted * profile.fpWeight;
    }
    if (i >= probation) {
      rows.push({ score: file.scores[i]!, weight, window });
      if (window >= 0) windowIds.add(window);
    }
    if (cur && i === cur.right) {
      prevRight = i;
      prevWidth = cur.width;
      w++;
    }
  }
  return { rows, windowIds: [...windowIds] };
}

/** Result of sweeping the threshold over a corpus. */
export interface NabSweepResult {
  /** Best raw score over all thresholds. */
  readonly rawScore: number;
  /** Threshold achieving it (detections are `score >= threshold`). */
  readonly threshold: number;
}

/**
 * Sweeps one threshold over the whole corpus (NAB's optimiser does the same
 * thing exhaustively over the distinct scores) and returns the best raw score.
 */
export function sweepCorpus(files: readonly NabFileResult[], profile: NabProfile): NabSweepResult {
  const rows: ScoredRow[] = [];
  const windowIds: number[] = [];
  let nextWindow = 0;
  for (const file of files) {
    const part = sweepRows(file, profile, nextWindow);
    nextWindow += file.windowsMs.length;
    for (const r of part.rows) rows.push(r);
    windowIds.push(...part.windowIds);
  }
  const windowScore = new Float64Array(nextWindow).fill(0);
  let current = 0;
  for (const id of windowIds) {
    windowScore[id] = -profile.fnWeight;
    current -= profile.fnWeight;
  }
  rows.sort((a, b) => b.score - a.score);
  let best = current;
  let bestThreshold = 1.1;
  let i = 0;
  while (i < rows.length) {
    const threshold = rows[i]!.score;
    // Include every row with this exact score before evaluating.
    while (i < rows.length && rows[i]!.score === threshold) {
      const r = rows[i]!;
      if (r.window >= 0) {
        const before = windowScore[r.window]!;
        if (r.weight > before) {
          windowScore[r.window] = r.weight;
          current += r.weight - before;
        }
      } else {
        current += r.weight;
      }
      i++;
    }
    if (current > best) {
      best = current;
      bestThreshold = threshold;
    }
  }
  return { rawScore: best, threshold: bestThreshold };
}

/** Normalised NAB score of a detector on a corpus, with the null and perfect references. */
export interface NabScore {
  readonly score: number;
  readonly rawScore: number;
  readonly nullScore: number;
  readonly perfectScore: number;
  readonly threshold: number;
}

/** Scores `files` under `profile`, normalised against null (0) and perfect (100). */
export function nabScore(files: readonly NabFileResult[], profile: NabProfile): NabScore {
  const result = sweepCorpus(files, profile);
  const nullScore = sweepCorpus(files.map((f) => ({ ...f, scores: nullScores(f) })), profile);
  const perfect = sweepCorpus(files.map((f) => ({ ...f, scores: perfectScores(f) })), profile);
  const span = perfect.rawScore - nullScore.rawScore;
  assert(span >= 0, "the perfect detector never scores below the null detector");
  const score = span > 0 ? 100 * (result.rawScore - nullScore.rawScore) / span : 0;
  return {
    score,
    rawScore: result.rawScore,
    nullScore: nullScore.rawScore,
    perfectScore: perfect.rawScore,
    threshold: result.threshold,
  };
}

/** The null detector: never detects. */
export function nullScores(file: NabFileResult): Float64Array {
  return new Float64Array(file.timestampsMs.length);
}

/** The perfect detector: fires exactly at the first row of every window. */
export function perfectScores(file: NabFileResult): Float64Array {
  const out = new Float64Array(file.timestampsMs.length);
  for (const [startMs] of file.windowsMs) {
    for (let i = 0; i < out.length; i++) {
      if (file.timestampsMs[i]! >= startMs) {
        out[i] = 1;
        break;
      }
    }
  }
  return out;
}
