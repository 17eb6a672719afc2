/**
 * The safety line: each local asset's stop state in shared memory, written by
 * the e-stop thread and read by the adapters on the main thread.
 *
 * The e-stop thread acts on a stop the moment its frame arrives, whatever the
 * main event loop is busy with: setting an asset's slot to `stop` is the
 * adapter's stop input (the simulated arm keeps its stopped state in this slot
 * and checks it before every motion step). The main thread is told afterwards
 * and calls the adapter's `stop()` as well, for adapters that act only there.
 *
 * Transitions are atomic and one-way where safety needs it: `stop` always
 * lands; `hold` only from `run` (a hold never weakens a stop); a hold is
 * released only from `hold`; a stop only by the e-stop thread that owns the
 * latch (after a valid reset), so a release decided on the main thread can
 * never clear a stop that landed meanwhile.
 *
 * @example
 * ```ts
 * import { SafetyLine } from "./safety_line.ts";
 * const line = new SafetyLine(["g1.arm-0"]);
 * const other = new SafetyLine(line.assetIds, line.buffer); // on the other thread
 * other.stop("g1.arm-0");
 * console.assert(line.state("g1.arm-0") === "stop");
 * ```
 */
import { assert } from "../protocols/assert.ts";

export type SafetyState = "run" | "hold" | "stop";

const STATES: readonly SafetyState[] = ["run", "hold", "stop"];
const RUN = 0, HOLD = 1, STOP = 2;

export class SafetyLine {
  readonly assetIds: readonly string[];
  readonly buffer: SharedArrayBuffer;
  readonly #slots: Int32Array;
  readonly #index: Map<string, number>;

  constructor(assetIds: readonly string[], buffer?: SharedArrayBuffer) {
    this.assetIds = [...assetIds];
    this.buffer = buffer ?? new SharedArrayBuffer(Math.max(1, assetIds.length) * 4);
    assert(this.buffer.byteLength >= assetIds.length * 4, "safety line has a slot per asset");
    this.#slots = new Int32Array(this.buffer);
    this.#index = new Map(this.assetIds.map((id, i) => [id, i]));
  }

  has(assetId: string): boolean {
    return this.#index.has(assetId);
  }

  state(assetId: string): SafetyState {
    return STATES[Atomics.load(this.#slots, this.#slot(assetId))]!;
  }

  stop(assetId: string): void {
    Atomics.store(this.#slots, this.#slot(assetId), STOP);
  }

  /** `run` → `hold`; false if the asset was not running. */
  hold(assetId: string): boolean {
    return Atomics.compareExchange(this.#slots, this.#slot(assetId), RUN, HOLD) === RUN;
  }

  /** `from` → `run`; false if the asset was not in `from`. */
  release(assetId: string, from: "hold" | "stop"): boolean {
    const expected = from === "hold" ? HOLD : STOP;
    return Atomics.compareExchange(this.#slots, this.#slot(assetId), expected, RUN) === expected;
  }

  /** A slot bound to one asset, for its adapter (which may not release a stop). */
  slot(assetId: string): SafetySlot {
    this.#slot(assetId);
    return {
      shared: true,
      get: () => this.state(assetId),
      stop: () => this.stop(assetId),
      hold: () => this.hold(assetId),
      release: (from) => from === "hold" && this.release(assetId, from),
    };
  }

  #slot(assetId: string): number {
    const slot = this.#index.get(assetId);
    assert(slot !== undefined, `safety line has no slot for ${assetId}`);
    return slot;
  }
}

/** One asset's stop state as its adapter sees it. */
export interface SafetySlot {
  /** True when the e-stop thread, not the adapter, releases stops. */
  readonly shared: boolean;
  get(): SafetyState;
  stop(): void;
  hold(): boolean;
  release(from: "hold" | "stop"): boolean;
}

/** A slot no other thread sees (an adapter built without a line): it releases its own stops. */
export function localSafetySlot(): SafetySlot {
  let state: SafetyState = "run";
  const release = (from: "hold" | "stop") => state === from && (state = "run") === "run";
  return {
    shared: false,
    get: () => state,
    stop: () => void (state = "stop"),
    hold: () => state === "run" && (state = "hold") === "hold",
    release,
  };
}
