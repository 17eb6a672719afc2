/**
 * Lowercase hex for the byte strings the protocols name things by: change
 * hashes, e-stop command ids, trace ids, the mesh key.
 *
 * @example
 * ```ts
 * import { bytesToHex, hexToBytes } from "./hex.ts";
 * console.assert(bytesToHex(hexToBytes("00ff")) === "00ff");
 * ```
 */
import { assert } from "./assert.ts";

/** Two lowercase hex digits per byte. */
export function bytesToHex(bytes: Uint8Array): string {
  let hex = "";
  for (const byte of bytes) hex += byte.toString(16).padStart(2, "0");
  return hex;
}

/** The bytes of an even-length lowercase hex string (callers validate untrusted input first). */
export function hexToBytes(hex: string): Uint8Array {
  assert(/^([0-9a-f]{2})*$/.test(hex), "hex is lowercase, two digits per byte");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
