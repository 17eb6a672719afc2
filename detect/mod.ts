/**
 * `detect/`: streaming anomaly detection for twinmesh assets — incremental
 * learners, the per-asset pipeline, TFLite model runtimes, signed model
 * sharing and the benchmark scorers. No network, no clock, no gateway state.
 *
 * @example
 * ```ts
 * import { AssetDetector, WeldArmSimulator } from "./mod.ts";
 * const detector = new AssetDetector({ assetId: "arm-1", stamp: () => Date.now() });
 * const sim = new WeldArmSimulator({ assetId: "arm-1" });
 * detector.push(sim.next());
 * const events = detector.drain(64);
 * console.assert(events.length === 0);
 * ```
 */
export { Adwin, type AdwinOptions, MAX_ADWIN_ROWS } from "./adwin.ts";
export { AnomalyLikelihood, type AnomalyLikelihoodOptions } from "./anomaly_likelihood.ts";
export { AssertionError } from "./assert.ts";
export { trainAutoencoder } from "./autoencoder.ts";
export type { DenseActivation, DenseLayer } from "./dense_layer.ts";
export {
  DetectInputError,
  ModelRejectedError,
  type ModelRejectReason,
  TfliteModelError,
} from "./errors.ts";
export { ARM_CHANNELS, ARM_FEATURE_COUNT, validateSample } from "./features.ts";
export { HalfSpaceTrees, type HalfSpaceTreesOptions } from "./half_space_trees.ts";
export { HoeffdingTree, type HoeffdingTreeOptions } from "./hoeffding_tree.ts";
export { LiteRtModel, loadLiteRtRuntime } from "./litert.ts";
export {
  decodeModel,
  encodeModel,
  MAX_MODEL_BYTES,
  ModelKind,
  type ModelKindCode,
  type SignFn,
  type VerifyFn,
} from "./model_codec.ts";
export {
  adoptDetectorModel,
  AdoptionLedger,
  type AdoptMode,
  exportDetectorModel,
} from "./model_sharing.ts";
export { type NabFileResult, type NabProfile, nabScore, sweepCorpus } from "./nab_scorer.ts";
export { GaussianNaiveBayes } from "./naive_bayes.ts";
export {
  AssetDetector,
  type AssetDetectorOptions,
  DEFAULT_MAX_QUEUE,
  type DetectorCounters,
  MAX_MODES,
} from "./pipeline.ts";
export { Mulberry32 } from "./random.ts";
export { OnlineScaler } from "./scaler.ts";
export { confusionOf, skabMetrics } from "./skab_metric.ts";
export { DenseModel, readDenseTflite } from "./tflite_dense.ts";
export { writeDenseTflite } from "./tflite_writer.ts";
export { type AnomalyEvent, type AnomalyKind, ARM_JOINTS, type TelemetrySample } from "./types.ts";
export { type SimFault, WeldArmSimulator } from "./weld_sim.ts";
