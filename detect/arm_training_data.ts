/**
 * Feature vectors of simulated normal weld telemetry, scaled exactly as the
 * pipeline scales them (per-mode online standardisation, then squashed to
 * [0, 1]), for training the shipped autoencoder.
 */
import { ARM_CHANNEL_COUNT, ARM_FEATURE_COUNT, channelsOf, squash } from "./features.ts";
import { OnlineScaler } from "./scaler.ts";
import { WeldArmSimulator } from "./weld_sim.ts";

/** Rows of squashed features from `count` samples after `warmup` samples per seed. */
export function simulatedArmFeatures(
  seeds: readonly number[],
  count: number,
  warmup = 500,
): Float64Array[] {
  const rows: Float64Array[] = [];
  const n = ARM_CHANNEL_COUNT;
  for (const seed of seeds) {
    const sim = new WeldArmSimulator({ seed });
    const scaler = new OnlineScaler(ARM_FEATURE_COUNT);
    const channels = new Float64Array(n), prev = new Float64Array(n);
    const raw = new Float64Array(ARM_FEATURE_COUNT), z = new Float64Array(ARM_FEATURE_COUNT);
    for (let i = 0; i < warmup + count; i++) {
      channelsOf(sim.next(), channels);
      for (let c = 0; c < n; c++) {
        raw[c] = channels[c]!;
        raw[n + c] = i > 0 ? channels[c]! - prev[c]! : 0;
      }
      prev.set(channels);
      if (i >= warmup) {
        scaler.transform(raw, z);
        rows.push(z.map(squash));
      }
      scaler.learn(raw);
    }
  }
  return rows;
}
