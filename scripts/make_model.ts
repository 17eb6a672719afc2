/**
 * Builds the shipped autoencoder `detect/models/weld_autoencoder.tflite`:
 * simulated normal weld telemetry → the pipeline's feature scaling → a
 * 18→8→18 dense autoencoder trained in TypeScript → a TFLite (schema v3)
 * flatbuffer. Deterministic (seeded), so rerunning reproduces the file.
 *
 *   scripts/deno.sh run -A scripts/make_model.ts [--out PATH] [--epochs N]
 */
import { simulatedArmFeatures } from "../detect/arm_training_data.ts";
import { trainAutoencoder } from "../detect/autoencoder.ts";
import { ARM_FEATURE_COUNT } from "../detect/features.ts";
import { DenseModel } from "../detect/tflite_dense.ts";
import { writeDenseTflite } from "../detect/tflite_writer.ts";

/** Hidden (bottleneck) width of the shipped model. */
export const BOTTLENECK_WIDTH = 8;

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Trains the model and writes it; returns the file's bytes. */
export async function main(args: string[]): Promise<Uint8Array> {
  const out = flag(args, "--out") ??
    new URL("../detect/models/weld_autoencoder.tflite", import.meta.url).pathname;
  const epochs = Number(flag(args, "--epochs") ?? 8);
  const rows = simulatedArmFeatures([11, 12, 13], 6000);
  console.error(`make_model: ${rows.length} normal feature rows`);
  const layers = trainAutoencoder(rows, {
    widths: [ARM_FEATURE_COUNT, BOTTLENECK_WIDTH, ARM_FEATURE_COUNT],
    epochs,
    seed: 5,
    onEpoch: (e, loss) =>
      console.error(`make_model: epoch ${e + 1}/${epochs} mse ${loss.toFixed(5)}`),
  });
  const bytes = writeDenseTflite(layers, "twinmesh weld-arm autoencoder 18-8-18");
  // Read it back through the TS path as a self-check.
  const model = DenseModel.fromTflite(bytes);
  if (model.inputSize !== ARM_FEATURE_COUNT) throw new Error("written model has the wrong width");
  await Deno.writeFile(out, bytes);
  console.log(`wrote ${out} (${bytes.length} bytes)`);
  return bytes;
}

if (import.meta.main) await main(Deno.args);
