/**
 * Wire formats of the twin protocols: gossip batches (one pubsub message per
 * factory and publish interval) and the frames of a `/twinmesh/twin-sync/6.0.0`
 * session. Hand-rolled binary (tag byte, LEB128 lengths, UTF-8 strings) so
 * that every length is checked against a named limit before anything is
 * allocated. Decoders throw {@link TwinCodecError}; callers drop and count.
 *
 * @example
 * ```ts
 * import { decodeGossip, encodeGossip } from "./twin_codec.ts";
 * const bytes = encodeGossip({ factory: "f1", docs: [{ docId: "arm-1", changes: [new Uint8Array([1])] }] });
 * console.assert(decodeGossip(bytes).docs[0]?.docId === "arm-1");
 * ```
 */
import { deflateRawSync, inflateRawSync } from "node:zlib";
import { assert } from "./assert.ts";
import { bytesToHex, hexToBytes } from "./hex.ts";

/**
 * Gossip message format version (also in the topic name). 3: writer slots
 * are maps (see twin_doc.ts), which a version-2 gateway refuses as gossip
 * and reads as invalid values; 2: documents are named by wire id
 * (`twinDocId`, epochs) and removes write tombstones, so a version-1 gateway
 * could neither read nor safely write the new documents.
 */
export const TWIN_GOSSIP_VERSION = 3;
/**
 * Sync session format version (also in the protocol id). 6: a sync
 * message travels packed (a format byte; deflated when large, see
 * {@link packSyncMessage}); 5: as gossip 3;
 * 4: a hello lists each twin's heads in full (was a digest); 3: as gossip 2;
 * 2 added a flags byte (scoped sessions) and the heads digest per twin.
 */
export const TWIN_SYNC_VERSION = 6;
/** Heads a hello lists per twin; a twin with more is announced without them (always synced). */
export const MAX_HELLO_HEADS = 4;
/** Bytes of an Automerge change hash (a head). */
export const HEAD_BYTES = 32;
/** The libp2p protocol id of a sync session. */
export const TWIN_SYNC_PROTOCOL = `/twinmesh/twin-sync/${TWIN_SYNC_VERSION}.0.0`;

/**
 * Largest gossip message. Gossip carries one publish interval of changes
 * (tens of field writes, a few KiB); anything bigger goes by sync. Well below
 * gossipsub's own inbound limit, so an honest batch is never cut there.
 */
export const MAX_GOSSIP_MESSAGE_BYTES = 256 * 1024;
/** Twins in one gossip message: 20 arms per gateway, with room for large cells. */
export const MAX_GOSSIP_DOCS = 256;
/** Changes per twin in one gossip message: one per publish interval, plus re-sends. */
export const MAX_GOSSIP_CHANGES_PER_DOC = 64;
/**
 * Largest sync frame. It bounds what one read may allocate for an untrusted
 * peer; bigger Automerge sync messages are sent as several chunk frames.
 */
export const MAX_SYNC_FRAME_BYTES = 1024 * 1024;
/** Payload per chunk frame: a frame minus room for the header (tag, id, counters). */
export const SYNC_CHUNK_BYTES = MAX_SYNC_FRAME_BYTES - 1024;
/**
 * Largest reassembled Automerge sync message (one twin, one round). A twin
 * committing one change per second for 48 hours is ~173k changes of
 * ~300-600 B; this covers that backlog with margin and bounds memory per session.
 */
export const MAX_SYNC_MESSAGE_BYTES = 128 * 1024 * 1024;
/**
 * Automerge sync messages at least this long travel deflated. Automerge
 * 2.2.9 sends every change whole: `bench reconcile`'s 200,000 writes took
 * 13.8 MB on the wire, against 3.0 MB with 3.5's compressed form; deflated
 * at level 3 a 489 KB message is 111 KB, ~5 ms to pack, ~2 ms to unpack.
 */
export const DEFLATE_SYNC_MIN_BYTES = 1024;
const DEFLATE_LEVEL = 3;
const SYNC_RAW = 0;
const SYNC_DEFLATED = 1;
/** Chunks per sync message, derived from the two limits above. */
export const MAX_SYNC_CHUNKS = Math.ceil(MAX_SYNC_MESSAGE_BYTES / SYNC_CHUNK_BYTES);
/** Twins one peer may announce in a hello: the replica's own limit. */
export const MAX_HELLO_DOCS = 10_000;
/** Factories one peer may replicate: a region's sites, with margin. */
export const MAX_HELLO_FACTORIES = 64;
/** Ids (asset, factory) are short printable tokens; they become keys and topics. */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

/** A message that does not decode or breaks a limit. */
export class TwinCodecError extends Error {
  override name = "TwinCodecError";
  /** True when a limit on size or count was exceeded (vs. plain malformed). */
  readonly oversized: boolean;
  constructor(message: string, oversized = false) {
    super(message);
    this.oversized = oversized;
  }
}

/** True for valid asset and factory ids. */
export function isTwinId(id: string): boolean {
  return ID_PATTERN.test(id);
}

/**
 * A twin's document id on the wire (gossip, sync): the asset id for its first
 * epoch, `<asset id>~<epoch>` for later ones (see TwinReplica: an owner
 * starts a new, short document when the history grows long). `~` is not a
 * character of ids, so the split is unambiguous.
 */
export function twinDocId(assetId: string, epoch: number): string {
  return epoch === 0 ? assetId : `${assetId}~${epoch}`;
}

/** Epochs are positive safe integers without leading zeros. */
const EPOCH_PATTERN = /^[1-9][0-9]{0,14}$/;

/** Inverse of {@link twinDocId}; undefined for anything else. */
export function parseTwinDocId(docId: string): { assetId: string; epoch: number } | undefined {
  const tilde = docId.indexOf("~");
  if (tilde < 0) return isTwinId(docId) ? { assetId: docId, epoch: 0 } : undefined;
  const assetId = docId.slice(0, tilde);
  const epoch = docId.slice(tilde + 1);
  if (!isTwinId(assetId) || !EPOCH_PATTERN.test(epoch)) return undefined;
  return { assetId, epoch: Number(epoch) };
}

/** Changes of one twin in a gossip batch. */
export interface GossipDoc {
  readonly docId: string;
  readonly changes: readonly Uint8Array[];
}

/** One gossip message: the changes of one factory's twins in one publish interval. */
export interface GossipBatch {
  readonly factory: string;
  readonly docs: readonly GossipDoc[];
}

/** A twin announced in a hello. */
export interface HelloDoc {
  readonly docId: string;
  readonly factory: string;
  /**
   * The twin's heads (hex change hashes), at most {@link MAX_HELLO_HEADS};
   * absent when unknown or too many (the twin is then always synced).
   */
  readonly heads?: readonly string[];
}

/** Frames of a sync session. */
export type SyncFrame =
  | {
    readonly type: "hello";
    readonly factories: readonly string[];
    readonly docs: readonly HelloDoc[];
    /** Only the twins listed take part (a session fetching a known gap). */
    readonly scoped?: boolean;
  }
  | {
    readonly type: "sync";
    readonly docId: string;
    /** 0-based index of this chunk of the Automerge sync message. */
    readonly part: number;
    readonly parts: number;
    readonly bytes: Uint8Array;
  }
  | { readonly type: "end-round" };

const TAG_GOSSIP = 0x47; // 'G'
const TAG_HELLO = 0x01;
const TAG_SYNC = 0x02;
const TAG_END_ROUND = 0x03;
/** Hello flag (version 2): only the listed twins take part. */
const HELLO_SCOPED = 0x01;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Encodes a gossip batch; the caller keeps it under {@link MAX_GOSSIP_MESSAGE_BYTES}. */
export function encodeGossip(batch: GossipBatch): Uint8Array {
  const out = new ByteWriter();
  out.byte(TAG_GOSSIP).byte(TWIN_GOSSIP_VERSION).string(batch.factory).uint(batch.docs.length);
  for (const doc of batch.docs) {
    out.string(doc.docId).uint(doc.changes.length);
    for (const change of doc.changes) out.bytes(change);
  }
  return out.finish();
}

/** Decodes and validates a gossip message; throws {@link TwinCodecError}. */
export function decodeGossip(bytes: Uint8Array): GossipBatch {
  if (bytes.length > MAX_GOSSIP_MESSAGE_BYTES) {
    throw new TwinCodecError(
      `gossip message is ${bytes.length} B; max ${MAX_GOSSIP_MESSAGE_BYTES}`,
      true,
    );
  }
  const input = new ByteReader(bytes);
  if (input.byte() !== TAG_GOSSIP) throw new TwinCodecError("not a twin gossip message");
  const version = input.byte();
  if (version !== TWIN_GOSSIP_VERSION) {
    throw new TwinCodecError(`gossip version ${version}; expected ${TWIN_GOSSIP_VERSION}`);
  }
  const factory = input.id("factory");
  const docCount = input.count("twins", MAX_GOSSIP_DOCS);
  const docs: GossipDoc[] = [];
  for (let i = 0; i < docCount; i++) {
    const docId = input.docId("twin document id");
    const changeCount = input.count("changes", MAX_GOSSIP_CHANGES_PER_DOC);
    const changes: Uint8Array[] = [];
    for (let c = 0; c < changeCount; c++) changes.push(input.bytes(MAX_GOSSIP_MESSAGE_BYTES));
    docs.push({ docId, changes });
  }
  input.end();
  return { factory, docs };
}

/** Encodes one sync frame. */
export function encodeSyncFrame(frame: SyncFrame): Uint8Array {
  const out = new ByteWriter();
  switch (frame.type) {
    case "hello":
      out.byte(TAG_HELLO).byte(TWIN_SYNC_VERSION).byte(frame.scoped ? HELLO_SCOPED : 0);
      out.uint(frame.factories.length);
      for (const factory of frame.factories) out.string(factory);
      out.uint(frame.docs.length);
      for (const doc of frame.docs) {
        out.string(doc.docId).string(doc.factory);
        const heads = doc.heads ?? [];
        assert(heads.length <= MAX_HELLO_HEADS, "a hello lists a few heads per twin");
        out.uint(heads.length);
        for (const head of heads) {
          const hash = hexToBytes(head);
          assert(hash.length === HEAD_BYTES, "a head is a 32-byte change hash");
          out.bytes(hash);
        }
      }
      break;
    case "sync":
      out.byte(TAG_SYNC).string(frame.docId).uint(frame.part).uint(frame.parts).bytes(
        frame.bytes,
      );
      break;
    case "end-round":
      out.byte(TAG_END_ROUND);
      break;
  }
  return out.finish();
}

/** Decodes and validates one sync frame; throws {@link TwinCodecError}. */
export function decodeSyncFrame(bytes: Uint8Array): SyncFrame {
  if (bytes.length > MAX_SYNC_FRAME_BYTES) {
    throw new TwinCodecError(`sync frame is ${bytes.length} B; max ${MAX_SYNC_FRAME_BYTES}`, true);
  }
  const input = new ByteReader(bytes);
  const tag = input.byte();
  let frame: SyncFrame;
  if (tag === TAG_HELLO) {
    const version = input.byte();
    if (version !== TWIN_SYNC_VERSION) {
      throw new TwinCodecError(`sync version ${version}; expected ${TWIN_SYNC_VERSION}`);
    }
    const flags = input.byte();
    if ((flags & ~HELLO_SCOPED) !== 0) throw new TwinCodecError(`unknown hello flags ${flags}`);
    const factories: string[] = [];
    const factoryCount = input.count("factories", MAX_HELLO_FACTORIES);
    for (let i = 0; i < factoryCount; i++) factories.push(input.id("factory"));
    const docs: HelloDoc[] = [];
    const docCount = input.count("twins", MAX_HELLO_DOCS);
    for (let i = 0; i < docCount; i++) {
      const docId = input.docId("twin document id");
      const factory = input.id("factory");
      const heads = input.heads();
      docs.push(heads.length > 0 ? { docId, factory, heads } : { docId, factory });
    }
    frame = flags & HELLO_SCOPED
      ? { type: "hello", factories, docs, scoped: true }
      : { type: "hello", factories, docs };
  } else if (tag === TAG_SYNC) {
    const docId = input.docId("twin document id");
    const part = input.uint();
    const parts = input.uint();
    if (parts < 1 || parts > MAX_SYNC_CHUNKS || part >= parts) {
      throw new TwinCodecError(
        `sync chunk ${part}/${parts}: expected part < parts <= ${MAX_SYNC_CHUNKS}`,
        parts > MAX_SYNC_CHUNKS,
      );
    }
    frame = { type: "sync", docId, part, parts, bytes: input.bytes(MAX_SYNC_FRAME_BYTES) };
  } else if (tag === TAG_END_ROUND) {
    frame = { type: "end-round" };
  } else {
    throw new TwinCodecError(`unknown sync frame tag ${tag}`);
  }
  input.end();
  return frame;
}

/**
 * Packs an Automerge sync message ({@link packSyncMessage}) and splits it
 * into sync frames of at most {@link SYNC_CHUNK_BYTES}; the receiver joins
 * the frames and unpacks them ({@link unpackSyncMessage}).
 */
export function chunkSyncMessage(docId: string, message: Uint8Array): SyncFrame[] {
  const packed = packSyncMessage(message);
  const parts = Math.max(1, Math.ceil(packed.length / SYNC_CHUNK_BYTES));
  const frames: SyncFrame[] = [];
  for (let part = 0; part < parts; part++) {
    const bytes = packed.subarray(part * SYNC_CHUNK_BYTES, (part + 1) * SYNC_CHUNK_BYTES);
    frames.push({ type: "sync", docId, part, parts, bytes });
  }
  return frames;
}

/**
 * A sync message as it travels: a format byte, then the message itself or,
 * from {@link DEFLATE_SYNC_MIN_BYTES} on and when smaller, its raw deflate.
 */
export function packSyncMessage(message: Uint8Array): Uint8Array {
  if (message.length >= DEFLATE_SYNC_MIN_BYTES) {
    const deflated = deflateRawSync(message, { level: DEFLATE_LEVEL });
    if (deflated.length < message.length) return withFormat(SYNC_DEFLATED, deflated);
  }
  return withFormat(SYNC_RAW, message);
}

/**
 * The Automerge sync message a peer packed; throws {@link TwinCodecError}
 * for an unknown format, a deflate stream that does not inflate, or one that
 * inflates past {@link MAX_SYNC_MESSAGE_BYTES} (inflating stops there).
 */
export function unpackSyncMessage(packed: Uint8Array): Uint8Array {
  const format = packed[0];
  const body = packed.subarray(1);
  if (format === SYNC_RAW) return body;
  if (format !== SYNC_DEFLATED) throw new TwinCodecError(`unknown sync message format ${format}`);
  try {
    const inflated = inflateRawSync(body, { maxOutputLength: MAX_SYNC_MESSAGE_BYTES });
    return new Uint8Array(inflated.buffer, inflated.byteOffset, inflated.length);
  } catch (error) {
    const oversized = error instanceof RangeError;
    throw new TwinCodecError(
      oversized
        ? `sync message inflates past ${MAX_SYNC_MESSAGE_BYTES} B`
        : `sync message does not inflate: ${error}`,
      oversized,
    );
  }
}

function withFormat(format: number, bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length + 1);
  out[0] = format;
  out.set(bytes, 1);
  return out;
}

/** Appends bytes; grows by doubling. */
class ByteWriter {
  #buffer = new Uint8Array(256);
  #length = 0;

  #reserve(extra: number): void {
    if (this.#length + extra <= this.#buffer.length) return;
    let size = this.#buffer.length * 2;
    while (size < this.#length + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.#buffer.subarray(0, this.#length));
    this.#buffer = next;
  }

  byte(value: number): this {
    this.#reserve(1);
    this.#buffer[this.#length++] = value;
    return this;
  }

  /** Unsigned LEB128, up to 2^53. */
  uint(value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new TwinCodecError(`cannot encode ${value} as an unsigned integer`);
    }
    let rest = value;
    while (rest >= 0x80) {
      this.byte((rest % 0x80) | 0x80);
      rest = Math.floor(rest / 0x80);
    }
    return this.byte(rest);
  }

  bytes(value: Uint8Array): this {
    this.uint(value.length);
    this.#reserve(value.length);
    this.#buffer.set(value, this.#length);
    this.#length += value.length;
    return this;
  }

  string(value: string): this {
    return this.bytes(encoder.encode(value));
  }

  finish(): Uint8Array {
    return this.#buffer.slice(0, this.#length);
  }
}

/** Reads what {@link ByteWriter} wrote, checking every length against the remaining input. */
class ByteReader {
  #bytes: Uint8Array;
  #offset = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  byte(): number {
    if (this.#offset >= this.#bytes.length) throw new TwinCodecError("truncated message");
    return this.#bytes[this.#offset++]!;
  }

  uint(): number {
    let value = 0;
    let scale = 1;
    // 8 groups of 7 bits cover 2^53; more is garbage.
    for (let i = 0; i < 8; i++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return value;
      scale *= 0x80;
    }
    throw new TwinCodecError("varint too long");
  }

  count(what: string, max: number): number {
    const n = this.uint();
    if (n > max) throw new TwinCodecError(`${n} ${what}; max ${max}`, true);
    return n;
  }

  bytes(max: number): Uint8Array {
    const length = this.uint();
    if (length > max) throw new TwinCodecError(`field of ${length} B; max ${max}`, true);
    if (this.#offset + length > this.#bytes.length) throw new TwinCodecError("truncated field");
    const out = this.#bytes.subarray(this.#offset, this.#offset + length);
    this.#offset += length;
    return out;
  }

  /** A twin's heads in a hello: a count, then that many change hashes. */
  heads(): string[] {
    const heads: string[] = [];
    const count = this.count("heads", MAX_HELLO_HEADS);
    for (let i = 0; i < count; i++) {
      const hash = this.bytes(HEAD_BYTES);
      if (hash.length !== HEAD_BYTES) throw new TwinCodecError(`a head of ${hash.length} B`);
      heads.push(bytesToHex(hash));
    }
    return heads;
  }

  /** A twin document id ({@link twinDocId}). */
  docId(what: string): string {
    const text = this.#text(what, 64 + 16);
    if (!parseTwinDocId(text)) {
      throw new TwinCodecError(`${what} "${text.slice(0, 80)}" is not a valid twin document id`);
    }
    return text;
  }

  id(what: string): string {
    const text = this.#text(what, 64);
    if (!isTwinId(text)) {
      throw new TwinCodecError(`${what} "${text.slice(0, 64)}" is not a valid id`);
    }
    return text;
  }

  #text(what: string, maxChars: number): string {
    let text: string;
    try {
      text = decoder.decode(this.bytes(maxChars * 4));
    } catch (error) {
      if (error instanceof TwinCodecError) throw error;
      throw new TwinCodecError(`${what} is not UTF-8`);
    }
    return text;
  }

  end(): void {
    if (this.#offset !== this.#bytes.length) {
      throw new TwinCodecError(`${this.#bytes.length - this.#offset} trailing bytes`);
    }
  }
}
