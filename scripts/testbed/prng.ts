/**
 * A small seeded pseudo-random generator, so WAN loss and jitter replay from a seed.
 * Not for cryptography.
 *
 * @module
 */

/** A source of uniform numbers in [0, 1). */
export type Random = () => number;

/**
 * A 32-bit generator (SplitMix-style: a Weyl sequence through an integer mixer). Same seed,
 * same sequence.
 *
 * @example
 * ```ts
 * const random = seededRandom(42);
 * const x = random(); // 0 <= x < 1, the same on every run
 * ```
 */
export function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 0x1_0000_0000;
  };
}

/**
 * Derives a per-stream seed from a base seed and a label (FNV-1a over the label), so each
 * WAN direction gets its own independent but reproducible sequence.
 *
 * @example
 * ```ts
 * deriveSeed(1, "r1-r2:a>b") !== deriveSeed(1, "r1-r2:b>a"); // true
 * ```
 */
export function deriveSeed(seed: number, label: string): number {
  let hash = (0x811c9dc5 ^ (seed >>> 0)) >>> 0;
  for (let i = 0; i < label.length; i++) {
    hash ^= label.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash;
}
