/**
 * Hoeffding tree (VFDT, Domingos & Hulten 2000) for numeric features with
 * Naive Bayes leaves (adaptive: a leaf answers with Naive Bayes or with its
 * majority class, whichever has been more accurate on the leaf's own
 * stream, as in Gama et al.'s NBAdaptive). Leaves keep Gaussian class
 * statistics; split candidates are scored with the Gaussian approximation of
 * the class distributions on each side. Memory is bounded: at most
 * `maxNodes` nodes, after which leaves keep learning but stop splitting.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";
import { GaussianNaiveBayes } from "./naive_bayes.ts";

/** Hard ceiling on nodes of one tree (each leaf holds O(classes×features) numbers). */
export const MAX_HOEFFDING_NODES = 1023;
/** Split thresholds tried per feature between the observed min and max. */
export const HOEFFDING_SPLIT_CANDIDATES = 10;

/** Construction options. */
export interface HoeffdingTreeOptions {
  readonly nFeatures: number;
  readonly nClasses: number;
  /** Observations a leaf sees between split attempts (default 200). */
  readonly gracePeriod?: number;
  /** Probability of choosing the wrong split (default 1e-7). */
  readonly splitConfidence?: number;
  /** Gain difference under which ties are broken (default 0.05). */
  readonly tieThreshold?: number;
  /** Node budget (default 31, i.e. at most 16 leaves). */
  readonly maxNodes?: number;
}

interface Leaf {
  kind: "leaf";
  nb: GaussianNaiveBayes;
  min: Float64Array;
  max: Float64Array;
  seenAtLastEval: number;
  mcCorrect: number;
  nbCorrect: number;
}

interface Split {
  kind: "split";
  feature: number;
  threshold: number;
  left: number;
  right: number;
}

type TreeNode = Leaf | Split;

/** Standard normal CDF via the Abramowitz–Stegun 7.1.26 erf approximation (|error| < 1.5e-7). */
export function normalCdf(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * x);
  const poly = t * (0.254829592 +
    t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  const erf = 1 - poly * Math.exp(-x * x);
  return z >= 0 ? 0.5 * (1 + erf) : 0.5 * (1 - erf);
}

function entropy(counts: ArrayLike<number>, n: number): number {
  if (n <= 0) return 0;
  let h = 0;
  for (let i = 0; i < counts.length; i++) {
    const p = counts[i]! / n;
    if (p > 0) h -= p * Math.log2(p);
  }
  return h;
}

/** Incremental decision tree classifier; see the module comment. */
export class HoeffdingTree {
  readonly nFeatures: number;
  readonly nClasses: number;
  readonly gracePeriod: number;
  readonly splitConfidence: number;
  readonly tieThreshold: number;
  readonly maxNodes: number;
  private nodes: TreeNode[] = [];

  constructor(options: HoeffdingTreeOptions) {
    this.nFeatures = options.nFeatures;
    this.nClasses = options.nClasses;
    this.gracePeriod = options.gracePeriod ?? 200;
    this.splitConfidence = options.splitConfidence ?? 1e-7;
    this.tieThreshold = options.tieThreshold ?? 0.05;
    this.maxNodes = options.maxNodes ?? 31;
    if (
      !Number.isInteger(this.maxNodes) || this.maxNodes < 1 || this.maxNodes > MAX_HOEFFDING_NODES
    ) {
      throw new DetectInputError(
        "HoeffdingTree.maxNodes",
        this.maxNodes,
        `1..${MAX_HOEFFDING_NODES}`,
      );
    }
    if (!Number.isInteger(this.gracePeriod) || this.gracePeriod < 1) {
      throw new DetectInputError(
        "HoeffdingTree.gracePeriod",
        this.gracePeriod,
        "a positive integer",
      );
    }
    this.nodes.push(this.newLeaf());
  }

  private newLeaf(): Leaf {
    return {
      kind: "leaf",
      nb: new GaussianNaiveBayes(this.nFeatures, this.nClasses),
      min: new Float64Array(this.nFeatures).fill(Infinity),
      max: new Float64Array(this.nFeatures).fill(-Infinity),
      seenAtLastEval: 0,
      mcCorrect: 0,
      nbCorrect: 0,
    };
  }

  /** Nodes in use (splits and leaves). */
  get size(): number {
    return this.nodes.length;
  }

  /** Number of leaves. */
  get leaves(): number {
    return this.nodes.filter((n) => n.kind === "leaf").length;
  }

  private leafIndexOf(x: ArrayLike<number>): number {
    let i = 0;
    for (;;) {
      const node = this.nodes[i]!;
      if (node.kind === "leaf") return i;
      i = x[node.feature]! <= node.threshold ? node.left : node.right;
    }
  }

  private majority(leaf: Leaf): number {
    let best = 0;
    for (let c = 1; c < this.nClasses; c++) {
      if (leaf.nb.classCount[c]! > leaf.nb.classCount[best]!) best = c;
    }
    return best;
  }

  /** Predicted class of `x`. */
  predict(x: ArrayLike<number>): number {
    if (x.length !== this.nFeatures) {
      throw new DetectInputError("HoeffdingTree observation length", x.length, this.nFeatures);
    }
    const leaf = this.nodes[this.leafIndexOf(x)] as Leaf;
    return leaf.nbCorrect >= leaf.mcCorrect ? leaf.nb.predict(x) : this.majority(leaf);
  }

  /** Learns one labelled observation; may split the leaf it reaches. */
  learn(x: ArrayLike<number>, label: number): void {
    if (x.length !== this.nFeatures) {
      throw new DetectInputError("HoeffdingTree observation length", x.length, this.nFeatures);
    }
    const index = this.leafIndexOf(x);
    const leaf = this.nodes[index] as Leaf;
    if (leaf.nb.total > 0) {
      if (this.majority(leaf) === label) leaf.mcCorrect++;
      if (leaf.nb.predict(x) === label) leaf.nbCorrect++;
    }
    leaf.nb.learn(x, label);
    for (let j = 0; j < this.nFeatures; j++) {
      const v = x[j]!;
      if (v < leaf.min[j]!) leaf.min[j] = v;
      if (v > leaf.max[j]!) leaf.max[j] = v;
    }
    const seen = leaf.nb.total;
    if (seen - leaf.seenAtLastEval >= this.gracePeriod && this.nodes.length + 2 <= this.maxNodes) {
      leaf.seenAtLastEval = seen;
      this.trySplit(index, leaf);
    }
  }

  /** Best threshold and information gain of splitting `leaf` on feature `j`. */
  private bestSplitOn(leaf: Leaf, j: number): { gain: number; threshold: number } {
    const n = leaf.nb.total;
    const parentH = entropy(leaf.nb.classCount, n);
    const lo = leaf.min[j]!, hi = leaf.max[j]!;
    let best = { gain: 0, threshold: lo };
    if (!(hi > lo)) return best;
    const left = new Float64Array(this.nClasses);
    const right = new Float64Array(this.nClasses);
    for (let k = 1; k <= HOEFFDING_SPLIT_CANDIDATES; k++) {
      const t = lo + (hi - lo) * k / (HOEFFDING_SPLIT_CANDIDATES + 1);
      let nl = 0;
      for (let c = 0; c < this.nClasses; c++) {
        const nc = leaf.nb.classCount[c]!;
        const sd = Math.sqrt(leaf.nb.variance(c, j));
        const mu = leaf.nb.mean[c * this.nFeatures + j]!;
        const frac = sd > 0 ? normalCdf((t - mu) / sd) : (mu <= t ? 1 : 0);
        left[c] = nc * frac;
        right[c] = nc - left[c]!;
        nl += left[c]!;
      }
      const nr = n - nl;
      const gain = parentH - (nl / n) * entropy(left, nl) - (nr / n) * entropy(right, nr);
      if (gain > best.gain) best = { gain, threshold: t };
    }
    return best;
  }

  private trySplit(index: number, leaf: Leaf): void {
    const n = leaf.nb.total;
    let nonZero = 0;
    for (let c = 0; c < this.nClasses; c++) if (leaf.nb.classCount[c]! > 0) nonZero++;
    if (nonZero < 2) return;
    let first = { gain: 0, threshold: 0, feature: -1 };
    let second = 0;
    for (let j = 0; j < this.nFeatures; j++) {
      const s = this.bestSplitOn(leaf, j);
      if (s.gain > first.gain) {
        second = first.gain;
        first = { ...s, feature: j };
      } else if (s.gain > second) {
        second = s.gain;
      }
    }
    if (first.feature < 0) return;
    const range = Math.log2(this.nClasses);
    const epsilon = Math.sqrt(range * range * Math.log(1 / this.splitConfidence) / (2 * n));
    if (first.gain - second <= epsilon && epsilon >= this.tieThreshold) return;
    this.splitLeaf(index, leaf, first.feature, first.threshold);
  }

  /** Replaces a leaf by a split; children start from the leaf's Gaussians, reweighted. */
  private splitLeaf(index: number, leaf: Leaf, feature: number, threshold: number): void {
    const children: Leaf[] = [this.newLeaf(), this.newLeaf()];
    for (let c = 0; c < this.nClasses; c++) {
      const nc = leaf.nb.classCount[c]!;
      if (nc === 0) continue;
      const mu = leaf.nb.mean[c * this.nFeatures + feature]!;
      const sd = Math.sqrt(leaf.nb.variance(c, feature));
      const fracLeft = sd > 0 ? normalCdf((threshold - mu) / sd) : (mu <= threshold ? 1 : 0);
      const weights = [nc * fracLeft, nc * (1 - fracLeft)];
      children.forEach((child, side) => {
        const w = weights[side]!;
        if (w <= 1e-9) return;
        child.nb.classCount[c] = w;
        for (let j = 0; j < this.nFeatures; j++) {
          const k = c * this.nFeatures + j;
          child.nb.mean[k] = leaf.nb.mean[k]!;
          child.nb.m2[k] = leaf.nb.variance(c, j) * w;
        }
      });
    }
    children.forEach((child, side) => {
      child.min.set(leaf.min);
      child.max.set(leaf.max);
      if (side === 0) child.max[feature] = threshold;
      else child.min[feature] = threshold;
      child.seenAtLastEval = child.nb.total;
    });
    const left = this.nodes.length;
    this.nodes.push(children[0]!, children[1]!);
    this.nodes[index] = { kind: "split", feature, threshold, left, right: left + 1 };
    assert(this.nodes.length <= this.maxNodes, "the tree stays within its node budget");
  }

  /** Binary encoding of the whole tree (structure and leaf statistics). */
  toBytes(): Uint8Array {
    const parts: Uint8Array[] = [];
    const header = new DataView(new ArrayBuffer(24));
    header.setUint32(0, this.nFeatures, true);
    header.setUint32(4, this.nClasses, true);
    header.setUint32(8, this.gracePeriod, true);
    header.setFloat64(12, this.splitConfidence, true);
    header.setUint16(20, this.maxNodes, true);
    header.setUint16(22, this.nodes.length, true);
    parts.push(new Uint8Array(header.buffer));
    for (const node of this.nodes) {
      if (node.kind === "split") {
        const v = new DataView(new ArrayBuffer(17));
        v.setUint8(0, 1);
        v.setUint32(1, node.feature, true);
        v.setFloat64(5, node.threshold, true);
        v.setUint16(13, node.left, true);
        v.setUint16(15, node.right, true);
        parts.push(new Uint8Array(v.buffer));
      } else {
        const nb = node.nb.toBytes();
        const v = new DataView(new ArrayBuffer(17 + 16 * this.nFeatures));
        v.setUint8(0, 0);
        v.setUint32(1, node.seenAtLastEval, true);
        v.setUint32(5, node.mcCorrect, true);
        v.setUint32(9, node.nbCorrect, true);
        v.setUint32(13, nb.length, true);
        for (let j = 0; j < this.nFeatures; j++) {
          v.setFloat64(17 + 16 * j, node.min[j]!, true);
          v.setFloat64(25 + 16 * j, node.max[j]!, true);
        }
        parts.push(new Uint8Array(v.buffer), nb);
      }
    }
    const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /** Inverse of {@link toBytes}; throws {@link DetectInputError} on malformed input. */
  static fromBytes(bytes: Uint8Array): HoeffdingTree {
    const bad = (what: string, value: unknown, expected: string) =>
      new DetectInputError(`HoeffdingTree bytes: ${what}`, value, expected);
    if (bytes.length < 24) throw bad("length", bytes.length, ">= 24");
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const tree = new HoeffdingTree({
      nFeatures: v.getUint32(0, true),
      nClasses: v.getUint32(4, true),
      gracePeriod: v.getUint32(8, true),
      splitConfidence: v.getFloat64(12, true),
      maxNodes: v.getUint16(20, true),
    });
    const count = v.getUint16(22, true);
    if (count < 1 || count > tree.maxNodes) throw bad("node count", count, `1..${tree.maxNodes}`);
    tree.nodes = [];
    let o = 24;
    for (let i = 0; i < count; i++) {
      if (o + 17 > bytes.length) throw bad("truncated at node", i, "complete nodes");
      if (v.getUint8(o) === 1) {
        const left = v.getUint16(o + 13, true), right = v.getUint16(o + 15, true);
        const feature = v.getUint32(o + 1, true);
        if (left >= count || right >= count || left <= i || right <= i) {
          throw bad("child index", `${left},${right}`, `indices in (${i}, ${count})`);
        }
        if (feature >= tree.nFeatures) throw bad("split feature", feature, `< ${tree.nFeatures}`);
        tree.nodes.push({
          kind: "split",
          feature,
          threshold: v.getFloat64(o + 5, true),
          left,
          right,
        });
        o += 17;
      } else {
        const leaf = tree.newLeaf();
        leaf.seenAtLastEval = v.getUint32(o + 1, true);
        leaf.mcCorrect = v.getUint32(o + 5, true);
        leaf.nbCorrect = v.getUint32(o + 9, true);
        const nbLength = v.getUint32(o + 13, true);
        const statsEnd = o + 17 + 16 * tree.nFeatures;
        if (statsEnd + nbLength > bytes.length) {
          throw bad("leaf size", nbLength, "within the bytes");
        }
        for (let j = 0; j < tree.nFeatures; j++) {
          leaf.min[j] = v.getFloat64(o + 17 + 16 * j, true);
          leaf.max[j] = v.getFloat64(o + 25 + 16 * j, true);
        }
        leaf.nb = GaussianNaiveBayes.fromBytes(bytes.subarray(statsEnd, statsEnd + nbLength));
        tree.nodes.push(leaf);
        o = statsEnd + nbLength;
      }
    }
    if (o !== bytes.length) throw bad("trailing bytes", bytes.length - o, "0");
    return tree;
  }
}
