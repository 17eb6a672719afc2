/**
 * Synthetic checks of the benchmark detectors (no benchmark files needed):
 * the NAB-style univariate ensemble fires at an injected level shift and a
 * spike in a noisy daily pattern and stays quiet on the clean part; the
 * SKAB-style PCA monitor flags a sustained multivariate shift and not rows
 * like its training part.
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertLessOrEqual,
  assertThrows,
} from "./detect_assert.ts";
import {
  AnomalyLikelihood,
  gaussianTail,
  log10GaussianTail,
} from "../detect/anomaly_likelihood.ts";
import { ContextNovelty } from "../detect/context_novelty.ts";
import { DetectInputError } from "../detect/errors.ts";
import { UnivariateDetector } from "../detect/nab_detector.ts";
import { Mulberry32 } from "../detect/random.ts";
import { RelativeEntropy } from "../detect/relative_entropy.ts";
import { PcaMonitor } from "../detect/skab_detector.ts";
import { DetectionRest, RingBuffer, WindowedGaussian } from "../detect/windowed_stats.ts";

const DAY = 288; // 5-minute rows per day, as in NAB
const SHIFT_AT = 3000;
const SHIFT_ROWS = 150;
const SPIKE_AT = 3750;

/** A noisy daily cycle with a level shift and, later, a single spike. */
function dailySeries(): Float64Array {
  const rng = new Mulberry32(11);
  const out = new Float64Array(4000);
  for (let i = 0; i < out.length; i++) {
    let v = 50 + 20 * Math.sin(2 * Math.PI * i / DAY) + rng.nextGaussian();
    if (i >= SHIFT_AT && i < SHIFT_AT + SHIFT_ROWS) v += 30;
    if (i === SPIKE_AT) v += 100;
    out[i] = v;
  }
  return out;
}

function maxOf(a: Float64Array, from: number, to: number): number {
  let m = 0;
  for (let i = from; i < to; i++) m = Math.max(m, a[i]!);
  return m;
}

Deno.test("NAB detector: pulses at a level shift and a spike, quiet on the clean daily cycle", () => {
  const values = dailySeries();
  const detector = new UnivariateDetector({ likelihood: { historySize: 8640 } });
  const scores = values.map((v) => detector.update(v));
  for (const s of scores) assert(s >= 0 && s <= 1, `score ${s} in [0, 1]`);
  assertGreater(maxOf(scores, SHIFT_AT, SHIFT_AT + 10), 0.5, "level shift detected at once");
  assertGreater(maxOf(scores, SPIKE_AT, SPIKE_AT + 3), 0.5, "spike detected at once");
  // Clean part after the warm-up: never at the detection level.
  assertLessOrEqual(maxOf(scores, 600, SHIFT_AT), 0.5, "no alarm on the clean cycle");
  // One event gives a short pulse, not a plateau.
  let above = 0;
  for (let i = SHIFT_AT; i < SHIFT_AT + SHIFT_ROWS; i++) if (scores[i]! >= 0.5) above++;
  assertLessOrEqual(above, 3, "a pulse, not a plateau");
});

Deno.test("NAB detector: deterministic and validates its input", () => {
  const values = dailySeries().subarray(0, 1500);
  const a = new UnivariateDetector(), b = new UnivariateDetector();
  for (const v of values) assertEquals(a.update(v), b.update(v));
  assertThrows(() => a.update(NaN), DetectInputError);
  assertThrows(() => new UnivariateDetector({ components: [] }), DetectInputError);
  assertThrows(() => new UnivariateDetector({ restRows: -1 }), DetectInputError);
});

Deno.test("relative entropy: small on a stationary stream, large after a distribution change", () => {
  const rng = new Mulberry32(3);
  const re = new RelativeEntropy({ shortRows: 24, referenceRows: 400, bins: 8 });
  let stationaryMax = 0;
  for (let i = 0; i < 1000; i++) {
    const s = re.score(rng.nextGaussian());
    if (i >= 424) stationaryMax = Math.max(stationaryMax, s);
  }
  let shifted = 0;
  for (let i = 0; i < 24; i++) shifted = re.score(3 + rng.nextGaussian());
  // χ²(7): 99.9th percentile ≈ 24.3.
  assertLessOrEqual(stationaryMax, 40, "stationary statistic stays near χ²(7)");
  assertGreater(shifted, 100, "shifted window is far from the reference");
});

Deno.test("context novelty: new patterns score 1, repeated ones 0, table stays bounded", () => {
  const ctx = new ContextNovelty({ levels: 4, order: 3, maxContexts: 64 });
  const cycle = [0, 1, 2, 3, 2, 1];
  let last = 1;
  for (let r = 0; r < 20; r++) for (const v of cycle) last = ctx.score(v);
  assertEquals(last, 0, "a familiar cycle is not novel");
  assertEquals(ctx.score(3), 1, "an unseen jump 1 → 3 makes every context new");
  const rng = new Mulberry32(5);
  const big = new ContextNovelty({ levels: 16, order: 6, maxContexts: 100 });
  for (let i = 0; i < 5000; i++) big.score(rng.next());
  // Indirect bound check: forgetting keeps working (no throw, scores in range).
  const s = big.score(0.5);
  assert(s >= 0 && s <= 1);
});

Deno.test("windowed helpers: ring order, Gaussian z, rest after detection", () => {
  const ring = new RingBuffer(3);
  for (const x of [1, 2, 3, 4]) ring.push(x);
  assertEquals([ring.get(0), ring.get(1), ring.get(2)], [4, 3, 2]);
  assertEquals(ring.size, 3);
  const wg = new WindowedGaussian(100);
  for (let i = 0; i < 100; i++) wg.score(i % 2 === 0 ? 1 : -1); // mean 0, std 1
  assertAlmostEquals(wg.score(5), 5, 1e-6);
  const rest = new DetectionRest(2, 0.5);
  assertEquals([0.9, 0.9, 0.9, 0.9, 0.2].map((s) => rest.apply(s)), [0.9, 0, 0, 0.9, 0]);
});

Deno.test("anomaly likelihood: quiet warm-up option and a precise deep tail", () => {
  const quiet = new AnomalyLikelihood({ warmup: 5, warmupScore: 0 });
  assertEquals(quiet.update(1), 0);
  const classic = new AnomalyLikelihood({ warmup: 5 });
  assertEquals(classic.update(1), 0.5, "default warm-up output unchanged");
  assertAlmostEquals(log10GaussianTail(2), Math.log10(gaussianTail(2)), 1e-12);
  // Continuous across the switch to the asymptotic series, monotone beyond it.
  assertAlmostEquals(log10GaussianTail(4.999), log10GaussianTail(5.001), 0.02);
  assertAlmostEquals(log10GaussianTail(8), -15.206, 0.005); // P(Z > 8) ≈ 6.22e-16
  assert(log10GaussianTail(10) < log10GaussianTail(9));
  const precise = new AnomalyLikelihood({ warmup: 50, preciseTail: true, historySize: 50 });
  const rng = new Mulberry32(9);
  for (let i = 0; i < 60; i++) precise.update(rng.next());
  assertGreater(precise.update(1e6), 0.99, "a huge raw score saturates near 1");
});

/** Eight correlated channels driven by three latent factors plus noise. */
function processRows(rng: Mulberry32, n: number, shift: (row: Float64Array) => void) {
  const rows: Float64Array[] = [];
  for (let i = 0; i < n; i++) {
    const f = [rng.nextGaussian(), rng.nextGaussian(), rng.nextGaussian()];
    const row = new Float64Array(8);
    for (let j = 0; j < 8; j++) {
      row[j] = 10 * (j + 1) + f[j % 3]! * (1 + j / 4) + 0.3 * rng.nextGaussian();
    }
    shift(row);
    rows.push(row);
  }
  return rows;
}

Deno.test("SKAB monitor: flags a sustained multivariate shift, not training-like rows", () => {
  const rng = new Mulberry32(21);
  const none = () => {};
  const training = processRows(rng, 400, none);
  const monitor = new PcaMonitor(training, {
    explainedVariance: 0.5,
    smoothingRows: 20,
    quantile: 0.99,
    thresholdFactor: 1.75,
    continueFromTraining: true,
  });
  let normalAlarms = 0;
  for (const row of processRows(rng, 300, none)) if (monitor.update(row) > 1) normalAlarms++;
  let faultAlarms = 0;
  const fault = processRows(rng, 300, (row) => {
    row[7] = row[7]! - 12; // e.g. a flow drop after a valve fault
    row[3] = row[3]! + 6;
  });
  fault.forEach((row, i) => {
    if (monitor.update(row) > 1 && i >= 20) faultAlarms++;
  });
  assertLessOrEqual(normalAlarms, 15, "≤ 5 % alarms on rows like the training part");
  assertGreater(faultAlarms, 0.95 * 280, "the regime is flagged throughout once smoothed");
});
