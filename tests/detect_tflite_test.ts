import { assert, assertAlmostEquals, assertEquals, assertThrows } from "./detect_assert.ts";
import type { DenseLayer } from "../detect/dense_layer.ts";
import { DetectInputError, TfliteModelError } from "../detect/errors.ts";
import { LiteRtModel } from "../detect/litert.ts";
import { Mulberry32 } from "../detect/random.ts";
import { DenseModel, readDenseTflite } from "../detect/tflite_dense.ts";
import { writeDenseTflite } from "../detect/tflite_writer.ts";

function randomLayers(seed: number, widths: number[]): DenseLayer[] {
  const rng = new Mulberry32(seed);
  const acts = ["relu", "tanh", "none"] as const;
  return widths.slice(1).map((out, i) => ({
    inputSize: widths[i]!,
    outputSize: out,
    weights: Float32Array.from({ length: widths[i]! * out }, () => rng.nextGaussian() * 0.4),
    bias: Float32Array.from({ length: out }, () => rng.nextGaussian() * 0.1),
    activation: i === widths.length - 2 ? "none" : acts[i % 2]!,
  }));
}

// LiteRT's wasm keeps timers and handles for the process lifetime.
const liteRtTest = { sanitizeOps: false, sanitizeResources: false };

Deno.test("the dense writer's .tflite reads back with the same weights", () => {
  const layers = randomLayers(1, [32, 8, 32]);
  const back = readDenseTflite(writeDenseTflite(layers));
  assertEquals(back.length, 2);
  for (let l = 0; l < 2; l++) {
    assertEquals(back[l]!.weights, layers[l]!.weights);
    assertEquals(back[l]!.bias, layers[l]!.bias);
    assertEquals(back[l]!.activation, layers[l]!.activation);
  }
});

Deno.test({
  name: "LiteRT runs the written .tflite and agrees with the TypeScript path",
  ...liteRtTest,
  async fn() {
    const layers = randomLayers(2, [32, 8, 16, 32]);
    const bytes = writeDenseTflite(layers);
    const ts = DenseModel.fromTflite(bytes);
    const lite = await LiteRtModel.load(bytes, [1, 32]);
    try {
      const rng = new Mulberry32(3);
      for (let trial = 0; trial < 5; trial++) {
        const x = Float32Array.from({ length: 32 }, () => rng.nextGaussian());
        const fromLite = await lite.run(x);
        const fromTs = ts.run(x);
        assertEquals(fromLite.length, 32);
        for (let i = 0; i < 32; i++) {
          assertAlmostEquals(fromLite[i]!, fromTs[i]!, 1e-4, `output ${i}`);
        }
      }
    } finally {
      lite.delete();
    }
  },
});

Deno.test({
  name: "the shipped weld autoencoder loads in LiteRT and matches the TypeScript path",
  ...liteRtTest,
  async fn() {
    const bytes = await Deno.readFile(
      new URL("../detect/models/weld_autoencoder.tflite", import.meta.url),
    );
    const ts = DenseModel.fromTflite(bytes);
    const lite = await LiteRtModel.load(bytes, [1, ts.inputSize]);
    try {
      const x = Float32Array.from({ length: ts.inputSize }, (_, i) => 0.5 + 0.02 * (i % 5));
      const a = await lite.run(x), b = ts.run(x);
      for (let i = 0; i < a.length; i++) assertAlmostEquals(a[i]!, b[i]!, 1e-4);
    } finally {
      lite.delete();
    }
  },
});

Deno.test("the TS path refuses files that are not TFLite with a typed error", () => {
  assertThrows(() => readDenseTflite(new Uint8Array(64)), TfliteModelError);
  const bytes = writeDenseTflite(randomLayers(4, [4, 2]));
  bytes[4] = "X".charCodeAt(0); // corrupt the "TFL3" identifier
  const error = assertThrows(() => readDenseTflite(bytes), TfliteModelError);
  assert(error.message.includes("TFL3"), error.message);
});

Deno.test("the dense writer rejects mismatched layer shapes naming the field", () => {
  const [a] = randomLayers(5, [4, 3]);
  const error = assertThrows(
    () => writeDenseTflite([a!, { ...a!, inputSize: 5, weights: new Float32Array(15) }]),
    DetectInputError,
  );
  assert(error.message.includes("inputSize"), error.message);
});
