/**
 * The pre-shared mesh key (libp2p private network, "pnet" v1 format):
 * `/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits. A gateway without
 * the key cannot complete a connection to the mesh at all.
 */
import { ConfigError } from "./config.ts";
import { bytesToHex } from "../protocols/hex.ts";

const KEY_PATTERN = /^\/key\/swarm\/psk\/1\.0\.0\/\r?\n\/base16\/\r?\n[0-9a-fA-F]{64}\s*$/;

/** Reads and checks a mesh key file; throws {@link ConfigError}. */
export function readMeshKey(path: string): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch (err) {
    throw new ConfigError("meshKeyFile", `a readable key file (${(err as Error).message})`, path);
  }
  if (!KEY_PATTERN.test(new TextDecoder().decode(bytes))) {
    throw new ConfigError(
      "meshKeyFile",
      "a libp2p pnet key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits); create one with `twinmesh mesh-key <file>`",
      path,
    );
  }
  return bytes;
}

/** Creates a new random key file (mode 0600); refuses to overwrite. */
export function writeNewMeshKey(path: string): void {
  const hex = bytesToHex(crypto.getRandomValues(new Uint8Array(32)));
  Deno.writeTextFileSync(path, `/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`, {
    mode: 0o600,
    createNew: true,
  });
}
