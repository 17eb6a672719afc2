import { assert, assertAlmostEquals, assertEquals } from "./detect_assert.ts";
import { parseNabCsv, parseNabWindows, parseSkabCsv } from "../detect/benchmark_data.ts";
import {
  type NabFileResult,
  nabScore,
  nullScores,
  perfectScores,
  probationRows,
  scaledSigmoid,
  sweepCorpus,
} from "../detect/nab_scorer.ts";
import { addConfusion, confusionOf, emptyConfusion, skabMetrics } from "../detect/skab_metric.ts";

const NAB_DIR = new URL("../../shared/data/nab/", import.meta.url);
const SKAB_DIR = new URL("../../shared/data/skab/", import.meta.url);

function exists(url: URL): boolean {
  try {
    return Deno.statSync(url).isDirectory;
  } catch {
    return false;
  }
}

const nabPresent = exists(NAB_DIR);
const skabPresent = exists(SKAB_DIR);
if (!nabPresent) console.log(`skipping NAB corpus tests: ${NAB_DIR.pathname} is absent`);
if (!skabPresent) console.log(`skipping SKAB corpus tests: ${SKAB_DIR.pathname} is absent`);

const STANDARD = { tpWeight: 1, fpWeight: 0.11, fnWeight: 1 };

function loadNab(): NabFileResult[] {
  const windows = parseNabWindows(Deno.readTextFileSync(new URL("windows.json", NAB_DIR)));
  return [...windows].map(([name, windowsMs]) => {
    const s = parseNabCsv(name, Deno.readTextFileSync(new URL(name, NAB_DIR)));
    return {
      name,
      timestampsMs: s.timestampsMs,
      scores: new Float64Array(s.values.length),
      windowsMs,
    };
  });
}

Deno.test({
  name:
    "the NAB scorer gives 0 to the null detector and 100 to the perfect one on the shared subset",
  ignore: !nabPresent,
  fn() {
    const files = loadNab();
    const profiles = JSON.parse(Deno.readTextFileSync(new URL("profiles.json", NAB_DIR)));
    for (const key of ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]) {
      const profile = profiles[key].CostMatrix;
      const nul = nabScore(files.map((f) => ({ ...f, scores: nullScores(f) })), profile);
      const perfect = nabScore(files.map((f) => ({ ...f, scores: perfectScores(f) })), profile);
      assertAlmostEquals(nul.score, 0, 1e-9, key);
      assertAlmostEquals(perfect.score, 100, 1e-9, key);
      const windows = files.reduce((s, f) => s + f.windowsMs.length, 0);
      assertAlmostEquals(
        nul.rawScore,
        -profile.fnWeight * windows,
        1e-9,
        `${key} null = −fn per window`,
      );
    }
  },
});

Deno.test("the NAB scorer weights detections as its rules define on a hand-made file", () => {
  // 100 rows, probation 15; one window over rows 40..59 (width 20).
  const t = Float64Array.from({ length: 100 }, (_, i) => i * 60_000);
  const file = (scores: number[]): NabFileResult => ({
    name: "hand",
    timestampsMs: t,
    scores: Float64Array.from({ length: 100 }, (_, i) => scores[i] ?? 0),
    windowsMs: [[t[40]!, t[59]!]],
  });
  assertEquals(probationRows(100), 15);
  // Detection at the window's 6th row: y = −(59 − 45 + 1)/20 = −0.75.
  const at45 = Array(100).fill(0);
  at45[45] = 1;
  const expectedTp = scaledSigmoid(-0.75) / scaledSigmoid(-1);
  assertAlmostEquals(sweepCorpus([file(at45)], STANDARD).rawScore, expectedTp, 1e-12);
  // Adding a false positive 10 rows after the window: y = (69 − 59)/(20 − 1).
  const withFp = at45.slice();
  withFp[69] = 1;
  const fp = 0.11 * scaledSigmoid(10 / 19);
  assertAlmostEquals(
    sweepCorpus([file(withFp)], STANDARD).rawScore,
    Math.max(expectedTp + fp, -1),
    1e-12,
  );
  // A detection before any window costs fpWeight·(−1); the best threshold avoids it.
  const early = Array(100).fill(0);
  early[20] = 0.9;
  assertAlmostEquals(sweepCorpus([file(early)], STANDARD).rawScore, -1, 1e-12);
  // Probationary detections are not scored at all.
  const probation = Array(100).fill(0);
  probation[5] = 1;
  assertEquals(sweepCorpus([file(probation)], STANDARD).rawScore, -1);
});

Deno.test("the SKAB metric matches a hand count on a small file", () => {
  const csv = [
    "datetime;A;B;anomaly;changepoint",
    "2020-01-01 00:00:00;1;2;0;0",
    "2020-01-01 00:00:01;1;2;1;1",
    "2020-01-01 00:00:02;1;2;1;0",
    "2020-01-01 00:00:03;1;2;0;1",
    "2020-01-01 00:00:04;1;2;0;0",
    "2020-01-01 00:00:05;1;2;1;0",
  ].join("\n");
  const file = parseSkabCsv("small.csv", csv);
  assertEquals(file.channels, ["A", "B"]);
  assertEquals(file.labels, [0, 1, 1, 0, 0, 1]);
  const predicted = [1, 1, 0, 0, 0, 1];
  // Hand count: TP rows 1,5 → 2; FP row 0 → 1; FN row 2 → 1; TN rows 3,4 → 2.
  const c = confusionOf(predicted, file.labels);
  assertEquals(c, { tp: 2, fp: 1, tn: 2, fn: 1 });
  const m = skabMetrics(addConfusion(emptyConfusion(), c));
  assertAlmostEquals(m.f1, 2 / (2 + (1 + 1) / 2), 1e-12);
  assertAlmostEquals(m.far, 100 * 1 / 3, 1e-12);
  assertAlmostEquals(m.mar, 100 * 1 / 3, 1e-12);
});

Deno.test({
  name: "the shared SKAB files parse with eight sensor channels and labels",
  ignore: !skabPresent,
  fn() {
    const f = parseSkabCsv("1.csv", Deno.readTextFileSync(new URL("valve1/1.csv", SKAB_DIR)));
    assertEquals(f.channels.length, 8);
    assert(f.rows.length > 400, "longer than the training part");
    assert(f.labels.some((l) => l === 1), "has anomalies");
  },
});
