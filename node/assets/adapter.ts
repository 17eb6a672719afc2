/**
 * The physical interface of a gateway: one adapter per asset. The simulated
 * welding arm implements it; a real adapter (OPC UA, a fieldbus, a robot
 * controller's API) implements the same contract.
 *
 * Contract: `stop()` is synchronous and must bring the asset to its stopped
 * state before it returns (or have commanded the controller's hardware stop);
 * afterwards `applyCommand()` refuses motion until `release()`.
 */

/** One telemetry sample of a welding arm. */
export interface ArmTelemetry {
  assetId: string;
  /** Wall-clock time of the sample, ms since the epoch. */
  atMs: number;
  /** Joint positions, radians, axes 1..6. */
  joints: number[];
  /** Weld current, A. */
  current: number;
  /** Arc voltage, V. */
  voltage: number;
  /** Torch/wire-feeder temperature, °C. */
  temperature: number;
  /** Seconds spent welding since the adapter started. */
  runtimeS: number;
  mode: ArmMode;
  /** Ground truth of the simulator (an injected fault), absent on real assets. */
  injectedFault?: string;
}

export type ArmMode = "auto" | "manual" | "hold" | "stopped";

/** Commands an operator or the twin may send to an asset. */
export interface AssetCommand {
  setpoints?: Record<string, number>;
  mode?: "auto" | "manual" | "hold";
}

/** The asset refused a command (e.g. motion while an e-stop is latched). */
export class AssetCommandRefused extends Error {
  override name = "AssetCommandRefused";
}

export interface AssetAdapter {
  readonly id: string;
  readonly kind: string;
  /** Work cell the asset stands in (target of cell-wide stops). */
  readonly cell: string;
  readonly stopped: boolean;
  /** Telemetry listener; the adapter calls it for every sample. */
  onTelemetry: ((sample: ArmTelemetry) => void) | undefined;
  applyCommand(command: AssetCommand): void;
  /** Immediate stop; see the module contract. */
  stop(reason: string): void;
  /** Puts the asset in a safe hold (motion paused, arc off) without a latch. */
  hold(reason: string): void;
  /** Clears a stop or hold after a valid reset. */
  release(): void;
}
