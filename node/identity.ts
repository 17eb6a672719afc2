/**
 * The gateway's Ed25519 identity: created on first start, kept in the data
 * directory, so the peer ID is stable across restarts.
 */
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { join } from "node:path";

export const IDENTITY_FILE = "identity.key";

/** The identity file exists but cannot be used. */
export class IdentityError extends Error {
  override name = "IdentityError";
}

/** Loads the key from `dataDir`, creating it (mode 0600) on first start. */
export async function loadOrCreateIdentity(
  dataDir: string,
): Promise<{ key: PrivateKey; created: boolean }> {
  const path = join(dataDir, IDENTITY_FILE);
  let bytes: Uint8Array | undefined;
  try {
    bytes = Deno.readFileSync(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new IdentityError(`identity ${path}: cannot read (${(err as Error).message})`);
    }
  }
  if (bytes) {
    try {
      const key = privateKeyFromProtobuf(bytes);
      if (key.type !== "Ed25519") throw new Error(`key type ${key.type}`);
      return { key, created: false };
    } catch (err) {
      throw new IdentityError(
        `identity ${path}: expected a protobuf Ed25519 private key (${(err as Error).message}); ` +
          `move the file away to create a new identity`,
      );
    }
  }
  const key = await generateKeyPair("Ed25519");
  // Write then rename so a crash never leaves a half-written identity.
  const tmp = `${path}.tmp`;
  Deno.writeFileSync(tmp, privateKeyToProtobuf(key), { mode: 0o600 });
  Deno.renameSync(tmp, path);
  return { key, created: true };
}
