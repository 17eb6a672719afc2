/**
 * SKAB's outlier-detection metrics over point labels: F1 = TP / (TP +
 * (FP + FN) / 2), FAR = FP / (FP + TN) · 100, MAR = FN / (FN + TP) · 100,
 * summed over all scored rows of all files.
 */
import { DetectInputError } from "./errors.ts";

/** Confusion counts; add files together with {@link addConfusion}. */
export interface Confusion {
  tp: number;
  fp: number;
  tn: number;
  fn: number;
}

/** Zeroed counts. */
export function emptyConfusion(): Confusion {
  return { tp: 0, fp: 0, tn: 0, fn: 0 };
}

/** Counts predictions against labels (both 0/1 per row). */
export function confusionOf(predicted: ArrayLike<number>, labels: ArrayLike<number>): Confusion {
  if (predicted.length !== labels.length) {
    throw new DetectInputError("SKAB predicted.length", predicted.length, labels.length);
  }
  const c = emptyConfusion();
  for (let i = 0; i < labels.length; i++) {
    const p = predicted[i]! > 0, y = labels[i]! > 0;
    if (p && y) c.tp++;
    else if (p) c.fp++;
    else if (y) c.fn++;
    else c.tn++;
  }
  return c;
}

/** Adds `b` into `a`. */
export function addConfusion(a: Confusion, b: Confusion): Confusion {
  a.tp += b.tp;
  a.fp += b.fp;
  a.tn += b.tn;
  a.fn += b.fn;
  return a;
}

/** SKAB's F1, FAR (%) and MAR (%). */
export function skabMetrics(c: Confusion): { f1: number; far: number; mar: number } {
  const f1Den = c.tp + (c.fp + c.fn) / 2;
  return {
    f1: f1Den > 0 ? c.tp / f1Den : 0,
    far: c.fp + c.tn > 0 ? 100 * c.fp / (c.fp + c.tn) : 0,
    mar: c.fn + c.tp > 0 ? 100 * c.fn / (c.fn + c.tp) : 0,
  };
}
