/**
 * Turns raw telemetry into the owner's low-rate twin writes: the latest joint
 * positions, counter deltas, and a min/mean/max summary per channel over the
 * window. Memory is constant per asset: running sums, not samples.
 */
import type { ArmTelemetry } from "./assets/adapter.ts";
import type { MeasuredUpdate } from "../protocols/twin_model.ts";

/** A weld seam of the simulated cell takes this much arc time. */
const SEAM_S = 5;

/** Telemetry channel → twin summary channel. */
const CHANNELS = [
  ["current", "weldCurrentA"],
  ["voltage", "arcVoltageV"],
  ["temperature", "torchTemperatureC"],
] as const;

interface Running {
  min: number;
  max: number;
  sum: number;
  count: number;
}

interface AssetWindow {
  joints?: number[];
  startedAtMs?: number;
  lastAtMs: number;
  runtimeS?: number;
  reportedRuntimeS?: number;
  channels: Map<string, Running>;
}

export class MeasuredAccumulator {
  readonly #windows = new Map<string, AssetWindow>();

  add(sample: ArmTelemetry): void {
    let window = this.#windows.get(sample.assetId);
    if (!window) {
      window = { lastAtMs: sample.atMs, channels: new Map(), reportedRuntimeS: sample.runtimeS };
      this.#windows.set(sample.assetId, window);
    }
    window.startedAtMs ??= sample.atMs;
    window.lastAtMs = sample.atMs;
    window.joints = sample.joints;
    window.runtimeS = sample.runtimeS;
    for (const [source, target] of CHANNELS) {
      const value = sample[source];
      const running = window.channels.get(target);
      if (!running) window.channels.set(target, { min: value, max: value, sum: value, count: 1 });
      else {
        running.min = Math.min(running.min, value);
        running.max = Math.max(running.max, value);
        running.sum += value;
        running.count++;
      }
    }
  }

  /** The updates since the last drain, one per asset that produced samples. */
  drain(): Map<string, MeasuredUpdate> {
    const out = new Map<string, MeasuredUpdate>();
    for (const assetId of this.#windows.keys()) {
      const update = this.drainAsset(assetId);
      if (update) out.set(assetId, update);
    }
    return out;
  }

  /** One asset's update since its last drain; undefined when it produced no samples. */
  drainAsset(assetId: string): MeasuredUpdate | undefined {
    const window = this.#windows.get(assetId);
    if (!window || window.startedAtMs === undefined || window.joints === undefined) {
      return undefined;
    }
    const previous = window.reportedRuntimeS ?? 0;
    const runtimeS = window.runtimeS ?? previous;
    const runtimeMs = Math.max(0, Math.round((runtimeS - previous) * 1000));
    const weldCount = Math.floor(runtimeS / SEAM_S) - Math.floor(previous / SEAM_S);
    const channels: Record<string, { min: number; mean: number; max: number; count: number }> = {};
    for (const [name, r] of window.channels) {
      channels[name] = { min: r.min, mean: r.sum / r.count, max: r.max, count: r.count };
    }
    const update: MeasuredUpdate = {
      joints: window.joints,
      counters: { runtimeMs, ...(weldCount > 0 ? { weldCount } : {}) },
      // The model accepts windows of 100 ms to 60 s; a sparse window still covers the interval.
      summary: {
        windowMs: Math.min(
          60_000,
          Math.max(100, Math.round(window.lastAtMs - window.startedAtMs)),
        ),
        channels,
      },
    };
    window.reportedRuntimeS = runtimeS;
    window.startedAtMs = undefined;
    window.channels.clear();
    return update;
  }
}
