import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertLessOrEqual,
  assertThrows,
} from "./detect_assert.ts";
import { Adwin } from "../detect/adwin.ts";
import { DetectInputError } from "../detect/errors.ts";
import { HalfSpaceTrees } from "../detect/half_space_trees.ts";
import { HoeffdingTree } from "../detect/hoeffding_tree.ts";
import { GaussianNaiveBayes } from "../detect/naive_bayes.ts";
import { Mulberry32 } from "../detect/random.ts";
import { OnlineScaler } from "../detect/scaler.ts";

Deno.test("Mulberry32 repeats its stream for the same seed and differs for another", () => {
  const a = new Mulberry32(9), b = new Mulberry32(9), c = new Mulberry32(10);
  const xs = Array.from({ length: 5 }, () => a.next());
  assertEquals(xs, Array.from({ length: 5 }, () => b.next()));
  assert(xs.some((x) => x !== c.next()), "another seed gives another stream");
  assert(xs.every((x) => x >= 0 && x < 1), "values lie in [0, 1)");
});

Deno.test("OnlineScaler matches the hand-computed mean and variance", () => {
  const s = new OnlineScaler(2);
  for (const row of [[1, 10], [2, 10], [3, 10], [6, 10]]) s.learn(row);
  // mean of 1,2,3,6 = 3; squared deviations 4+1+0+9 = 14; population variance 14/4 = 3.5
  assertAlmostEquals(s.mean[0]!, 3, 1e-12);
  assertAlmostEquals(s.variance(0), 3.5, 1e-12);
  assertEquals(s.variance(1), 0);
  const out = new Float64Array(2);
  s.transform([6, 10], out);
  assertAlmostEquals(out[0]!, 3 / Math.sqrt(3.5), 1e-12);
});

Deno.test("OnlineScaler merge equals learning the pooled data", () => {
  const a = new OnlineScaler(1), b = new OnlineScaler(1), all = new OnlineScaler(1);
  [1, 4, 9].forEach((x) => (a.learn([x]), all.learn([x])));
  [2, 2, 7, 11].forEach((x) => (b.learn([x]), all.learn([x])));
  a.merge(b);
  assertAlmostEquals(a.mean[0]!, all.mean[0]!, 1e-12);
  assertAlmostEquals(a.variance(0), all.variance(0), 1e-12);
  const copy = OnlineScaler.fromBytes(a.toBytes());
  assertEquals(copy.variance(0), a.variance(0));
});

Deno.test("HalfSpaceTrees scores injected outliers above normal points", () => {
  const rng = new Mulberry32(1);
  const hst = new HalfSpaceTrees({ nFeatures: 3, nTrees: 20, height: 8, windowSize: 250, seed: 3 });
  const normal = () => [0.3 + 0.05 * rng.nextGaussian(), 0.6 + 0.05 * rng.nextGaussian(), 0.5];
  for (let i = 0; i < 1000; i++) hst.learn(normal());
  assert(hst.ready, "a full window has been seen");
  let normalMax = 0;
  for (let i = 0; i < 200; i++) normalMax = Math.max(normalMax, hst.score(normal()));
  for (const outlier of [[0.95, 0.05, 0.5], [0.0, 0.0, 0.0], [0.3, 0.6, 1.0]]) {
    assertGreater(
      hst.score(outlier),
      normalMax,
      `outlier ${outlier} scores above every normal point`,
    );
  }
});

Deno.test("HalfSpaceTrees scoreAndLearn equals score followed by learn", () => {
  const rng = new Mulberry32(2);
  const a = new HalfSpaceTrees({ nFeatures: 2, seed: 5, windowSize: 50 });
  const b = new HalfSpaceTrees({ nFeatures: 2, seed: 5, windowSize: 50 });
  for (let i = 0; i < 300; i++) {
    const x = [rng.next(), rng.next()];
    const s = a.score(x);
    a.learn(x);
    assertEquals(b.scoreAndLearn(x), s);
  }
});

Deno.test("HalfSpaceTrees round-trips through bytes and merges equal structures only", () => {
  const rng = new Mulberry32(4);
  const a = new HalfSpaceTrees({ nFeatures: 4, seed: 8 });
  for (let i = 0; i < 600; i++) a.learn([rng.next(), rng.next(), rng.next(), rng.next()]);
  const copy = HalfSpaceTrees.fromBytes(a.toBytes());
  const probe = [0.2, 0.4, 0.6, 0.8];
  assertEquals(copy.score(probe), a.score(probe));
  const other = new HalfSpaceTrees({ nFeatures: 4, seed: 9 });
  assertThrows(() => a.mergeReference(other), DetectInputError);
  const same = HalfSpaceTrees.fromBytes(a.toBytes());
  same.mergeReference(a);
  assertEquals(
    same.score(probe),
    a.score(probe),
    "averaging a profile with itself changes nothing",
  );
});

Deno.test("HalfSpaceTrees rejects a bad height with a typed error naming it", () => {
  const error = assertThrows(
    () => new HalfSpaceTrees({ nFeatures: 2, height: 40 }),
    DetectInputError,
  );
  assert(error.message.includes("height") && error.message.includes("40"), error.message);
});

Deno.test("ADWIN detects a mean shift within its bound and not before", () => {
  const rng = new Mulberry32(7);
  const adwin = new Adwin({ delta: 0.002, clock: 1 });
  for (let i = 0; i < 1000; i++) {
    assert(
      !adwin.update(0.5 + 0.1 * rng.nextGaussian()),
      `no change reported at ${i} in a stationary stream`,
    );
  }
  // Hand bound: with n0 = 1000 old values and σ² ≈ 0.01 (before the shift),
  // a shift of 0.5 exceeds ε_cut once n1 satisfies
  //   0.5·n0/(n0+n1) > sqrt(2/m·σ²_W·ln(2/δ')) + 2/(3m)·ln(2/δ').
  // Solved numerically below with the window variance including the shift.
  let bound = 0;
  for (let n1 = 5; n1 < 1000; n1++) {
    const n = 1000 + n1;
    const varW = 0.01 + (1000 * n1) / (n * n) * 0.25;
    const m = 1 / (1 / 1000 + 1 / n1);
    const ln = Math.log(2 / (0.002 / Math.log(n)));
    const eps = Math.sqrt((2 / m) * varW * ln) + (2 / (3 * m)) * ln;
    if (0.5 > eps) {
      bound = n1;
      break;
    }
  }
  assertGreater(bound, 0);
  let detectedAfter = -1;
  for (let i = 0; i < 1000; i++) {
    if (adwin.update(1.0 + 0.1 * rng.nextGaussian())) {
      detectedAfter = i + 1;
      break;
    }
  }
  assert(detectedAfter > 0, "the shift is detected");
  assert(detectedAfter <= bound + 5, `detected after ${detectedAfter} values; bound ${bound}`);
  // Once the change is found, ADWIN keeps cutting the old part as new values
  // make the difference significant, so the window converges on the new mean.
  for (let i = 0; i < 500; i++) adwin.update(1.0 + 0.1 * rng.nextGaussian());
  assertGreater(adwin.mean, 0.9, "the window dropped the pre-change values");
  assertLessOrEqual(adwin.width, 1000, "the window holds mostly post-change values");
});

Deno.test("ADWIN keeps its memory bounded on a long stream", () => {
  const adwin = new Adwin({ clock: 64 });
  const rng = new Mulberry32(1);
  for (let i = 0; i < 200_000; i++) adwin.update(rng.next());
  // 32 rows × (maxBuckets + 1) buckets is the structural bound; the window of
  // a stationary stream keeps growing while its memory stays in that bound.
  assertGreater(adwin.width, 100_000, "a stationary stream is not cut");
  assertAlmostEquals(adwin.mean, 0.5, 0.01);
  assertEquals(adwin.detections, 0);
});

function separableStream(seed: number, n: number): [number[], number][] {
  const rng = new Mulberry32(seed);
  const out: [number[], number][] = [];
  for (let i = 0; i < n; i++) {
    const label = rng.nextInt(2);
    const x = [label * 4 + rng.nextGaussian(), rng.nextGaussian(), rng.next()];
    out.push([x, label]);
  }
  return out;
}

Deno.test("GaussianNaiveBayes learns a separable stream", () => {
  const nb = new GaussianNaiveBayes(3, 2);
  for (const [x, y] of separableStream(1, 500)) nb.learn(x, y);
  let correct = 0;
  const test = separableStream(2, 500);
  for (const [x, y] of test) if (nb.predict(x) === y) correct++;
  assertGreater(correct / test.length, 0.95);
});

Deno.test("GaussianNaiveBayes merge equals learning the pooled stream exactly", () => {
  const a = new GaussianNaiveBayes(3, 2),
    b = new GaussianNaiveBayes(3, 2),
    all = new GaussianNaiveBayes(3, 2);
  separableStream(3, 200).forEach(([x, y]) => (a.learn(x, y), all.learn(x, y)));
  separableStream(4, 300).forEach(([x, y]) => (b.learn(x, y), all.learn(x, y)));
  a.merge(b);
  for (let i = 0; i < all.mean.length; i++) {
    assertAlmostEquals(a.mean[i]!, all.mean[i]!, 1e-9);
    assertAlmostEquals(a.m2[i]!, all.m2[i]!, 1e-7);
  }
  assertEquals(Array.from(a.classCount), Array.from(all.classCount));
  const copy = GaussianNaiveBayes.fromBytes(a.toBytes());
  assertEquals(copy.predictProba([2, 0, 0.5]), a.predictProba([2, 0, 0.5]));
});

Deno.test("HoeffdingTree learns a separable stream, splits, and stays within its node budget", () => {
  // Class depends on a threshold of feature 1 only within one half of feature
  // 0: Naive Bayes alone cannot get it right, a split can.
  const rng = new Mulberry32(5);
  const make = (): [number[], number] => {
    const x = [rng.next(), rng.next()];
    return [x, x[0]! < 0.5 ? (x[1]! < 0.3 ? 1 : 0) : (x[1]! < 0.7 ? 0 : 1)];
  };
  const tree = new HoeffdingTree({ nFeatures: 2, nClasses: 2, gracePeriod: 100, maxNodes: 15 });
  for (let i = 0; i < 20_000; i++) {
    const [x, y] = make();
    tree.learn(x, y);
  }
  assertGreater(tree.leaves, 1, "the tree split");
  assert(tree.size <= 15, "node budget holds");
  let correct = 0;
  for (let i = 0; i < 1000; i++) {
    const [x, y] = make();
    if (tree.predict(x) === y) correct++;
  }
  assertGreater(correct / 1000, 0.85);
  const copy = HoeffdingTree.fromBytes(tree.toBytes());
  assertEquals(copy.predict([0.2, 0.1]), tree.predict([0.2, 0.1]));
  assertEquals(copy.size, tree.size);
});
