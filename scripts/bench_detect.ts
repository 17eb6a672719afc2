/**
 * Throughput of `detect/` on one core: Half-Space Trees observations per
 * second, the per-asset pipeline's samples per second, and per-call latency
 * of the shipped autoencoder on LiteRT (wasm) and on the TypeScript path.
 *
 *   deno task bench detect      (via the project's dispatcher)
 *   scripts/deno.sh run -A scripts/bench_detect.ts [--quick]
 *
 * Prints a human table, then, as the last stdout line, one JSON object.
 */
import { HalfSpaceTrees } from "../detect/half_space_trees.ts";
import { LiteRtModel } from "../detect/litert.ts";
import { AssetDetector } from "../detect/pipeline.ts";
import { Mulberry32 } from "../detect/random.ts";
import { DenseModel } from "../detect/tflite_dense.ts";
import type { TelemetrySample } from "../detect/types.ts";
import { WeldArmSimulator } from "../detect/weld_sim.ts";

function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function benchHst(observations: number): number {
  const nFeatures = 8;
  const rng = new Mulberry32(1);
  // Precomputed inputs so the loop measures the trees, not the RNG.
  const pool = Array.from(
    { length: 4096 },
    () => Float64Array.from({ length: nFeatures }, () => rng.next()),
  );
  const hst = new HalfSpaceTrees({ nFeatures, nTrees: 10, height: 8, windowSize: 250, seed: 1 });
  for (let i = 0; i < 10_000; i++) hst.scoreAndLearn(pool[i & 4095]!);
  let sink = 0;
  const t0 = performance.now();
  for (let i = 0; i < observations; i++) sink += hst.scoreAndLearn(pool[i & 4095]!);
  const seconds = (performance.now() - t0) / 1000;
  if (sink < 0) console.error(sink);
  return observations / seconds;
}

function benchPipeline(samples: number): number {
  const sim = new WeldArmSimulator({ seed: 1 });
  const stream: TelemetrySample[] = Array.from({ length: 20_000 }, () => sim.next());
  const det = new AssetDetector({ assetId: "arm-1", stamp: () => 0 });
  // Warm-up: statistics, HST windows and the JIT.
  for (const s of stream.slice(0, 5000)) {
    det.push(s);
    det.drain(64);
  }
  let t = stream[stream.length - 1]!.atMs;
  const t0 = performance.now();
  for (let i = 0; i < samples; i++) {
    const base = stream[5000 + (i % 15_000)]!;
    t += 10;
    det.push({ ...base, atMs: t });
    if ((i & 63) === 63) det.drain(64);
  }
  det.drain();
  const seconds = (performance.now() - t0) / 1000;
  const c = det.counters;
  if (c.samplesDropped !== 0 || c.samplesProcessed !== samples + 5000) {
    throw new Error(`pipeline bench lost samples: ${JSON.stringify(c)}`);
  }
  return samples / seconds;
}

async function benchModels(calls: number): Promise<{ tflite: number; ts: number }> {
  const bytes = await Deno.readFile(
    new URL("../detect/models/weld_autoencoder.tflite", import.meta.url),
  );
  const ts = DenseModel.fromTflite(bytes);
  const lite = await LiteRtModel.load(bytes, [1, ts.inputSize]);
  const x = Float32Array.from({ length: ts.inputSize }, (_, i) => 0.5 + 0.01 * i);
  const liteUs: number[] = [], tsUs: number[] = [];
  for (let i = 0; i < 200; i++) await lite.run(x);
  for (let i = 0; i < calls; i++) {
    const t0 = performance.now();
    await lite.run(x);
    liteUs.push((performance.now() - t0) * 1000);
  }
  // performance.now() is too coarse for sub-µs calls: time batches.
  const batch = 1000;
  for (let i = 0; i < 20_000; i++) ts.run(x);
  for (let i = 0; i < Math.max(20, calls / 10); i++) {
    const t0 = performance.now();
    for (let k = 0; k < batch; k++) ts.run(x);
    tsUs.push((performance.now() - t0) * 1000 / batch);
  }
  lite.delete();
  liteUs.sort((a, b) => a - b);
  tsUs.sort((a, b) => a - b);
  return { tflite: percentile(liteUs, 0.5), ts: percentile(tsUs, 0.5) };
}

/** Runs the benchmark; `--quick` shortens it. */
export async function main(args: string[]): Promise<Record<string, number>> {
  const quick = args.includes("--quick");
  console.error("bench_detect: Half-Space Trees ...");
  const hst = benchHst(quick ? 300_000 : 3_000_000);
  console.error("bench_detect: pipeline ...");
  const pipeline = benchPipeline(quick ? 50_000 : 300_000);
  console.error("bench_detect: autoencoder on LiteRT and TS ...");
  const models = await benchModels(quick ? 500 : 5000);
  const result = {
    hst_obs_per_s: Math.round(hst),
    pipeline_samples_per_s: Math.round(pipeline),
    tflite_p50_us: Number(models.tflite.toFixed(2)),
    ts_path_p50_us: Number(models.ts.toFixed(3)),
  };
  const rows: [string, string, string][] = [
    [
      "Half-Space Trees (10 trees, h 8, 8 features)",
      `${result.hst_obs_per_s.toLocaleString("en")} obs/s`,
      "≥ 1,000,000 (River: 85k)",
    ],
    [
      "AssetDetector pipeline (weld arm)",
      `${result.pipeline_samples_per_s.toLocaleString("en")} samples/s`,
      "≥ 100,000",
    ],
    ["autoencoder 18-8-18 on LiteRT (wasm)", `${result.tflite_p50_us} µs p50`, "—"],
    ["autoencoder 18-8-18 on TS path", `${result.ts_path_p50_us} µs p50`, "—"],
  ];
  console.log("| benchmark | measured | target |");
  console.log("| --- | --- | --- |");
  for (const [a, b, c] of rows) console.log(`| ${a} | ${b} | ${c} |`);
  console.log(JSON.stringify(result));
  return result;
}

if (import.meta.main) await main(Deno.args);
