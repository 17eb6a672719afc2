/**
 * Seeded pseudo-random numbers (mulberry32). Every learner that randomises
 * takes one of these so runs, tests and peers that share a seed build the
 * same structures (Half-Space Trees rely on that to merge models).
 */
export class Mulberry32 {
  private state: number;

  /** @param seed any 32-bit integer; equal seeds give equal streams. */
  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  nextInt(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal draw (Box-Muller), for simulations and weight init. */
  nextGaussian(): number {
    let u = this.next();
    while (u <= 1e-12) u = this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}
