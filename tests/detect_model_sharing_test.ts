import { generateKeyPair } from "@libp2p/crypto/keys";
import { assert, assertEquals, assertLessOrEqual, assertRejects } from "./detect_assert.ts";
import { ModelRejectedError } from "../detect/errors.ts";
import {
  decodeModel,
  encodeModel,
  MAX_MODEL_BYTES,
  ModelKind,
  type VerifyFn,
} from "../detect/model_codec.ts";
import {
  adoptDetectorModel,
  AdoptionLedger,
  exportDetectorModel,
} from "../detect/model_sharing.ts";
import { AssetDetector } from "../detect/pipeline.ts";
import { WeldArmSimulator } from "../detect/weld_sim.ts";

async function keys() {
  const alice = await generateKeyPair("Ed25519");
  const mallory = await generateKeyPair("Ed25519");
  const publicKeys = new Map([["alice", alice.publicKey], ["mallory", mallory.publicKey]]);
  const verify: VerifyFn = async (signerId, bytes, sig) => {
    const key = publicKeys.get(signerId);
    return key ? await key.verify(bytes, sig) : false;
  };
  return {
    signAlice: async (bytes: Uint8Array) => await alice.sign(bytes),
    signMallory: async (bytes: Uint8Array) => await mallory.sign(bytes),
    verify,
  };
}

function trainedDetector(seed: number, samples = 3000): AssetDetector<number> {
  const sim = new WeldArmSimulator({ seed, assetId: `arm-${seed}` });
  const det = new AssetDetector<number>({ assetId: `arm-${seed}`, stamp: () => 0 });
  for (let i = 0; i < samples; i++) {
    det.push(sim.next());
    det.drain();
  }
  return det;
}

async function rejection(p: Promise<unknown>): Promise<string> {
  const error = await assertRejects(() => p, ModelRejectedError);
  return error.reason;
}

Deno.test("an exported detector model is under 50 KB and a peer adopts it", async () => {
  const { signAlice, verify } = await keys();
  const source = trainedDetector(1);
  const bytes = await exportDetectorModel(source, "alice", signAlice);
  assertLessOrEqual(bytes.length, 50 * 1024);
  const peer = trainedDetector(2, 800);
  const before = peer.modelVersion;
  await adoptDetectorModel(peer, bytes, verify, { mode: "replace" });
  assertEquals(peer.forest.toBytes(), source.forest.toBytes());
  assertEquals(peer.modelVersion, before + 1);
});

Deno.test("a tampered, unsigned, foreign-signed, wrong-kind or oversized model is refused and the running model stays", async () => {
  const { signAlice, signMallory, verify } = await keys();
  const peer = trainedDetector(3, 1500);
  const running = peer.forest.toBytes();
  const good = await exportDetectorModel(trainedDetector(4), "alice", signAlice);

  const tampered = good.slice();
  tampered[200] = tampered[200]! ^ 0xff;
  assertEquals(await rejection(adoptDetectorModel(peer, tampered, verify)), "bad-signature");

  // Mallory signs but claims to be alice.
  const forged = await encodeModel({
    modelKind: ModelKind.halfSpaceTrees,
    assetKind: "weld-arm",
    modelVersion: 9,
    signerId: "alice",
    payload: peer.forest.toBytes(),
  }, signMallory);
  assertEquals(await rejection(adoptDetectorModel(peer, forged, verify)), "bad-signature");

  const signatureLength = new DataView(good.buffer).getUint16(good.length - 66, true);
  assertEquals(signatureLength, 64, "Ed25519 signatures are 64 bytes");
  const unsigned = good.slice(0, good.length - 66);
  assertEquals(await rejection(adoptDetectorModel(peer, unsigned, verify)), "unsigned");

  const wrongKind = await encodeModel({
    modelKind: ModelKind.gaussianNaiveBayes,
    assetKind: "weld-arm",
    modelVersion: 1,
    signerId: "alice",
    payload: new Uint8Array(8),
  }, signAlice);
  assertEquals(await rejection(adoptDetectorModel(peer, wrongKind, verify)), "wrong-kind");

  const otherAsset = await encodeModel({
    modelKind: ModelKind.halfSpaceTrees,
    assetKind: "conveyor",
    modelVersion: 1,
    signerId: "alice",
    payload: peer.forest.toBytes(),
  }, signAlice);
  assertEquals(await rejection(adoptDetectorModel(peer, otherAsset, verify)), "wrong-asset-kind");

  const oversized = new Uint8Array(MAX_MODEL_BYTES + 1);
  oversized.set(good);
  assertEquals(await rejection(adoptDetectorModel(peer, oversized, verify)), "oversized");

  const garbage = await encodeModel({
    modelKind: ModelKind.halfSpaceTrees,
    assetKind: "weld-arm",
    modelVersion: 1,
    signerId: "alice",
    payload: new Uint8Array(40),
  }, signAlice);
  assertEquals(await rejection(adoptDetectorModel(peer, garbage, verify)), "corrupt-payload");

  assertEquals(
    peer.forest.toBytes(),
    running,
    "the running model is unchanged after every refusal",
  );
});

Deno.test("an older model version from the same signer is refused as stale", async () => {
  const { signAlice, verify } = await keys();
  const ledger = new AdoptionLedger();
  const source = trainedDetector(5);
  source.modelVersion = 4;
  const v4 = await exportDetectorModel(source, "alice", signAlice);
  source.modelVersion = 3;
  const v3 = await exportDetectorModel(source, "alice", signAlice);
  const peer = trainedDetector(6, 600);
  assertEquals(await adoptDetectorModel(peer, v4, verify, { ledger }), 4);
  assertEquals(await rejection(adoptDetectorModel(peer, v3, verify, { ledger })), "stale-version");
});

Deno.test("merging a peer's forest averages the two mass profiles", async () => {
  const { signAlice, verify } = await keys();
  const a = trainedDetector(7), b = trainedDetector(8);
  const bytes = await exportDetectorModel(b, "alice", signAlice);
  // Reference masses are the first uint16 array after the 28-byte header.
  const masses = (bytes: Uint8Array, count: number) =>
    Array.from({ length: count }, (_, i) => new DataView(bytes.buffer).getUint16(28 + 2 * i, true));
  const count = a.forest.config.nTrees * a.forest.nodesPerTree;
  const ma = masses(a.forest.toBytes(), count), mb = masses(b.forest.toBytes(), count);
  assert(ma.some((m, i) => m !== mb[i]), "the two peers learned different masses");
  await adoptDetectorModel(a, bytes, verify, { mode: "merge" });
  const merged = masses(a.forest.toBytes(), count);
  assertEquals(merged, ma.map((m, i) => Math.round((m + mb[i]!) / 2)));
  const decoded = await decodeModel(
    bytes,
    { modelKind: ModelKind.halfSpaceTrees, assetKind: "weld-arm" },
    verify,
  );
  assertEquals(decoded.signerId, "alice");
  assertEquals(decoded.formatVersion, 1);
});
