/**
 * Signed, versioned envelope for sharing detector models between peers.
 *
 * Layout (little-endian):
 *   magic "TWMD" | formatVersion u8 | modelKind u8 | modelVersion u32 |
 *   assetKind (u8 length + UTF-8) | signerId (u8 length + UTF-8) |
 *   payload (u32 length + bytes) | signature (u16 length + bytes)
 * The signature covers every byte before the signature length. Signing and
 * verification are injected (the gateway passes its Ed25519 libp2p key), so
 * this module holds no keys.
 *
 * Decoding checks, in order: size, structure, magic, format version, model
 * kind, asset kind, presence of a signature, the signature itself. Any
 * failure throws {@link ModelRejectedError} with the reason; nothing is
 * applied before every check passed.
 */
import { assert } from "./assert.ts";
import { ModelRejectedError } from "./errors.ts";

/** Largest envelope accepted or produced: models stay compact for gossip. */
export const MAX_MODEL_BYTES = 50 * 1024;
/** Current envelope format. */
export const MODEL_FORMAT_VERSION = 1;
/** Longest asset kind or signer id (fits the u8 length prefix). */
export const MAX_MODEL_LABEL_BYTES = 255;
/** Longest signature (Ed25519 uses 64 bytes). */
export const MAX_SIGNATURE_BYTES = 1024;

const MAGIC = [0x54, 0x57, 0x4d, 0x44]; // "TWMD"

/** Model kinds carried in an envelope. */
export const ModelKind = {
  /** Half-Space Trees of an {@link AssetDetector}. */
  halfSpaceTrees: 1,
  /** Gaussian Naive Bayes sufficient statistics. */
  gaussianNaiveBayes: 2,
  /** Hoeffding tree with Naive Bayes leaves. */
  hoeffdingTree: 3,
  /** Online scaler statistics. */
  scaler: 4,
} as const;
/** A value of {@link ModelKind}. */
export type ModelKindCode = typeof ModelKind[keyof typeof ModelKind];

/** Signs bytes with the local key. */
export type SignFn = (bytes: Uint8Array) => Promise<Uint8Array>;
/** Verifies that `signerId` signed `bytes`. */
export type VerifyFn = (signerId: string, bytes: Uint8Array, sig: Uint8Array) => Promise<boolean>;

/** The unsigned content of an envelope. */
export interface ModelEnvelope {
  readonly modelKind: ModelKindCode;
  readonly assetKind: string;
  readonly modelVersion: number;
  readonly signerId: string;
  readonly payload: Uint8Array;
}

/** A decoded, verified envelope. */
export interface VerifiedModel extends ModelEnvelope {
  readonly formatVersion: number;
}

/** Envelope overhead for given labels, to size payloads ahead of time. */
export function envelopeOverhead(assetKind: string, signerId: string, sigBytes = 64): number {
  const enc = new TextEncoder();
  return 4 + 1 + 1 + 4 + 1 + enc.encode(assetKind).length + 1 + enc.encode(signerId).length + 4 +
    2 + sigBytes;
}

/** Serialises and signs a model. Throws {@link ModelRejectedError} "oversized" if too big. */
export async function encodeModel(model: ModelEnvelope, sign: SignFn): Promise<Uint8Array> {
  const enc = new TextEncoder();
  const kind = enc.encode(model.assetKind);
  const signer = enc.encode(model.signerId);
  if (kind.length > MAX_MODEL_LABEL_BYTES || signer.length > MAX_MODEL_LABEL_BYTES) {
    throw new ModelRejectedError(
      "oversized",
      `asset kind or signer id over ${MAX_MODEL_LABEL_BYTES} bytes`,
    );
  }
  assert(Number.isInteger(model.modelVersion) && model.modelVersion >= 0, "model version is a u32");
  const bodyLength = 4 + 1 + 1 + 4 + 1 + kind.length + 1 + signer.length + 4 + model.payload.length;
  const body = new Uint8Array(bodyLength);
  const v = new DataView(body.buffer);
  body.set(MAGIC, 0);
  let o = 4;
  v.setUint8(o++, MODEL_FORMAT_VERSION);
  v.setUint8(o++, model.modelKind);
  v.setUint32(o, model.modelVersion >>> 0, true);
  o += 4;
  v.setUint8(o++, kind.length);
  body.set(kind, o);
  o += kind.length;
  v.setUint8(o++, signer.length);
  body.set(signer, o);
  o += signer.length;
  v.setUint32(o, model.payload.length, true);
  o += 4;
  body.set(model.payload, o);
  o += model.payload.length;
  assert(o === bodyLength, "envelope body fully written");
  const sig = await sign(body);
  if (sig.length === 0 || sig.length > MAX_SIGNATURE_BYTES) {
    throw new ModelRejectedError("unsigned", `signer returned ${sig.length} signature bytes`);
  }
  const total = bodyLength + 2 + sig.length;
  if (total > MAX_MODEL_BYTES) {
    throw new ModelRejectedError("oversized", `${total} B exceeds ${MAX_MODEL_BYTES} B`);
  }
  const out = new Uint8Array(total);
  out.set(body, 0);
  new DataView(out.buffer).setUint16(bodyLength, sig.length, true);
  out.set(sig, bodyLength + 2);
  return out;
}

/** What the receiver expects of an envelope. */
export interface ModelExpectation {
  readonly modelKind: ModelKindCode;
  readonly assetKind: string;
}

/** Parses, checks and verifies an envelope; throws {@link ModelRejectedError}. */
export async function decodeModel(
  bytes: Uint8Array,
  expect: ModelExpectation,
  verify: VerifyFn,
): Promise<VerifiedModel> {
  if (!(bytes instanceof Uint8Array)) throw new ModelRejectedError("truncated", "not a byte array");
  if (bytes.length > MAX_MODEL_BYTES) {
    throw new ModelRejectedError("oversized", `${bytes.length} B exceeds ${MAX_MODEL_BYTES} B`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let o = 0;
  const need = (n: number, what: string) => {
    if (o + n > bytes.length) {
      throw new ModelRejectedError(
        "truncated",
        `${what} needs ${n} B at offset ${o}, have ${bytes.length - o}`,
      );
    }
  };
  need(4, "magic");
  if (MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new ModelRejectedError("bad-magic", "not a TWMD model");
  }
  o = 4;
  need(6, "header");
  const formatVersion = v.getUint8(o++);
  if (formatVersion !== MODEL_FORMAT_VERSION) {
    throw new ModelRejectedError(
      "unsupported-format",
      `format ${formatVersion}, expected ${MODEL_FORMAT_VERSION}`,
    );
  }
  const modelKind = v.getUint8(o++);
  if (modelKind !== expect.modelKind) {
    throw new ModelRejectedError(
      "wrong-kind",
      `model kind ${modelKind}, expected ${expect.modelKind}`,
    );
  }
  const modelVersion = v.getUint32(o, true);
  o += 4;
  const dec = new TextDecoder("utf-8", { fatal: true });
  const label = (what: string): string => {
    need(1, what);
    const n = v.getUint8(o++);
    need(n, what);
    try {
      return dec.decode(bytes.subarray(o, o += n));
    } catch {
      throw new ModelRejectedError("corrupt-payload", `${what} is not UTF-8`);
    }
  };
  const assetKind = label("asset kind");
  if (assetKind !== expect.assetKind) {
    throw new ModelRejectedError(
      "wrong-asset-kind",
      `asset kind "${assetKind}", expected "${expect.assetKind}"`,
    );
  }
  const signerId = label("signer id");
  need(4, "payload length");
  const payloadLength = v.getUint32(o, true);
  o += 4;
  need(payloadLength, "payload");
  const payload = bytes.slice(o, o + payloadLength);
  o += payloadLength;
  const bodyEnd = o;
  if (o === bytes.length) throw new ModelRejectedError("unsigned", "no signature");
  need(2, "signature length");
  const sigLength = v.getUint16(o, true);
  o += 2;
  if (sigLength === 0) throw new ModelRejectedError("unsigned", "empty signature");
  need(sigLength, "signature");
  const sig = bytes.slice(o, o + sigLength);
  o += sigLength;
  if (o !== bytes.length) {
    throw new ModelRejectedError("truncated", `${bytes.length - o} trailing bytes`);
  }
  let ok = false;
  try {
    ok = await verify(signerId, bytes.slice(0, bodyEnd), sig);
  } catch (error) {
    throw new ModelRejectedError("bad-signature", `verifier failed: ${String(error)}`);
  }
  if (ok !== true) {
    throw new ModelRejectedError("bad-signature", `signature of "${signerId}" does not verify`);
  }
  return {
    formatVersion,
    modelKind: modelKind as ModelKindCode,
    assetKind,
    modelVersion,
    signerId,
    payload,
  };
}
