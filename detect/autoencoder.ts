/**
 * Trains a small dense autoencoder in TypeScript (Adam, mean squared
 * reconstruction error, tanh hidden layers, linear output), so the shipped
 * `.tflite` model is produced by a project script without Python.
 */
import { assert } from "./assert.ts";
import type { DenseActivation, DenseLayer } from "./dense_layer.ts";
import { DetectInputError } from "./errors.ts";
import { Mulberry32 } from "./random.ts";

/** Training options. */
export interface AutoencoderTrainingOptions {
  /** Layer widths from input to output, e.g. [18, 8, 18]. */
  readonly widths: readonly number[];
  readonly epochs?: number;
  readonly learningRate?: number;
  readonly seed?: number;
  /** Called after each epoch with the mean training loss. */
  readonly onEpoch?: (epoch: number, loss: number) => void;
}

interface Param {
  w: Float64Array;
  m: Float64Array;
  v: Float64Array;
  g: Float64Array;
}

function param(n: number): Param {
  return {
    w: new Float64Array(n),
    m: new Float64Array(n),
    v: new Float64Array(n),
    g: new Float64Array(n),
  };
}

/** Trains on `data` (rows of the input width) and returns float32 dense layers. */
export function trainAutoencoder(
  data: readonly Float64Array[],
  options: AutoencoderTrainingOptions,
): DenseLayer[] {
  const widths = options.widths;
  if (widths.length < 2 || widths[0] !== widths[widths.length - 1]) {
    throw new DetectInputError(
      "autoencoder widths",
      widths,
      "input width repeated as output width",
    );
  }
  if (data.length === 0 || data[0]!.length !== widths[0]) {
    throw new DetectInputError("autoencoder data", data.length, `rows of width ${widths[0]}`);
  }
  const rng = new Mulberry32(options.seed ?? 1);
  const nLayers = widths.length - 1;
  const weights: Param[] = [], biases: Param[] = [];
  for (let l = 0; l < nLayers; l++) {
    const nIn = widths[l]!, nOut = widths[l + 1]!;
    const w = param(nIn * nOut);
    const scale = Math.sqrt(1 / nIn);
    for (let i = 0; i < w.w.length; i++) w.w[i] = rng.nextGaussian() * scale;
    weights.push(w);
    biases.push(param(nOut));
  }
  const acts = widths.map((n) => new Float64Array(n));
  const deltas = widths.map((n) => new Float64Array(n));
  const lr = options.learningRate ?? 0.003;
  const beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  let step = 0;
  const order = Array.from({ length: data.length }, (_, i) => i);
  const epochs = options.epochs ?? 20;
  for (let epoch = 0; epoch < epochs; epoch++) {
    for (let i = order.length - 1; i > 0; i--) {
      const j = rng.nextInt(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    let lossSum = 0;
    for (const idx of order) {
      const x = data[idx]!;
      acts[0]!.set(x);
      for (let l = 0; l < nLayers; l++) {
        const nIn = widths[l]!, nOut = widths[l + 1]!;
        const a = acts[l]!, out = acts[l + 1]!, w = weights[l]!.w, b = biases[l]!.w;
        for (let o = 0; o < nOut; o++) {
          let s = b[o]!;
          for (let k = 0; k < nIn; k++) s += w[o * nIn + k]! * a[k]!;
          out[o] = l < nLayers - 1 ? Math.tanh(s) : s;
        }
      }
      const y = acts[nLayers]!, dOut = deltas[nLayers]!;
      for (let o = 0; o < y.length; o++) {
        const e = y[o]! - x[o]!;
        lossSum += e * e / y.length;
        dOut[o] = 2 * e / y.length;
      }
      for (let l = nLayers - 1; l >= 0; l--) {
        const nIn = widths[l]!, nOut = widths[l + 1]!;
        const a = acts[l]!, d = deltas[l + 1]!, dIn = deltas[l]!;
        const w = weights[l]!, b = biases[l]!;
        dIn.fill(0);
        for (let o = 0; o < nOut; o++) {
          const dv = d[o]!;
          b.g[o] = dv;
          for (let k = 0; k < nIn; k++) {
            w.g[o * nIn + k] = dv * a[k]!;
            dIn[k] = dIn[k]! + dv * w.w[o * nIn + k]!;
          }
        }
        if (l > 0) { for (let k = 0; k < nIn; k++) dIn[k] = dIn[k]! * (1 - a[k]! * a[k]!); }
      }
      step++;
      const c1 = 1 - beta1 ** step, c2 = 1 - beta2 ** step;
      for (const p of [...weights, ...biases]) {
        for (let i = 0; i < p.w.length; i++) {
          const g = p.g[i]!;
          p.m[i] = beta1 * p.m[i]! + (1 - beta1) * g;
          p.v[i] = beta2 * p.v[i]! + (1 - beta2) * g * g;
          p.w[i] = p.w[i]! - lr * (p.m[i]! / c1) / (Math.sqrt(p.v[i]! / c2) + eps);
        }
      }
    }
    options.onEpoch?.(epoch, lossSum / data.length);
  }
  return weights.map((w, l) => {
    const activation: DenseActivation = l < nLayers - 1 ? "tanh" : "none";
    const layer: DenseLayer = {
      inputSize: widths[l]!,
      outputSize: widths[l + 1]!,
      weights: Float32Array.from(w.w),
      bias: Float32Array.from(biases[l]!.w),
      activation,
    };
    assert(layer.weights.length === layer.inputSize * layer.outputSize, "layer shape");
    return layer;
  });
}
