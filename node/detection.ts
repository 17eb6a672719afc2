/**
 * Edge anomaly detection on the gateway: one detector per asset, fed by the
 * telemetry loop, drained in small batches. Events are kept in a bounded
 * ring (GET /anomalies), published to the factory, and may raise an e-stop
 * when the operator enabled that policy. Detector models are shared with
 * the factory's gateways, signed with the gateway key.
 */
import {
  adoptDetectorModel,
  AdoptionLedger,
  type AnomalyEvent,
  AssetDetector,
  DenseModel,
  exportDetectorModel,
  ModelRejectedError,
  type TelemetrySample,
} from "../detect/mod.ts";
import { formatTimestamp, type Timestamp } from "../protocols/hlc.ts";
import type { Logger } from "./log.ts";

/** Events kept for GET /anomalies; older ones are dropped (they are in the twin and logs). */
export const MAX_RECENT_ANOMALIES = 1_000;
/** Drain period: 50 ms keeps detection latency low and batches the work. */
export const DRAIN_INTERVAL_MS = 50;
/** How often a gateway shares its detector model with the factory. */
export const MODEL_SHARE_INTERVAL_MS = 60_000;
/** Gossip messages larger than this are not models (models are < 50 KB). */
export const MAX_MODEL_MESSAGE_BYTES = 64 * 1024;

export interface AnomalyView {
  assetId: string;
  channel: string;
  kind: string;
  score: number;
  value: number;
  atMs: number;
  hlc: string;
  origin: string;
  stopRaised: boolean;
}

export interface DetectionComponents {
  logger: Logger;
  stamp: () => Timestamp;
  selfPeerId: string;
  sign: (bytes: Uint8Array) => Promise<Uint8Array>;
  verify: (signer: string, bytes: Uint8Array, sig: Uint8Array) => Promise<boolean>;
  /** Publishes an anomaly event or a model to the factory. */
  publish: (topic: "anomalies" | "models", bytes: Uint8Array) => void;
  /** Called for every local anomaly event (traces). */
  onAnomaly?: (event: AnomalyView) => void;
  /** Called for events the stop policy selects (only when enabled). */
  raiseStop: (event: AnomalyView) => void;
}

export class Detection {
  readonly #detectors = new Map<string, AssetDetector<Timestamp>>();
  readonly #recent: AnomalyView[] = [];
  readonly #ledger = new AdoptionLedger();
  readonly #c: DetectionComponents;
  #drainTimer?: ReturnType<typeof setInterval>;
  #shareTimer?: ReturnType<typeof setInterval>;
  readonly stats = {
    anomaliesLocal: 0,
    anomaliesRemote: 0,
    modelsShared: 0,
    modelsAdopted: 0,
    modelsRefused: 0,
  };

  constructor(
    assetIds: string[],
    readonly stopOnAnomaly: boolean,
    components: DetectionComponents,
  ) {
    this.#c = components;
    const autoencoder = loadShippedAutoencoder(components.logger);
    for (const assetId of assetIds) {
      this.#detectors.set(
        assetId,
        new AssetDetector<Timestamp>({
          assetId,
          stamp: components.stamp,
          ...(autoencoder ? { autoencoder } : {}),
          // Policy: only a confident spike may stop an arm; off unless configured.
          shouldStop: (e) => stopOnAnomaly && e.kind === "spike" && e.score >= 0.9,
        }),
      );
    }
  }

  start(): void {
    this.#drainTimer = setInterval(() => this.drain(), DRAIN_INTERVAL_MS);
    this.#shareTimer = setInterval(() => void this.shareModel(), MODEL_SHARE_INTERVAL_MS);
  }

  stop(): void {
    clearInterval(this.#drainTimer);
    clearInterval(this.#shareTimer);
  }

  /** Hands a sample to its asset's detector (bounded queue; false = oldest dropped). */
  push(sample: TelemetrySample): boolean {
    return this.#detectors.get(sample.assetId)?.push(sample) ?? false;
  }

  /** Runs queued samples through the detectors and handles the events. */
  drain(): void {
    for (const detector of this.#detectors.values()) {
      for (const event of detector.drain()) this.#onLocalEvent(event);
    }
  }

  recent(limit: number, assetId?: string): AnomalyView[] {
    const list = assetId ? this.#recent.filter((a) => a.assetId === assetId) : this.#recent;
    return list.slice(-limit).reverse();
  }

  counters(): Record<string, number> {
    let samplesIn = 0, samplesDropped = 0;
    for (const d of this.#detectors.values()) {
      samplesIn += d.counters.samplesIn;
      samplesDropped += d.counters.samplesDropped;
    }
    return { ...this.stats, samplesIn, samplesDropped };
  }

  /** An anomaly published by another gateway. */
  receiveAnomaly(bytes: Uint8Array, from: string): void {
    let view: AnomalyView;
    try {
      view = JSON.parse(new TextDecoder().decode(bytes));
      if (typeof view.assetId !== "string" || typeof view.score !== "number") {
        throw new Error("missing fields");
      }
    } catch (err) {
      this.#c.logger.debug("dropped malformed anomaly message", { from, error: err });
      return;
    }
    this.stats.anomaliesRemote++;
    this.#remember({ ...view, origin: from });
  }

  /** Signs and publishes the model of the first detector (all arms share one kind). */
  async shareModel(): Promise<void> {
    const first = this.#detectors.values().next().value;
    if (!first) return;
    const bytes = await exportDetectorModel(first, this.#c.selfPeerId, this.#c.sign);
    this.#c.publish("models", bytes);
    this.stats.modelsShared++;
  }

  /** A model from a peer: verified, then merged into every local detector of its kind. */
  async receiveModel(bytes: Uint8Array, from: string): Promise<void> {
    if (bytes.length > MAX_MODEL_MESSAGE_BYTES) {
      this.stats.modelsRefused++;
      this.#c.logger.warn("refused model", { from, reason: "oversized", bytes: bytes.length });
      return;
    }
    for (const detector of this.#detectors.values()) {
      try {
        await adoptDetectorModel(detector, bytes, this.#c.verify, {
          mode: "merge",
          ledger: this.#ledger,
        });
        this.stats.modelsAdopted++;
      } catch (err) {
        this.stats.modelsRefused++;
        const reason = err instanceof ModelRejectedError ? err.reason : String(err);
        // Stale versions are the normal case after the first detector adopted.
        if (reason !== "stale-version") this.#c.logger.warn("refused model", { from, reason });
        return;
      }
    }
  }

  #onLocalEvent(event: AnomalyEvent<Timestamp>): void {
    this.stats.anomaliesLocal++;
    const view: AnomalyView = {
      assetId: event.assetId,
      channel: event.channel,
      kind: event.kind,
      score: Math.round(event.score * 1000) / 1000,
      value: event.value,
      atMs: event.atMs,
      hlc: formatTimestamp(event.stamp),
      origin: this.#c.selfPeerId,
      stopRaised: event.stop,
    };
    this.#remember(view);
    this.#c.onAnomaly?.(view);
    this.#c.logger.info("anomaly", {
      asset: view.assetId,
      channel: view.channel,
      kind: view.kind,
      score: view.score,
    });
    this.#c.publish("anomalies", new TextEncoder().encode(JSON.stringify(view)));
    if (event.stop) this.#c.raiseStop(view);
  }

  #remember(view: AnomalyView): void {
    this.#recent.push(view);
    if (this.#recent.length > MAX_RECENT_ANOMALIES) {
      this.#recent.splice(0, this.#recent.length - MAX_RECENT_ANOMALIES);
    }
  }
}

/** The autoencoder `scripts/make_model.ts` trains and ships (TFLite, run on the TS dense path). */
export const SHIPPED_MODEL_URL = new URL(
  "../detect/models/weld_autoencoder.tflite",
  import.meta.url,
);

function loadShippedAutoencoder(logger: Logger): DenseModel | undefined {
  try {
    return DenseModel.fromTflite(Deno.readFileSync(SHIPPED_MODEL_URL));
  } catch (err) {
    logger.warn("shipped autoencoder not loaded; reconstruction scores are off", { error: err });
    return undefined;
  }
}
