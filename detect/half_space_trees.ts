/**
 * Half-Space Trees (Tan, Ting & Liu, IJCAI 2011): a streaming anomaly
 * detector. Each tree splits a randomly perturbed copy of the unit cube at
 * random features' midpoints; a point's score is the mass (count of points
 * of the previous window) in the deepest node it reaches before the mass
 * falls under `sizeLimit`, scaled by 2^depth. Sparse regions score low mass,
 * i.e. high anomaly.
 *
 * Layout: every tree is a complete binary tree in heap order (root 0,
 * children 2i+1 and 2i+2), and all trees live in flat typed arrays, so one
 * observation costs `nTrees × height` array reads and no allocation.
 *
 * Inputs are expected roughly in [0, 1] per feature (e.g. standardised then
 * squashed); values outside still work, they fall into the edge half-spaces.
 */
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";
import { Mulberry32 } from "./random.ts";

/** Deepest tree accepted: 2^16 nodes per tree is already ~1 MB of masses. */
export const MAX_HST_HEIGHT = 15;
/** Most trees per forest; more adds cost without improving scores much. */
export const MAX_HST_TREES = 256;
/** Masses are serialised as uint16, so a window holds at most this many points. */
export const MAX_HST_WINDOW = 65535;
/** Most features: split features are stored as uint16. */
export const MAX_HST_FEATURES = 65535;

/** Construction options; defaults follow the paper and River. */
export interface HalfSpaceTreesOptions {
  /** Width of each observation. */
  readonly nFeatures: number;
  /** Number of trees (default 10). */
  readonly nTrees?: number;
  /** Depth of every tree (default 8). */
  readonly height?: number;
  /** Observations per reference window (default 250). */
  readonly windowSize?: number;
  /** Seed of the split structure; peers that merge must share it (default 42). */
  readonly seed?: number;
  /** Fraction of the window below which a node is too sparse to descend (default 0.1). */
  readonly sizeLimitFraction?: number;
}

/** The fully resolved options, as stored in a serialised model. */
export interface HalfSpaceTreesConfig {
  readonly nFeatures: number;
  readonly nTrees: number;
  readonly height: number;
  readonly windowSize: number;
  readonly seed: number;
  readonly sizeLimitFraction: number;
}

function checkInt(what: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new DetectInputError(what, value, `integer ${min}..${max}`);
  }
  return value;
}

/** Streaming anomaly scorer; see the module comment. */
export class HalfSpaceTrees {
  readonly config: HalfSpaceTreesConfig;
  /** Internal nodes per tree: 2^height - 1. */
  readonly internalPerTree: number;
  /** All nodes per tree: 2^(height+1) - 1. */
  readonly nodesPerTree: number;
  private readonly splitFeature: Uint16Array;
  private readonly splitValue: Float64Array;
  /** Reference masses (the last complete window). */
  private readonly rMass: Uint32Array;
  /** Masses of the window being filled. */
  private readonly lMass: Uint32Array;
  private readonly sizeLimit: number;
  private readonly depthScale: Float64Array;
  private readonly maxMassScore: number;
  private samplesInWindow = 0;
  private windowsCompleted = 0;

  constructor(options: HalfSpaceTreesOptions) {
    const config: HalfSpaceTreesConfig = {
      nFeatures: checkInt("HalfSpaceTrees.nFeatures", options.nFeatures, 1, MAX_HST_FEATURES),
      nTrees: checkInt("HalfSpaceTrees.nTrees", options.nTrees ?? 10, 1, MAX_HST_TREES),
      height: checkInt("HalfSpaceTrees.height", options.height ?? 8, 1, MAX_HST_HEIGHT),
      windowSize: checkInt(
        "HalfSpaceTrees.windowSize",
        options.windowSize ?? 250,
        1,
        MAX_HST_WINDOW,
      ),
      seed: (options.seed ?? 42) >>> 0,
      sizeLimitFraction: options.sizeLimitFraction ?? 0.1,
    };
    if (!(config.sizeLimitFraction >= 0 && config.sizeLimitFraction < 1)) {
      throw new DetectInputError(
        "HalfSpaceTrees.sizeLimitFraction",
        config.sizeLimitFraction,
        "a number in [0, 1)",
      );
    }
    this.config = config;
    this.internalPerTree = (1 << config.height) - 1;
    this.nodesPerTree = (1 << (config.height + 1)) - 1;
    this.splitFeature = new Uint16Array(config.nTrees * this.internalPerTree);
    this.splitValue = new Float64Array(config.nTrees * this.internalPerTree);
    this.rMass = new Uint32Array(config.nTrees * this.nodesPerTree);
    this.lMass = new Uint32Array(config.nTrees * this.nodesPerTree);
    this.sizeLimit = config.sizeLimitFraction * config.windowSize;
    this.depthScale = new Float64Array(config.height + 1);
    for (let d = 0; d <= config.height; d++) this.depthScale[d] = 2 ** d;
    this.maxMassScore = config.nTrees * config.windowSize;
    this.buildStructure();
  }

  /** Draws every tree's split features and values from the seed. */
  private buildStructure(): void {
    const { nFeatures, nTrees, seed } = this.config;
    const rng = new Mulberry32(seed);
    for (let t = 0; t < nTrees; t++) {
      // Random perturbation of the work space (paper, Algorithm 1): a box
      // that contains [0,1] with a random offset, so trees differ.
      const rootLo = new Float64Array(nFeatures);
      const rootHi = new Float64Array(nFeatures);
      for (let q = 0; q < nFeatures; q++) {
        const s = rng.next();
        const range = 2 * Math.max(s, 1 - s);
        rootLo[q] = s - range;
        rootHi[q] = s + range;
      }
      // Depth-first over heap indices; per-depth copies of the box bounds.
      const stack: number[] = [0];
      const depthOf = (node: number) => Math.floor(Math.log2(node + 1));
      const boxLo = new Map<number, Float64Array>([[0, rootLo]]);
      const boxHi = new Map<number, Float64Array>([[0, rootHi]]);
      while (stack.length > 0) {
        const node = stack.pop()!;
        const bl = boxLo.get(node)!, bh = boxHi.get(node)!;
        boxLo.delete(node);
        boxHi.delete(node);
        if (depthOf(node) >= this.config.height) continue;
        const q = rng.nextInt(nFeatures);
        const p = (bl[q]! + bh[q]!) / 2;
        const idx = t * this.internalPerTree + node;
        this.splitFeature[idx] = q;
        this.splitValue[idx] = p;
        const leftHi = bh.slice();
        leftHi[q] = p;
        const rightLo = bl.slice();
        rightLo[q] = p;
        boxLo.set(2 * node + 1, bl);
        boxHi.set(2 * node + 1, leftHi);
        boxLo.set(2 * node + 2, rightLo);
        boxHi.set(2 * node + 2, bh);
        stack.push(2 * node + 2, 2 * node + 1);
      }
    }
  }

  /** True once a full reference window exists, i.e. scores mean something. */
  get ready(): boolean {
    return this.windowsCompleted > 0;
  }

  /** Number of completed windows. */
  get windows(): number {
    return this.windowsCompleted;
  }

  private checkWidth(x: ArrayLike<number>): void {
    if (x.length !== this.config.nFeatures) {
      throw new DetectInputError(
        "HalfSpaceTrees observation length",
        x.length,
        this.config.nFeatures,
      );
    }
  }

  /** Mass score (paper's Score): high for normal points, low for anomalies. */
  massScore(x: ArrayLike<number>): number {
    this.checkWidth(x);
    const { nTrees, height } = this.config;
    const internal = this.internalPerTree, nodes = this.nodesPerTree;
    const sf = this.splitFeature, sv = this.splitValue, r = this.rMass;
    const limit = this.sizeLimit;
    let total = 0;
    for (let t = 0; t < nTrees; t++) {
      const base = t * nodes, sBase = t * internal;
      let node = 0, depth = 0;
      while (true) {
        const m = r[base + node]!;
        if (depth === height || m < limit) {
          total += m * this.depthScale[depth]!;
          break;
        }
        const s = sBase + node;
        node = x[sf[s]!]! < sv[s]! ? 2 * node + 1 : 2 * node + 2;
        depth++;
      }
    }
    return total;
  }

  /**
   * Anomaly score in (0, 1]: `1 / (1 + mass / (nTrees · windowSize))`.
   * Typical points score ≈ 0.5; points in empty regions approach 1.
   */
  score(x: ArrayLike<number>): number {
    return 1 / (1 + this.massScore(x) / this.maxMassScore);
  }

  /** Adds `x` to the current window; rolls the window when full. */
  learn(x: ArrayLike<number>): void {
    this.checkWidth(x);
    const { nTrees, height } = this.config;
    const internal = this.internalPerTree, nodes = this.nodesPerTree;
    const sf = this.splitFeature, sv = this.splitValue, l = this.lMass;
    for (let t = 0; t < nTrees; t++) {
      const base = t * nodes, sBase = t * internal;
      let node = 0;
      for (let depth = 0; depth < height; depth++) {
        l[base + node]!++;
        const s = sBase + node;
        node = x[sf[s]!]! < sv[s]! ? 2 * node + 1 : 2 * node + 2;
      }
      l[base + node]!++;
    }
    this.endOfSample();
  }

  /**
   * Scores `x` against the reference window, then learns it: one walk per
   * tree instead of two. Returns the same value {@link score} would.
   */
  scoreAndLearn(x: ArrayLike<number>): number {
    this.checkWidth(x);
    const { nTrees, height } = this.config;
    const internal = this.internalPerTree, nodes = this.nodesPerTree;
    const sf = this.splitFeature, sv = this.splitValue, r = this.rMass, l = this.lMass;
    const limit = this.sizeLimit, scale = this.depthScale;
    let total = 0;
    for (let t = 0; t < nTrees; t++) {
      const base = t * nodes, sBase = t * internal;
      let node = 0;
      let scored = false;
      for (let depth = 0; depth < height; depth++) {
        const i = base + node;
        l[i]!++;
        if (!scored) {
          const m = r[i]!;
          if (m < limit) {
            total += m * scale[depth]!;
            scored = true;
          }
        }
        const s = sBase + node;
        node = x[sf[s]!]! < sv[s]! ? 2 * node + 1 : 2 * node + 2;
      }
      const leaf = base + node;
      l[leaf]!++;
      if (!scored) total += r[leaf]! * scale[height]!;
    }
    this.endOfSample();
    return 1 / (1 + total / this.maxMassScore);
  }

  private endOfSample(): void {
    this.samplesInWindow++;
    if (this.samplesInWindow >= this.config.windowSize) {
      this.rMass.set(this.lMass);
      this.lMass.fill(0);
      this.samplesInWindow = 0;
      this.windowsCompleted++;
    }
    assert(this.samplesInWindow < this.config.windowSize, "window index stays below its size");
  }

  /** True when `other` has the same structure, so masses can be combined. */
  compatibleWith(other: HalfSpaceTrees): boolean {
    const a = this.config, b = other.config;
    return a.nFeatures === b.nFeatures && a.nTrees === b.nTrees && a.height === b.height &&
      a.windowSize === b.windowSize && a.seed === b.seed &&
      a.sizeLimitFraction === b.sizeLimitFraction;
  }

  /**
   * Merges a peer's reference masses into this one's: the average of the two
   * mass profiles (rounded), so "normal" becomes what either peer saw
   * normally. Requires {@link compatibleWith}.
   */
  mergeReference(other: HalfSpaceTrees): void {
    if (!this.compatibleWith(other)) {
      throw new DetectInputError(
        "HalfSpaceTrees.merge config",
        other.config,
        JSON.stringify(this.config),
      );
    }
    if (!other.ready) return;
    if (!this.ready) {
      this.rMass.set(other.rMass);
      this.windowsCompleted = 1;
      return;
    }
    for (let i = 0; i < this.rMass.length; i++) {
      this.rMass[i] = Math.round((this.rMass[i]! + other.rMass[i]!) / 2);
    }
  }

  /** Forgets all learned mass (after a drift that invalidates "normal"). */
  reset(): void {
    this.rMass.fill(0);
    this.lMass.fill(0);
    this.samplesInWindow = 0;
    this.windowsCompleted = 0;
  }

  /** Size of {@link toBytes}' output. */
  get byteLength(): number {
    return HST_HEADER_BYTES + 4 * this.rMass.length;
  }

  /**
   * Compact encoding: the config (the structure regrows from the seed), the
   * window position, then both mass arrays as uint16.
   */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.byteLength);
    const v = new DataView(out.buffer);
    const c = this.config;
    v.setUint16(0, c.nFeatures, true);
    v.setUint16(2, c.nTrees, true);
    v.setUint8(4, c.height);
    v.setUint16(6, c.windowSize, true);
    v.setUint32(8, c.seed, true);
    v.setFloat64(12, c.sizeLimitFraction, true);
    v.setUint32(20, this.samplesInWindow, true);
    v.setUint32(24, this.windowsCompleted, true);
    let o = HST_HEADER_BYTES;
    for (const arr of [this.rMass, this.lMass]) {
      for (let i = 0; i < arr.length; i++, o += 2) v.setUint16(o, arr[i]!, true);
    }
    return out;
  }

  /** Inverse of {@link toBytes}; throws {@link DetectInputError} on malformed bytes. */
  static fromBytes(bytes: Uint8Array): HalfSpaceTrees {
    if (bytes.length < HST_HEADER_BYTES) {
      throw new DetectInputError(
        "HalfSpaceTrees bytes.length",
        bytes.length,
        `>= ${HST_HEADER_BYTES}`,
      );
    }
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const hst = new HalfSpaceTrees({
      nFeatures: v.getUint16(0, true),
      nTrees: v.getUint16(2, true),
      height: v.getUint8(4),
      windowSize: v.getUint16(6, true),
      seed: v.getUint32(8, true),
      sizeLimitFraction: v.getFloat64(12, true),
    });
    if (bytes.length !== hst.byteLength) {
      throw new DetectInputError("HalfSpaceTrees bytes.length", bytes.length, hst.byteLength);
    }
    const inWindow = v.getUint32(20, true);
    if (inWindow >= hst.config.windowSize) {
      throw new DetectInputError(
        "HalfSpaceTrees samplesInWindow",
        inWindow,
        `< ${hst.config.windowSize}`,
      );
    }
    hst.samplesInWindow = inWindow;
    hst.windowsCompleted = v.getUint32(24, true);
    let o = HST_HEADER_BYTES;
    for (const arr of [hst.rMass, hst.lMass]) {
      for (let i = 0; i < arr.length; i++, o += 2) arr[i] = v.getUint16(o, true);
    }
    return hst;
  }
}

/** Fixed header of the HST encoding (see {@link HalfSpaceTrees.toBytes}). */
const HST_HEADER_BYTES = 28;
