/** Small dense linear algebra for covariance-based scores (d ≤ a few dozen). */
import { DetectInputError } from "./errors.ts";

/**
 * Cholesky factor L (row-major d×d, lower) of a symmetric positive definite
 * matrix; throws {@link DetectInputError} when it is not positive definite.
 */
export function cholesky(a: Float64Array, d: number): Float64Array {
  const l = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * d + j]!;
      for (let k = 0; k < j; k++) s -= l[i * d + k]! * l[j * d + k]!;
      if (i === j) {
        if (!(s > 0)) {
          throw new DetectInputError(`cholesky pivot ${i}`, s, "> 0 (positive definite)");
        }
        l[i * d + i] = Math.sqrt(s);
      } else {
        l[i * d + j] = s / l[j * d + j]!;
      }
    }
  }
  return l;
}

/** Solves L·y = b (forward substitution) into `out`; returns |y|², i.e. bᵀ(LLᵀ)⁻¹b. */
export function mahalanobisSquared(
  l: Float64Array,
  d: number,
  b: ArrayLike<number>,
  out: Float64Array,
): number {
  let sum = 0;
  for (let i = 0; i < d; i++) {
    let s = b[i]!;
    for (let k = 0; k < i; k++) s -= l[i * d + k]! * out[k]!;
    const y = s / l[i * d + i]!;
    out[i] = y;
    sum += y * y;
  }
  return sum;
}

/**
 * Eigen-decomposition of a symmetric d×d matrix by cyclic Jacobi rotations.
 * Returns eigenvalues (descending) and eigenvectors as columns of a row-major
 * d×d matrix. Fine for the small matrices used here (d ≤ 64).
 */
export function symmetricEigen(a: Float64Array, d: number): {
  values: Float64Array;
  vectors: Float64Array;
} {
  const m = a.slice();
  const v = new Float64Array(d * d);
  for (let i = 0; i < d; i++) v[i * d + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < d; p++) for (let q = p + 1; q < d; q++) off += m[p * d + q]! ** 2;
    if (off < 1e-22) break;
    for (let p = 0; p < d; p++) {
      for (let q = p + 1; q < d; q++) {
        const apq = m[p * d + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (m[q * d + q]! - m[p * d + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < d; k++) {
          const mkp = m[k * d + p]!, mkq = m[k * d + q]!;
          m[k * d + p] = c * mkp - s * mkq;
          m[k * d + q] = s * mkp + c * mkq;
        }
        for (let k = 0; k < d; k++) {
          const mpk = m[p * d + k]!, mqk = m[q * d + k]!;
          m[p * d + k] = c * mpk - s * mqk;
          m[q * d + k] = s * mpk + c * mqk;
        }
        for (let k = 0; k < d; k++) {
          const vkp = v[k * d + p]!, vkq = v[k * d + q]!;
          v[k * d + p] = c * vkp - s * vkq;
          v[k * d + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: d }, (_, i) => i).sort((x, y) =>
    m[y * d + y]! - m[x * d + x]!
  );
  const values = new Float64Array(d);
  const vectors = new Float64Array(d * d);
  order.forEach((src, dst) => {
    values[dst] = m[src * d + src]!;
    for (let k = 0; k < d; k++) vectors[k * d + dst] = v[k * d + src]!;
  });
  return { values, vectors };
}
