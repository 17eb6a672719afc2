/**
 * A seeded simulator of welding-arm telemetry, for tests, the evaluation of
 * the pipeline, and training the shipped autoencoder. Normal operation:
 * joints follow smooth periodic trajectories, current and voltage fluctuate
 * around their set points, temperature follows the weld duty slowly.
 * Faults can be injected: a current spike, a temperature drift, a joint stuck.
 */
import { Mulberry32 } from "./random.ts";
import { ARM_JOINTS, type TelemetrySample } from "./types.ts";

/** Faults the simulator can inject. */
export type SimFault =
  | { readonly kind: "current-spike"; readonly fromMs: number; readonly toMs: number }
  | { readonly kind: "temperature-drift"; readonly fromMs: number; readonly degPerS: number }
  | { readonly kind: "joint-stuck"; readonly fromMs: number; readonly joint: number };

/** Simulator options. */
export interface WeldSimOptions {
  readonly assetId?: string;
  readonly seed?: number;
  /** Sample period (default 10 ms = 100 Hz). */
  readonly periodMs?: number;
  readonly startMs?: number;
  readonly faults?: readonly SimFault[];
}

/** Deterministic stream of {@link TelemetrySample}s. */
export class WeldArmSimulator {
  private readonly rng: Mulberry32;
  private readonly periodMs: number;
  private readonly faults: readonly SimFault[];
  private readonly assetId: string;
  private readonly startMs: number;
  private readonly phase: number[];
  private readonly frozen: (number | null)[];
  private tMs: number;
  private temp = 60;

  constructor(options: WeldSimOptions = {}) {
    this.rng = new Mulberry32(options.seed ?? 1);
    this.periodMs = options.periodMs ?? 10;
    this.faults = options.faults ?? [];
    this.assetId = options.assetId ?? "arm-1";
    this.startMs = options.startMs ?? 1_700_000_000_000;
    this.tMs = this.startMs;
    this.phase = Array.from({ length: ARM_JOINTS }, () => this.rng.next() * 2 * Math.PI);
    this.frozen = Array.from({ length: ARM_JOINTS }, () => null);
  }

  /** The next sample. */
  next(): TelemetrySample {
    const t = (this.tMs - this.startMs) / 1000;
    const joints: number[] = [];
    for (let j = 0; j < ARM_JOINTS; j++) {
      const w = 0.5 + 0.15 * j;
      const angle = 0.8 * Math.sin(w * t + this.phase[j]!) + 0.2 * Math.sin(2.3 * w * t) +
        0.001 * this.rng.nextGaussian();
      let value = angle;
      for (const f of this.faults) {
        if (f.kind === "joint-stuck" && f.joint === j && this.tMs >= f.fromMs) {
          this.frozen[j] ??= angle;
          value = this.frozen[j]!;
        }
      }
      joints.push(value);
    }
    let current = 200 + 8 * Math.sin(0.7 * t) + 3 * this.rng.nextGaussian();
    const voltage = 25 + 0.6 * Math.sin(0.7 * t + 0.3) + 0.3 * this.rng.nextGaussian();
    this.temp += 0.02 * (60 - this.temp) * this.periodMs / 1000 + 0.02 * this.rng.nextGaussian();
    let temperature = this.temp + 0.2 * this.rng.nextGaussian();
    for (const f of this.faults) {
      if (f.kind === "current-spike" && this.tMs >= f.fromMs && this.tMs < f.toMs) current += 150;
      if (f.kind === "temperature-drift" && this.tMs >= f.fromMs) {
        temperature += f.degPerS * (this.tMs - f.fromMs) / 1000;
      }
    }
    const sample: TelemetrySample = {
      assetId: this.assetId,
      atMs: this.tMs,
      joints,
      current,
      voltage,
      temperature,
      runtimeS: t,
      mode: "welding",
    };
    this.tMs += this.periodMs;
    return sample;
  }
}
