/**
 * Reads the header of an encoded Automerge change (binary format v1: a change
 * chunk's dependencies, actor, sequence number, start op, time and message)
 * without decoding its ops. A twin's history lists every change of its
 * document; decoding each one whole costs ~45 µs, which for the 2,000 changes
 * of an epoch would hold the event loop ~90 ms per `GET /twins/:id/history`.
 * The header and the change's hash cost a few µs.
 *
 * Chunk layout: magic `85 6f 4a 83`, a 4-byte checksum, the chunk type (1:
 * change), the data's length (ULEB128), the data. The hash is SHA-256 over
 * the type, the length and the data.
 *
 * @example
 * ```ts
 * import * as Automerge from "@automerge/automerge";
 * import { readChangeHeader } from "./change_header.ts";
 * const doc = Automerge.change(Automerge.init<{ x?: number }>(), "hello", (d) => { d.x = 1; });
 * const [change] = Automerge.getAllChanges(doc);
 * console.assert(readChangeHeader(change)?.message === "hello");
 * ```
 */
import { createHash } from "node:crypto";
import { bytesToHex } from "./hex.ts";

/** What the header of a change says. */
export interface ChangeHeader {
  /** Hex SHA-256 of the change chunk, as Automerge names the change. */
  readonly hash: string;
  readonly deps: readonly string[];
  /** Hex actor id. */
  readonly actor: string;
  readonly seq: number;
  readonly startOp: number;
  readonly time: number;
  /** The commit message; null when the change has none. */
  readonly message: string | null;
}

const MAGIC = [0x85, 0x6f, 0x4a, 0x83];
const CHANGE_CHUNK = 1;
const HASH_BYTES = 32;
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The header of an uncompressed change chunk; undefined for anything else
 * (a compressed chunk, a document, truncated or malformed bytes), which the
 * caller decodes the slow way or skips.
 */
export function readChangeHeader(bytes: Uint8Array): ChangeHeader | undefined {
  try {
    return readHeader(bytes);
  } catch (error) {
    if (error instanceof RangeError) return undefined;
    throw error;
  }
}

function readHeader(bytes: Uint8Array): ChangeHeader | undefined {
  for (let i = 0; i < MAGIC.length; i++) if (bytes[i] !== MAGIC[i]) return undefined;
  const reader = new Reader(bytes, 8);
  if (reader.byte() !== CHANGE_CHUNK) return undefined;
  const length = reader.uleb();
  if (reader.offset + length !== bytes.length) return undefined;
  const deps: string[] = [];
  for (let n = reader.uleb(); n > 0; n--) deps.push(bytesToHex(reader.take(HASH_BYTES)));
  const actor = bytesToHex(reader.take(reader.uleb()));
  const seq = reader.uleb();
  const startOp = reader.uleb();
  const time = reader.sleb();
  const messageLength = reader.uleb();
  const message = messageLength === 0 ? null : utf8.decode(reader.take(messageLength));
  const hash = createHash("sha256").update(bytes.subarray(8)).digest("hex");
  return { hash, deps, actor, seq, startOp, time, message };
}

/** A cursor over bytes; every read past the end throws RangeError. */
class Reader {
  constructor(readonly bytes: Uint8Array, public offset: number) {}

  byte(): number {
    if (this.offset >= this.bytes.length) throw new RangeError("truncated change");
    return this.bytes[this.offset++]!;
  }

  take(n: number): Uint8Array {
    if (this.offset + n > this.bytes.length) throw new RangeError("truncated change");
    const out = this.bytes.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  /** An unsigned LEB128 integer, at most 2^53 - 1. */
  uleb(): number {
    let value = 0;
    for (let shift = 1;; shift *= 128) {
      const b = this.byte();
      value += (b & 0x7f) * shift;
      if (!Number.isSafeInteger(value)) throw new RangeError("integer too large");
      if ((b & 0x80) === 0) return value;
    }
  }

  /** A signed LEB128 integer, within ±2^53. */
  sleb(): number {
    let value = 0;
    let shift = 1;
    for (;;) {
      const b = this.byte();
      value += (b & 0x7f) * shift;
      shift *= 128;
      if (!Number.isSafeInteger(value)) throw new RangeError("integer too large");
      if ((b & 0x80) === 0) return b & 0x40 ? value - shift : value;
    }
  }
}
