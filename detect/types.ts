/** Shapes shared between `detect/` and the gateway. */

/** Number of joints of the welding arm. */
export const ARM_JOINTS = 6;

/**
 * One telemetry sample of a robot welding arm (the gateway's simulator emits
 * these at 100 Hz).
 */
export interface TelemetrySample {
  /** Asset identity, e.g. `"arm-7"`. */
  readonly assetId: string;
  /** Sample time in ms since the epoch (the producer's clock). */
  readonly atMs: number;
  /** Joint angles in radians, exactly {@link ARM_JOINTS} of them. */
  readonly joints: readonly number[];
  /** Welding current in amperes (≈150–250 A while welding). */
  readonly current: number;
  /** Arc voltage in volts (≈20–30 V while welding). */
  readonly voltage: number;
  /** Torch/drive temperature in °C (≈40–90 °C). */
  readonly temperature: number;
  /** Seconds the arm has been running. */
  readonly runtimeS: number;
  /** Operating mode, e.g. `"welding"`, `"moving"`, `"idle"`; statistics are kept per mode. */
  readonly mode: string;
}

/** What kind of anomaly an event reports. */
export type AnomalyKind =
  /** One channel jumped far outside its learned range. */
  | "spike"
  /** A channel's mean shifted (ADWIN detected a change). */
  | "drift"
  /** A joint stopped moving while it normally moves. */
  | "stuck"
  /** The joint pattern of all channels is rare (Half-Space Trees). */
  | "multivariate"
  /** The autoencoder could not reconstruct the sample (TFLite model). */
  | "reconstruction";

/** One anomaly found for an asset. `S` is the gateway's HLC timestamp type. */
export interface AnomalyEvent<S = unknown> {
  readonly assetId: string;
  /** Channel name, e.g. `"current"`, `"temperature"`, `"joint3"`. */
  readonly channel: string;
  readonly kind: AnomalyKind;
  /** Severity in [0, 1]; 0.5 is the detection threshold of its kind. */
  readonly score: number;
  /** Sample time of the sample that raised it (ms since the epoch). */
  readonly atMs: number;
  /** HLC stamp from the injected `stamp()` when the event was made. */
  readonly stamp: S;
  /** The channel's value in that sample. */
  readonly value: number;
  /** Mode the arm was in. */
  readonly mode: string;
  /** Whether the policy asked for an emergency stop. */
  readonly stop: boolean;
}
