/**
 * Ed25519 signing with the key imported once (node/ed25519_keys.ts): the same
 * signatures as `@libp2p/crypto`'s own code, which verify as before.
 */
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { withImportedSigningKey } from "../node/ed25519_keys.ts";

const encoder = new TextEncoder();

Deno.test("a key imported once signs exactly as the library does", async () => {
  const key = await generateKeyPair("Ed25519");
  // A second copy of the same key keeps the library's own sign().
  const plain = privateKeyFromProtobuf(privateKeyToProtobuf(key));
  const imported = withImportedSigningKey(key);
  strictEqual(imported, key);
  for (const text of ["", "a gossip message", "x".repeat(5000)]) {
    const message = encoder.encode(text);
    const signature: Uint8Array = new Uint8Array(await imported.sign(message));
    deepStrictEqual(signature, new Uint8Array(await plain.sign(message)));
    ok(await key.publicKey.verify(message, signature));
  }
  // A message in pieces (a Uint8ArrayList) signs as its bytes joined.
  const pieces = { subarray: () => encoder.encode("stop arm-3") } as unknown as Parameters<
    PrivateKey["sign"]
  >[0];
  deepStrictEqual(
    new Uint8Array(await imported.sign(pieces)),
    new Uint8Array(await plain.sign(encoder.encode("stop arm-3"))),
  );
});
