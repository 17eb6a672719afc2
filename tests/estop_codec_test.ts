import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import fc from "fast-check";
import { generateKeyPair } from "@libp2p/crypto/keys";
import {
  decodeFrame,
  decodeFramePrefixed,
  encodePing,
  encodeRelay,
  FrameDecoder,
  MalformedFrameError,
  prepareAck,
  prepareReset,
  prepareStop,
  sealFrame,
} from "../protocols/estop_codec.ts";
import { MAX_FRAME_BYTES } from "../protocols/estop_constants.ts";

const hlc = { wallMs: 1_700_000_000_000, logical: 3, node: "gw-a" };
const stopFields = {
  id: "0123456789abcdef0123456789abcdef",
  hlc,
  origin: "gw-a",
  target: { kind: "cell", id: "cell-2" } as const,
  reason: "light curtain ⚠",
};

Deno.test("a sealed STOP decodes to the same fields and its signed bytes verify", async () => {
  const key = await generateKeyPair("Ed25519");
  const unsigned = prepareStop(stopFields);
  const frame = sealFrame(unsigned, await key.sign(unsigned.signedBytes));
  const decoded = decodeFramePrefixed(frame);
  assert(decoded.type === "stop");
  assertEquals(
    { id: decoded.id, hlc: decoded.hlc, origin: decoded.origin, target: decoded.target },
    { id: stopFields.id, hlc, origin: "gw-a", target: stopFields.target },
  );
  assertEquals(decoded.reason, stopFields.reason);
  assert(await key.publicKey.verify(decoded.signedBytes, decoded.signature));
  assertEquals(decoded.frameBytes, frame);
});

Deno.test("a tampered STOP no longer verifies", async () => {
  const key = await generateKeyPair("Ed25519");
  const unsigned = prepareStop(stopFields);
  const frame = sealFrame(unsigned, await key.sign(unsigned.signedBytes));
  const tampered = frame.slice();
  tampered[tampered.length - 70] = tampered[tampered.length - 70]! ^ 0x01; // inside the reason
  const decoded = decodeFramePrefixed(tampered);
  assert(decoded.type === "stop");
  assert(!(await key.publicKey.verify(decoded.signedBytes, decoded.signature)));
});

Deno.test("RESET, ACK, PING and RELAY frames round-trip", () => {
  const sig = new Uint8Array(64).fill(7);
  const reset = sealFrame(
    prepareReset({ ...stopFields, target: { kind: "all" }, stopIds: [stopFields.id] }),
    sig,
  );
  const decodedReset = decodeFramePrefixed(reset);
  assert(decodedReset.type === "reset");
  assertEquals(decodedReset.stopIds, [stopFields.id]);
  assertEquals(decodedReset.target, { kind: "all" });
  const ack = sealFrame(
    prepareAck({
      commandId: stopFields.id,
      commandType: "stop",
      status: "refused-not-operator",
      owner: "gw-b",
      hlc: { ...hlc, node: "gw-b" },
      assetCount: 3,
    }),
    sig,
  );
  const decodedAck = decodeFramePrefixed(ack);
  assert(decodedAck.type === "ack");
  assertEquals([decodedAck.status, decodedAck.assetCount], ["refused-not-operator", 3]);
  assertEquals(decodeFramePrefixed(encodePing(42)), { type: "ping", nonce: 42 });
  const relay = decodeFramePrefixed(encodeRelay("gw-c", ack));
  assert(relay.type === "relay" && relay.destination === "gw-c" && relay.inner.type === "ack");
});

Deno.test("relays do not nest and unknown types, versions and trailing bytes are malformed", () => {
  const ping = encodePing(1);
  throws(
    () => decodeFramePrefixed(encodeRelay("gw-c", encodeRelay("gw-d", ping))),
    MalformedFrameError,
  );
  throws(() => decodeFrame(new Uint8Array([1, 0x7f])), MalformedFrameError);
  throws(() => decodeFrame(new Uint8Array([9, 0x01, 0, 0, 0, 1])), MalformedFrameError);
  throws(() => decodeFrame(new Uint8Array([1, 0x01, 0, 0, 0, 1, 0])), MalformedFrameError);
});

Deno.test("a STOP whose HLC node is not its origin is malformed", () => {
  const frame = sealFrame(prepareStop({ ...stopFields, origin: "gw-z" }), new Uint8Array(64));
  throws(() => decodeFramePrefixed(frame), MalformedFrameError);
});

Deno.test("the frame decoder splits chunks at any boundary and refuses oversized lengths", () => {
  const frames = [encodePing(1), encodePing(2), encodePing(3)];
  const bytes = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let offset = 0;
  for (const f of frames) {
    bytes.set(f, offset);
    offset += f.length;
  }
  const decoder = new FrameDecoder();
  const out = [];
  for (let i = 0; i < bytes.length; i += 5) out.push(...decoder.push(bytes.subarray(i, i + 5)));
  assertEquals(out.map((p) => decodeFrame(p)), [1, 2, 3].map((nonce) => ({ type: "ping", nonce })));
  const big = MAX_FRAME_BYTES + 1;
  throws(
    () => new FrameDecoder().push(new Uint8Array([big >> 8, big & 0xff])),
    MalformedFrameError,
  );
});

Deno.test("decoding random bytes only ever throws MalformedFrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
      try {
        decodeFrame(bytes);
      } catch (err) {
        if (!(err instanceof MalformedFrameError)) throw err;
      }
    }),
    { numRuns: 2_000, seed: 7 },
  );
});

Deno.test("decoding mutated valid frames only ever throws MalformedFrameError", () => {
  const valid = sealFrame(prepareStop(stopFields), new Uint8Array(64).fill(1)).subarray(2);
  fc.assert(
    fc.property(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 }), (index, value) => {
      const mutated = valid.slice();
      mutated[index] = value;
      try {
        decodeFrame(mutated);
      } catch (err) {
        if (!(err instanceof MalformedFrameError)) throw err;
      }
    }),
    { numRuns: 2_000, seed: 11 },
  );
});
