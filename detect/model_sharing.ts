/**
 * Sharing an {@link AssetDetector}'s learned model with peers of the same
 * asset kind: export (serialise + sign) and adopt (verify + replace or
 * merge). A refused model throws {@link ModelRejectedError} and leaves the
 * running model untouched: the incoming model is fully decoded and checked
 * on a copy before anything is swapped in.
 */
import { ModelRejectedError } from "./errors.ts";
import { HalfSpaceTrees } from "./half_space_trees.ts";
import { decodeModel, encodeModel, ModelKind, type SignFn, type VerifyFn } from "./model_codec.ts";
import type { AssetDetector } from "./pipeline.ts";

/** How an adopted model combines with the running one. */
export type AdoptMode = "replace" | "merge";

/** Highest model version adopted per signer, to refuse replays of older models. */
export class AdoptionLedger {
  /** Most signers remembered; a mesh of gateways is far smaller. */
  static readonly MAX_SIGNERS = 4096;
  private readonly versions = new Map<string, number>();

  /** Last adopted version from `signerId`, or -1. */
  last(signerId: string): number {
    return this.versions.get(signerId) ?? -1;
  }

  /** Records an adoption. */
  record(signerId: string, version: number): void {
    if (!this.versions.has(signerId) && this.versions.size >= AdoptionLedger.MAX_SIGNERS) {
      const first = this.versions.keys().next().value;
      if (first !== undefined) this.versions.delete(first);
    }
    this.versions.set(signerId, version);
  }
}

/** Serialises and signs the detector's Half-Space Trees (< 50 KB). */
export function exportDetectorModel<S>(
  detector: AssetDetector<S>,
  signerId: string,
  sign: SignFn,
): Promise<Uint8Array> {
  return encodeModel({
    modelKind: ModelKind.halfSpaceTrees,
    assetKind: detector.assetKind,
    modelVersion: detector.modelVersion,
    signerId,
    payload: detector.forest.toBytes(),
  }, sign);
}

/**
 * Verifies `bytes` and applies them to `detector`: "replace" swaps in the
 * peer's forest, "merge" averages the peer's reference mass profile into
 * the local one. Returns the adopted model version.
 */
export async function adoptDetectorModel<S>(
  detector: AssetDetector<S>,
  bytes: Uint8Array,
  verify: VerifyFn,
  options: { mode?: AdoptMode; ledger?: AdoptionLedger } = {},
): Promise<number> {
  const model = await decodeModel(
    bytes,
    { modelKind: ModelKind.halfSpaceTrees, assetKind: detector.assetKind },
    verify,
  );
  const ledger = options.ledger;
  if (ledger && model.modelVersion <= ledger.last(model.signerId)) {
    throw new ModelRejectedError(
      "stale-version",
      `version ${model.modelVersion} from "${model.signerId}" is not newer than ${
        ledger.last(model.signerId)
      }`,
    );
  }
  let incoming: HalfSpaceTrees;
  try {
    incoming = HalfSpaceTrees.fromBytes(model.payload);
  } catch (error) {
    throw new ModelRejectedError("corrupt-payload", String(error));
  }
  if (!incoming.compatibleWith(detector.forest)) {
    throw new ModelRejectedError(
      "incompatible",
      `forest ${JSON.stringify(incoming.config)} does not match ${
        JSON.stringify(detector.forest.config)
      }`,
    );
  }
  if ((options.mode ?? "merge") === "replace") {
    detector.replaceForest(incoming);
  } else {
    const merged = HalfSpaceTrees.fromBytes(detector.forest.toBytes());
    merged.mergeReference(incoming);
    detector.replaceForest(merged);
  }
  detector.modelVersion++;
  ledger?.record(model.signerId, model.modelVersion);
  return model.modelVersion;
}
