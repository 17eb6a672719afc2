/**
 * A simulated robot welding arm: six joints tracing a weld path, weld
 * current/voltage, a temperature with thermal lag, a runtime counter, and
 * occasional injected faults (current spike, temperature drift, stuck joint)
 * so that detection has something real to find.
 *
 * Deterministic from its seed: the same seed and the same tick times give
 * the same samples.
 */
import type { ArmMode, ArmTelemetry, AssetAdapter, AssetCommand } from "./adapter.ts";
import { AssetCommandRefused } from "./adapter.ts";
import { localSafetySlot, type SafetySlot } from "../safety_line.ts";

export const ARM_AXES = 6;
const AMBIENT_C = 35;
/** Thermal time constant of the torch, s. */
const THERMAL_TAU_S = 20;

/**
 * Setpoints this (simulated) power source accepts, with its ranges: tighter
 * than the twin model's, as a real adapter's would be.
 */
export const ARM_SETPOINT_RANGES: Record<string, [number, number]> = {
  weldCurrentA: [80, 350],
  weldVoltageV: [14, 40],
  wireFeedMps: [0.02, 0.35],
  travelSpeedMmps: [1, 50],
};

type FaultKind = "current-spike" | "temperature-drift" | "joint-stuck";
interface ActiveFault {
  kind: FaultKind;
  untilS: number;
  axis: number;
  heldValue: number;
}

/** xorshift32: small, fast, seedable. */
export function createRandom(seed: number): () => number {
  let state = (seed >>> 0) || 0x9e3779b9;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x1_0000_0000;
  };
}

/** Stable 32-bit hash of a string (FNV-1a), for seeds. */
export function hashString(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

export interface SimulatedArmInit {
  id: string;
  cell: string;
  /** Faults per second (probability per second of a new fault). */
  faultRatePerS: number;
  seed?: number;
  /**
   * Where the arm keeps its stop/hold state: a slot of the gateway's safety
   * line, which the e-stop thread sets directly (see node/safety_line.ts).
   */
  safety?: SafetySlot;
}

export class SimulatedArm implements AssetAdapter {
  readonly id: string;
  readonly kind = "welding-arm";
  readonly cell: string;
  onTelemetry: ((sample: ArmTelemetry) => void) | undefined;
  readonly setpoints: Record<string, number> = {
    weldCurrentA: 180,
    weldVoltageV: 24,
    wireFeedMps: 0.13,
    travelSpeedMmps: 10,
  };
  #mode: ArmMode = "auto";
  /** Stop and hold state; read before every motion step. */
  readonly #safety: SafetySlot;
  #random: () => number;
  #faultRatePerS: number;
  #fault: ActiveFault | undefined;
  #phase = 0;
  #joints: number[];
  #temperature = AMBIENT_C + 30;
  #runtimeS = 0;
  #lastS: number | undefined;

  constructor(init: SimulatedArmInit) {
    this.id = init.id;
    this.cell = init.cell;
    this.#faultRatePerS = init.faultRatePerS;
    this.#safety = init.safety ?? localSafetySlot();
    this.#random = createRandom(init.seed ?? hashString(init.id));
    this.#joints = Array.from({ length: ARM_AXES }, () => (this.#random() - 0.5) * 0.2);
  }

  get stopped(): boolean {
    return this.#safety.get() === "stop";
  }

  get mode(): ArmMode {
    const safety = this.#safety.get();
    return safety === "stop" ? "stopped" : safety === "hold" ? "hold" : this.#mode;
  }

  applyCommand(command: AssetCommand): void {
    if (command.setpoints) {
      for (const [name, value] of Object.entries(command.setpoints)) {
        const range = ARM_SETPOINT_RANGES[name];
        if (!range) throw new AssetCommandRefused(`setpoint ${name}: unknown on a welding arm`);
        if (!(value >= range[0] && value <= range[1])) {
          throw new AssetCommandRefused(
            `setpoint ${name}: expected ${range[0]}..${range[1]}, got ${value}`,
          );
        }
      }
    }
    const safety = this.#safety.get();
    if (command.mode && command.mode !== "hold" && safety !== "run") {
      // A latched stop wins over any command that would move the arm again.
      throw new AssetCommandRefused(
        `${this.id} is ${safety === "stop" ? "stopped (e-stop latched)" : "on hold"}`,
      );
    }
    if (command.setpoints) Object.assign(this.setpoints, command.setpoints);
    if (command.mode === "hold") this.hold("hold command");
    else if (command.mode) this.#mode = command.mode;
  }

  stop(_reason: string): void {
    this.#safety.stop();
  }

  hold(_reason: string): void {
    this.#safety.hold(); // a hold never weakens a stop
  }

  /** Clears a hold; a stop too unless the gateway's e-stop thread owns the slot. */
  release(): void {
    this.#safety.release("hold");
    if (!this.#safety.shared) this.#safety.release("stop");
  }

  /** Advances the simulation to `nowMs` and emits one sample. */
  tick(nowMs: number): ArmTelemetry {
    const nowS = nowMs / 1000;
    const dtS = this.#lastS === undefined ? 0 : Math.max(0, Math.min(1, nowS - this.#lastS));
    this.#lastS = nowS;
    const moving = this.#safety.get() === "run";
    this.#maybeStartFault(nowS, dtS);

    if (moving) {
      this.#phase += dtS * (this.setpoints.travelSpeedMmps! / 10) * 0.5;
      this.#runtimeS += dtS;
      for (let axis = 0; axis < ARM_AXES; axis++) {
        this.#joints[axis] = 0.6 * Math.sin(this.#phase + axis * 0.9) +
          0.15 * Math.sin(2.3 * this.#phase + axis) +
          (this.#random() - 0.5) * 0.002;
      }
    }
    const fault = this.#fault;
    if (fault?.kind === "joint-stuck") this.#joints[fault.axis] = fault.heldValue;

    let current = moving ? this.setpoints.weldCurrentA! + gaussian(this.#random) * 3 : 0;
    if (moving && fault?.kind === "current-spike") current += 90 + gaussian(this.#random) * 10;
    const voltage = moving ? 18 + current * 0.035 + gaussian(this.#random) * 0.3 : 0;
    const targetC = AMBIENT_C + (moving ? current * 0.2 : 0) +
      (fault?.kind === "temperature-drift" ? 25 : 0);
    this.#temperature += (targetC - this.#temperature) * (1 - Math.exp(-dtS / THERMAL_TAU_S));
    const temperature = this.#temperature + gaussian(this.#random) * 0.2;

    const sample: ArmTelemetry = {
      assetId: this.id,
      atMs: nowMs,
      joints: this.#joints.slice(),
      current,
      voltage,
      temperature,
      runtimeS: this.#runtimeS,
      mode: this.mode,
      ...(fault ? { injectedFault: fault.kind } : {}),
    };
    this.onTelemetry?.(sample);
    return sample;
  }

  /** Starts a fault now (tests and demos); normally faults arrive at random. */
  injectFault(kind: FaultKind, durationS: number, nowMs = Date.now()): void {
    const axis = Math.floor(this.#random() * ARM_AXES);
    this.#fault = { kind, untilS: nowMs / 1000 + durationS, axis, heldValue: this.#joints[axis]! };
  }

  #maybeStartFault(nowS: number, dtS: number): void {
    if (this.#fault && nowS >= this.#fault.untilS) this.#fault = undefined;
    if (this.#fault || this.#faultRatePerS <= 0 || dtS <= 0) return;
    if (this.#random() >= this.#faultRatePerS * dtS) return;
    const kinds: FaultKind[] = ["current-spike", "temperature-drift", "joint-stuck"];
    const kind = kinds[Math.floor(this.#random() * kinds.length)]!;
    const durationS = kind === "current-spike"
      ? 1 + this.#random() * 2
      : kind === "temperature-drift"
      ? 60
      : 8;
    this.injectFault(kind, durationS, nowS * 1000);
  }
}

function gaussian(random: () => number): number {
  // Box-Muller; 1 - random() avoids log(0).
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}
