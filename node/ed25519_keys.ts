/**
 * Ed25519 signing with the private key imported once.
 *
 * `@libp2p/crypto` 5 signs on Node's crypto but imports the key from JWK for
 * every signature: ~75-90 µs per signature on this project's test host,
 * ~23-30 µs with the key imported once. Every gossip message and every e-stop
 * frame is signed. The signatures are the same bytes (Ed25519 is
 * deterministic). Verification gains less from the same treatment (~10 µs of
 * ~65), not enough to patch the library's public-key class for it.
 */
import type { PrivateKey } from "@libp2p/interface";
import { Buffer } from "node:buffer";
import { createPrivateKey, sign } from "node:crypto";

const SEED_BYTES = 32;

const base64url = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64url");

/**
 * Makes `key.sign` use a key imported once (for an Ed25519 key; any other
 * is returned unchanged). The key object itself is changed, so every user of
 * it (libp2p's noise handshake, gossipsub, the e-stop protocol) gains.
 */
export function withImportedSigningKey(key: PrivateKey): PrivateKey {
  if (key.type !== "Ed25519") return key;
  const imported = createPrivateKey({
    format: "jwk",
    key: {
      kty: "OKP",
      crv: "Ed25519",
      d: base64url(key.raw.subarray(0, SEED_BYTES)),
      x: base64url(key.publicKey.raw),
    },
  });
  const signWith: PrivateKey["sign"] = (message, options) => {
    options?.signal?.throwIfAborted();
    return sign(null, message instanceof Uint8Array ? message : message.subarray(), imported);
  };
  Object.defineProperty(key, "sign", { value: signWith, configurable: true });
  return key;
}
