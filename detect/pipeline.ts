/**
 * Per-asset detection pipeline: telemetry sample → features → detectors →
 * debounced anomaly events. Pure: no clock (time comes from the samples and
 * the injected `stamp()`), no network, no gateway state.
 *
 * Detectors, all online and bounded per asset:
 * - per mode and channel, an {@link OnlineScaler} (value and first
 *   difference) → "spike" when a standardised value is extreme;
 * - per mode and process channel, {@link Adwin} on the value → "drift" when
 *   the mean shifts; the channel's scaler is then reset so "normal" adapts;
 * - per joint, a mobility tracker → "stuck" when a normally moving joint
 *   stops while the others move;
 * - Half-Space Trees over all squashed standardised features, through an
 *   {@link AnomalyLikelihood} → "multivariate";
 * - optionally a dense autoencoder (the shipped `.tflite` via the TS path)
 *   → "reconstruction".
 *
 * Back-pressure: a ring-buffer input queue of at most `maxQueue` samples.
 * When full, the OLDEST queued sample is dropped and counted: for a safety
 * monitor the freshest telemetry matters most (a fault in progress shows in
 * the newest samples; a stale backlog would delay the alarm), and the
 * producer — a 100 Hz sensor loop — cannot slow down anyway. `push` returns
 * false when it had to drop, so a caller can log overload.
 */
import { AnomalyLikelihood } from "./anomaly_likelihood.ts";
import { Adwin } from "./adwin.ts";
import { assert } from "./assert.ts";
import { DetectInputError } from "./errors.ts";
import {
  ARM_CHANNEL_COUNT,
  ARM_CHANNELS,
  ARM_FEATURE_COUNT,
  channelsOf,
  FIRST_JOINT_CHANNEL,
  squash,
  validateSample,
} from "./features.ts";
import { HalfSpaceTrees } from "./half_space_trees.ts";
import { OnlineScaler } from "./scaler.ts";
import type { DenseModel } from "./tflite_dense.ts";
import { type AnomalyEvent, type AnomalyKind, ARM_JOINTS, type TelemetrySample } from "./types.ts";

/** Default input queue bound: 1024 samples ≈ 10 s of 100 Hz telemetry. */
export const DEFAULT_MAX_QUEUE = 1024;
/** Hard ceiling on the queue bound (memory per asset stays small). */
export const MAX_QUEUE_LIMIT = 65536;
/**
 * Distinct modes with their own statistics. Arms have a handful of modes;
 * beyond this the least recently used mode's statistics are evicted.
 */
export const MAX_MODES = 8;
/** Channels ADWIN watches for drift: the process channels (joints move by design). */
const DRIFT_CHANNELS = 3;

/** Tuning of {@link AssetDetector}. */
export interface AssetDetectorOptions<S> {
  readonly assetId: string;
  /** Asset kind, e.g. `"weld-arm"`; only models of the same kind are adopted. */
  readonly assetKind?: string;
  /** Makes the HLC stamp of an event. */
  readonly stamp: () => S;
  /** Policy: whether an event should raise an e-stop (default: never). */
  readonly shouldStop?: (event: Omit<AnomalyEvent<S>, "stop">) => boolean;
  /** Input queue bound (default {@link DEFAULT_MAX_QUEUE}). */
  readonly maxQueue?: number;
  /** Samples per mode before any event (default 500 = 5 s at 100 Hz). */
  readonly warmupSamples?: number;
  /** |z| of a value or difference that counts as a spike (default 8). */
  readonly spikeZ?: number;
  /** Minimum ms between two events of the same channel and kind (default 2000). */
  readonly debounceMs?: number;
  /** Consecutive still samples that make a moving joint "stuck" (default 50). */
  readonly stuckSamples?: number;
  /** Joint change per sample below which a joint counts as still (default 1e-5 rad). */
  readonly stillRad?: number;
  /** ADWIN confidence (default 1e-4: drift events must be rare on normal data). */
  readonly adwinDelta?: number;
  /**
   * Samples averaged into one ADWIN input (default 100 = 1 s at 100 Hz).
   * Averaging removes sensor noise and short periodic motion, so ADWIN sees
   * level changes, not the weld cycle.
   */
  readonly driftBlockSamples?: number;
  /** Smallest mean shift, in the channel's standard deviations, reported as drift (default 4). */
  readonly driftMinZ?: number;
  /** Half-Space Trees shape (seed must match peers' to merge). */
  readonly hst?: { nTrees?: number; height?: number; windowSize?: number; seed?: number };
  /** Likelihood (log-scaled) above which the HST and AE scores raise events (default 0.6). */
  readonly likelihoodThreshold?: number;
  /** Optional autoencoder over the squashed feature vector (width {@link ARM_FEATURE_COUNT}). */
  readonly autoencoder?: DenseModel;
}

/** Statistics of one operating mode. */
interface ModeState {
  readonly scaler: OnlineScaler;
  readonly adwin: Adwin[];
  readonly blockSum: Float64Array;
  blockCount: number;
  /** Per drift channel: the level and spread when the channel was last quiet. */
  readonly refMean: Float64Array;
  readonly refStd: Float64Array;
  /** Blocks since ADWIN last reported a change, per drift channel. */
  readonly quietBlocks: Uint32Array;
  readonly mobility: Float64Array;
  readonly stillRun: Uint32Array;
  seen: number;
  lastUsed: number;
}

/** Counters exposed for metrics. */
export interface DetectorCounters {
  samplesIn: number;
  samplesDropped: number;
  samplesProcessed: number;
  eventsOut: number;
  eventsSuppressed: number;
}

/** ADWIN blocks without a change before a channel's level becomes the drift reference. */
const QUIET_BLOCKS = 30;

/**
 * 30 s of 100 Hz scores define "usual"; the first 20 s only fill the history.
 * The short-term mean spans 0.5 s: a lone point in an empty HST cell is not
 * a fault, a condition that persists is.
 */
const LIKELIHOOD_OPTIONS = { historySize: 3000, shortSize: 50, warmup: 2000 } as const;

const KINDS: readonly AnomalyKind[] = ["spike", "drift", "stuck", "multivariate", "reconstruction"];

/** The per-asset pipeline; see the module comment. */
export class AssetDetector<S = unknown> {
  readonly assetId: string;
  readonly assetKind: string;
  readonly maxQueue: number;
  readonly counters: DetectorCounters = {
    samplesIn: 0,
    samplesDropped: 0,
    samplesProcessed: 0,
    eventsOut: 0,
    eventsSuppressed: 0,
  };
  private readonly queue: (TelemetrySample | undefined)[];
  private head = 0;
  private length = 0;
  private readonly modes = new Map<string, ModeState>();
  private hst: HalfSpaceTrees;
  private readonly hstLikelihood = new AnomalyLikelihood(LIKELIHOOD_OPTIONS);
  private readonly aeLikelihood = new AnomalyLikelihood(LIKELIHOOD_OPTIONS);
  private readonly lastEventMs: Float64Array;
  private readonly channels = new Float64Array(ARM_CHANNEL_COUNT);
  private readonly previous = new Float64Array(ARM_CHANNEL_COUNT);
  private hasPrevious = false;
  private previousMode = "";
  private readonly raw = new Float64Array(ARM_FEATURE_COUNT);
  private readonly z = new Float64Array(ARM_FEATURE_COUNT);
  private readonly squashed = new Float64Array(ARM_FEATURE_COUNT);
  private readonly options: Required<
    Omit<AssetDetectorOptions<S>, "autoencoder" | "hst" | "shouldStop" | "assetKind">
  >;
  private readonly shouldStop: (event: Omit<AnomalyEvent<S>, "stop">) => boolean;
  private readonly autoencoder: DenseModel | undefined;
  private tick = 0;
  /** Version counter of the local model; bumped when a peer's model is adopted. */
  modelVersion = 0;

  constructor(options: AssetDetectorOptions<S>) {
    if (typeof options.assetId !== "string" || options.assetId.length === 0) {
      throw new DetectInputError("AssetDetector.assetId", options.assetId, "a non-empty string");
    }
    this.assetId = options.assetId;
    this.assetKind = options.assetKind ?? "weld-arm";
    this.maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE;
    if (!Number.isInteger(this.maxQueue) || this.maxQueue < 1 || this.maxQueue > MAX_QUEUE_LIMIT) {
      throw new DetectInputError("AssetDetector.maxQueue", this.maxQueue, `1..${MAX_QUEUE_LIMIT}`);
    }
    this.options = {
      assetId: options.assetId,
      stamp: options.stamp,
      maxQueue: this.maxQueue,
      warmupSamples: options.warmupSamples ?? 500,
      spikeZ: options.spikeZ ?? 8,
      debounceMs: options.debounceMs ?? 2000,
      stuckSamples: options.stuckSamples ?? 50,
      stillRad: options.stillRad ?? 1e-5,
      adwinDelta: options.adwinDelta ?? 1e-4,
      driftBlockSamples: options.driftBlockSamples ?? 100,
      driftMinZ: options.driftMinZ ?? 4,
      likelihoodThreshold: options.likelihoodThreshold ?? 0.6,
    };
    this.shouldStop = options.shouldStop ?? (() => false);
    if (options.autoencoder) {
      const ae = options.autoencoder;
      if (ae.inputSize !== ARM_FEATURE_COUNT || ae.outputSize !== ARM_FEATURE_COUNT) {
        throw new DetectInputError(
          "AssetDetector.autoencoder width",
          `${ae.inputSize}→${ae.outputSize}`,
          `${ARM_FEATURE_COUNT}→${ARM_FEATURE_COUNT}`,
        );
      }
    }
    this.autoencoder = options.autoencoder;
    this.queue = new Array(this.maxQueue);
    this.hst = new HalfSpaceTrees({
      nFeatures: ARM_FEATURE_COUNT,
      nTrees: options.hst?.nTrees ?? 10,
      height: options.hst?.height ?? 8,
      windowSize: options.hst?.windowSize ?? 250,
      seed: options.hst?.seed ?? 42,
    });
    this.lastEventMs = new Float64Array(ARM_CHANNEL_COUNT * KINDS.length).fill(-Infinity);
  }

  /** Samples waiting in the queue. */
  get queued(): number {
    return this.length;
  }

  /** The Half-Space Trees model (shared between peers). */
  get forest(): HalfSpaceTrees {
    return this.hst;
  }

  /**
   * Queues a sample. Returns true when queued without loss, false when the
   * queue was full and the oldest sample was dropped to make room. Throws
   * {@link DetectInputError} for a malformed sample or another asset's sample.
   */
  push(sample: TelemetrySample): boolean {
    validateSample(sample);
    if (sample.assetId !== this.assetId) {
      throw new DetectInputError("sample.assetId", sample.assetId, this.assetId);
    }
    this.counters.samplesIn++;
    let kept = true;
    if (this.length === this.maxQueue) {
      this.queue[this.head] = undefined;
      this.head = (this.head + 1) % this.maxQueue;
      this.length--;
      this.counters.samplesDropped++;
      kept = false;
    }
    this.queue[(this.head + this.length) % this.maxQueue] = sample;
    this.length++;
    assert(this.length <= this.maxQueue, "the input queue never exceeds its bound");
    return kept;
  }

  /** Processes up to `maxItems` queued samples, oldest first; returns the events raised. */
  drain(maxItems: number = this.maxQueue): AnomalyEvent<S>[] {
    if (!Number.isInteger(maxItems) || maxItems < 0) {
      throw new DetectInputError("drain maxItems", maxItems, "a non-negative integer");
    }
    const events: AnomalyEvent<S>[] = [];
    for (let i = 0; i < maxItems && this.length > 0; i++) {
      const sample = this.queue[this.head]!;
      this.queue[this.head] = undefined;
      this.head = (this.head + 1) % this.maxQueue;
      this.length--;
      this.process(sample, events);
    }
    return events;
  }

  private modeState(mode: string): ModeState {
    let state = this.modes.get(mode);
    if (!state) {
      if (this.modes.size >= MAX_MODES) {
        let oldest: string | undefined, oldestUse = Infinity;
        for (const [name, s] of this.modes) {
          if (s.lastUsed < oldestUse) [oldest, oldestUse] = [name, s.lastUsed];
        }
        this.modes.delete(oldest!);
      }
      state = {
        scaler: new OnlineScaler(ARM_FEATURE_COUNT),
        adwin: Array.from(
          { length: DRIFT_CHANNELS },
          () => new Adwin({ delta: this.options.adwinDelta, clock: 1, minSubWindow: 10 }),
        ),
        blockSum: new Float64Array(DRIFT_CHANNELS),
        blockCount: 0,
        refMean: new Float64Array(DRIFT_CHANNELS).fill(NaN),
        refStd: new Float64Array(DRIFT_CHANNELS).fill(NaN),
        quietBlocks: new Uint32Array(DRIFT_CHANNELS),
        mobility: new Float64Array(ARM_JOINTS),
        stillRun: new Uint32Array(ARM_JOINTS),
        seen: 0,
        lastUsed: 0,
      };
      this.modes.set(mode, state);
    }
    assert(this.modes.size <= MAX_MODES, "mode statistics stay bounded");
    state.lastUsed = ++this.tick;
    return state;
  }

  private emit(
    events: AnomalyEvent<S>[],
    sample: TelemetrySample,
    channel: number,
    kind: AnomalyKind,
    score: number,
  ): void {
    // Whole-sample kinds debounce as one: their channel is only an attribution.
    const perSample = kind === "multivariate" || kind === "reconstruction";
    const key = (perSample ? 0 : channel) * KINDS.length + KINDS.indexOf(kind);
    if (sample.atMs - this.lastEventMs[key]! < this.options.debounceMs) {
      this.counters.eventsSuppressed++;
      return;
    }
    this.lastEventMs[key] = sample.atMs;
    const base = {
      assetId: this.assetId,
      channel: ARM_CHANNELS[channel]!,
      kind,
      score: Math.min(1, Math.max(0, score)),
      atMs: sample.atMs,
      stamp: this.options.stamp(),
      value: this.channels[channel]!,
      mode: sample.mode,
    };
    events.push({ ...base, stop: this.shouldStop(base) === true });
    this.counters.eventsOut++;
  }

  /** Runs every detector on one sample. */
  private process(sample: TelemetrySample, events: AnomalyEvent<S>[]): void {
    this.counters.samplesProcessed++;
    const state = this.modeState(sample.mode);
    const n = ARM_CHANNEL_COUNT;
    channelsOf(sample, this.channels);
    const continuous = this.hasPrevious && this.previousMode === sample.mode;
    for (let c = 0; c < n; c++) {
      this.raw[c] = this.channels[c]!;
      this.raw[n + c] = continuous ? this.channels[c]! - this.previous[c]! : 0;
    }
    this.previous.set(this.channels);
    this.hasPrevious = true;
    this.previousMode = sample.mode;
    const warm = state.seen >= this.options.warmupSamples;
    const scaler = state.scaler;
    scaler.transform(this.raw, this.z);

    // Spikes: a value or its change far outside what this mode has shown.
    let worst = 0, worstZ = 0;
    if (warm) {
      const spikeZ = this.options.spikeZ;
      for (let c = 0; c < n; c++) {
        const zv = Math.abs(this.z[c]!), zd = continuous ? Math.abs(this.z[n + c]!) : 0;
        // A channel whose statistics were just reset (after drift) re-warms first.
        if (scaler.count[c]! < this.options.warmupSamples) continue;
        const zc = Math.max(zv, zd);
        if (zc > worstZ) [worst, worstZ] = [c, zc];
        if (zc > spikeZ) this.emit(events, sample, c, "spike", zc / (2 * spikeZ));
      }
    }

    // Drift of the process channels; a detected change resets that channel's
    // statistics so the new level becomes the reference.
    for (let c = 0; c < DRIFT_CHANNELS; c++) {
      state.blockSum[c] = state.blockSum[c]! + this.channels[c]!;
    }
    if (++state.blockCount >= this.options.driftBlockSamples) {
      for (let c = 0; c < DRIFT_CHANNELS; c++) {
        const adwin = state.adwin[c]!;
        const blockMean = state.blockSum[c]! / state.blockCount;
        // ADWIN says "the mean changed"; only a change that is large next to
        // the channel's spread while it was last quiet is a fault (slow
        // benign wander is not). The reference is frozen while ADWIN keeps
        // firing, so a drift cannot drag its own yardstick along.
        const changed = adwin.update(blockMean);
        const channelWarm = warm && scaler.count[c]! >= this.options.warmupSamples;
        if (!changed) {
          state.quietBlocks[c] = state.quietBlocks[c]! + 1;
          if (channelWarm && state.quietBlocks[c]! >= QUIET_BLOCKS) {
            state.refMean[c] = scaler.mean[c]!;
            state.refStd[c] = scaler.std(c);
          }
          continue;
        }
        state.quietBlocks[c] = 0;
        const shift = Math.abs(blockMean - state.refMean[c]!) / state.refStd[c]!;
        if (channelWarm && shift >= this.options.driftMinZ) {
          this.emit(events, sample, c, "drift", 0.5 * Math.min(2, shift / this.options.driftMinZ));
          scaler.resetFeature(c);
          scaler.resetFeature(n + c);
          state.refMean[c] = NaN;
        }
      }
      state.blockSum.fill(0);
      state.blockCount = 0;
    }

    // Stuck joints: still for a while although the joint normally moves and
    // another joint is moving now.
    if (continuous) {
      const still = this.options.stillRad;
      let othersMoving = 0;
      for (let j = 0; j < ARM_JOINTS; j++) {
        if (Math.abs(this.raw[n + FIRST_JOINT_CHANNEL + j]!) >= still) othersMoving++;
      }
      for (let j = 0; j < ARM_JOINTS; j++) {
        const step = Math.abs(this.raw[n + FIRST_JOINT_CHANNEL + j]!);
        if (step < still) {
          state.stillRun[j] = state.stillRun[j]! + 1;
        } else {
          state.stillRun[j] = 0;
          state.mobility[j] = state.mobility[j]! + 0.01 * (step - state.mobility[j]!);
        }
        const run = state.stillRun[j]!;
        if (
          warm && run >= this.options.stuckSamples && othersMoving > 0 &&
          state.mobility[j]! > 20 * still
        ) {
          this.emit(
            events,
            sample,
            FIRST_JOINT_CHANNEL + j,
            "stuck",
            0.5 * run / this.options.stuckSamples,
          );
        }
      }
    }

    // Multivariate rarity over all channels.
    for (let i = 0; i < ARM_FEATURE_COUNT; i++) this.squashed[i] = squash(this.z[i]!);
    if (warm) {
      const raw = this.hst.scoreAndLearn(this.squashed);
      if (this.hst.ready) {
        const likelihood = this.hstLikelihood.update(raw);
        if (likelihood > this.options.likelihoodThreshold) {
          this.emit(events, sample, worst, "multivariate", likelihood);
        }
      }
      if (this.autoencoder) {
        const out = this.autoencoder.run(this.squashed);
        // The worst-reconstructed feature, not the mean: a fault usually
        // breaks one channel's relation to the others.
        let err = 0;
        for (let i = 0; i < ARM_FEATURE_COUNT; i++) {
          err = Math.max(err, (out[i]! - this.squashed[i]!) ** 2);
        }
        const likelihood = this.aeLikelihood.update(err);
        if (likelihood > this.options.likelihoodThreshold) {
          this.emit(events, sample, worst, "reconstruction", likelihood);
        }
      }
    }
    scaler.learn(this.raw);
    state.seen++;
  }

  /** Replaces the forest with an adopted one (already validated by the caller). */
  replaceForest(next: HalfSpaceTrees): void {
    assert(next.compatibleWith(this.hst), "an adopted forest has this detector's structure");
    this.hst = next;
  }
}
