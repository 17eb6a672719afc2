/**
 * Binary frames of `/twinmesh/estop/1.0.0`.
 *
 * Every frame is `u16 length | u8 version | u8 type | body`, big-endian, at
 * most {@link MAX_FRAME_BYTES} after the prefix. STOP, RESET and ACK are
 * signed: the signature covers a domain tag, the type byte and the body up to
 * the signature, exactly as received (so no re-encoding is needed to verify).
 * Nothing here trusts its input: every decode error is a
 * {@link MalformedFrameError} naming the field and what was expected.
 *
 * @example
 * ```ts
 * import { decodeFrame, encodePing } from "./estop_codec.ts";
 * const frame = decodeFrame(encodePing(7).subarray(2));
 * console.assert(frame.type === "ping" && frame.nonce === 7);
 * ```
 */
import { assert } from "./assert.ts";
import { concatBytes } from "./bytes.ts";
import { bytesToHex, hexToBytes } from "./hex.ts";
import { decodeTimestamp, encodeTimestamp, type Timestamp } from "./hlc.ts";
import {
  COMMAND_ID_BYTES,
  MAX_FRAME_BYTES,
  MAX_PEER_ID_BYTES,
  MAX_REASON_BYTES,
  MAX_RESET_STOP_IDS,
  MAX_SIGNATURE_BYTES,
  MAX_TARGET_ID_BYTES,
  WIRE_VERSION,
} from "./estop_constants.ts";

/** A frame that cannot be decoded: the sender is buggy or hostile. */
export class MalformedFrameError extends Error {
  override name = "MalformedFrameError";
}

/** What a stop or reset covers. */
export type EstopTarget =
  | { readonly kind: "asset"; readonly id: string }
  | { readonly kind: "cell"; readonly id: string }
  | { readonly kind: "factory"; readonly id?: string }
  | { readonly kind: "all" };

/** Outcome an owner reports in an ACK. */
export type AckStatus =
  /** Acted (stop latched / reset applied, possibly on zero local assets). */
  | "ok"
  /** Already seen: acting again was not needed. */
  | "duplicate"
  /** Reset refused: the origin does not hold the operator role. */
  | "refused-not-operator"
  /** Refused: older than the replay window. */
  | "refused-expired"
  /** Refused: the origin's HLC is too far ahead of the owner's clock. */
  | "refused-clock";

const ACK_STATUSES: readonly AckStatus[] = [
  "ok",
  "duplicate",
  "refused-not-operator",
  "refused-expired",
  "refused-clock",
];

/** Fields of a stop as the origin signs them. */
export interface StopFields {
  /** 32 lowercase hex characters (16 random bytes). */
  readonly id: string;
  readonly hlc: Timestamp;
  /** Peer ID of the issuing gateway; its key signs the frame. */
  readonly origin: string;
  readonly target: EstopTarget;
  readonly reason: string;
}

/** Fields of a reset as the origin signs them. */
export interface ResetFields extends StopFields {
  /** The stops this reset clears (only those whose HLC precedes the reset's). */
  readonly stopIds: readonly string[];
}

/** Fields of an ACK as the owner signs them. */
export interface AckFields {
  readonly commandId: string;
  readonly commandType: "stop" | "reset";
  readonly status: AckStatus;
  /** Peer ID of the acking owner; its key signs the frame. */
  readonly owner: string;
  /** Owner's HLC after acting. */
  readonly hlc: Timestamp;
  /** Local assets the command covered on the owner. */
  readonly assetCount: number;
}

/** A signed frame's verification material. */
export interface Signed {
  /** The bytes the signature covers (domain tag included). */
  readonly signedBytes: Uint8Array;
  readonly signature: Uint8Array;
  /** The whole frame including its length prefix, for forwarding unchanged. */
  readonly frameBytes: Uint8Array;
}

export interface StopFrame extends StopFields, Signed {
  readonly type: "stop";
}
export interface ResetFrame extends ResetFields, Signed {
  readonly type: "reset";
}
export interface AckFrame extends AckFields, Signed {
  readonly type: "ack";
}
export interface PingFrame {
  readonly type: "ping" | "pong";
  readonly nonce: number;
}
/** A signed frame one peer forwards for another (one hop, never nested). */
export interface RelayFrame {
  readonly type: "relay";
  /** Peer ID the inner frame is for. */
  readonly destination: string;
  readonly inner: StopFrame | ResetFrame | AckFrame;
}
export type EstopFrame = StopFrame | ResetFrame | AckFrame | PingFrame | RelayFrame;

const TYPE_PING = 0x01;
const TYPE_PONG = 0x02;
const TYPE_STOP = 0x10;
const TYPE_RESET = 0x11;
const TYPE_ACK = 0x20;
const TYPE_RELAY = 0x30;

const TARGET_KINDS = ["asset", "cell", "factory", "all"] as const;
/** Domain separation: an e-stop signature can never be replayed as another protocol's. */
const SIGNATURE_DOMAIN = new TextEncoder().encode("twinmesh/estop/1\0");

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

// ---------------------------------------------------------------- writing

/** Growable byte writer with a hard cap: encoding more than a frame is a bug. */
class Writer {
  #bytes = new Uint8Array(512);
  #length = 0;

  u8(value: number): void {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xff, "u8 in range");
    this.#reserve(1);
    this.#bytes[this.#length++] = value;
  }

  u16(value: number): void {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xffff, "u16 in range");
    this.u8(value >> 8);
    this.u8(value & 0xff);
  }

  u32(value: number): void {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff, "u32 in range");
    this.u16(Math.floor(value / 0x10000));
    this.u16(value & 0xffff);
  }

  raw(bytes: Uint8Array): void {
    this.#reserve(bytes.length);
    this.#bytes.set(bytes, this.#length);
    this.#length += bytes.length;
  }

  /** u8 length then UTF-8; throws a RangeError naming `field` when too long. */
  shortString(field: string, text: string, maxBytes: number): void {
    const bytes = textEncoder.encode(text);
    if (bytes.length > maxBytes) {
      throw new RangeError(`e-stop ${field} is ${bytes.length} bytes; max ${maxBytes}`);
    }
    this.u8(bytes.length);
    this.raw(bytes);
  }

  bytes(): Uint8Array {
    return this.#bytes.slice(0, this.#length);
  }

  #reserve(extra: number): void {
    assert(this.#length + extra <= MAX_FRAME_BYTES + 2, "encoded frame fits MAX_FRAME_BYTES");
    if (this.#length + extra <= this.#bytes.length) return;
    const grown = new Uint8Array(Math.max(this.#bytes.length * 2, this.#length + extra));
    grown.set(this.#bytes.subarray(0, this.#length));
    this.#bytes = grown;
  }
}

function writeId(writer: Writer, field: string, id: string): void {
  if (!isCommandId(id)) throw new RangeError(`e-stop ${field} "${id}": expected 32 hex chars`);
  for (const byte of hexToBytes(id)) writer.u8(byte);
}

function writeTarget(writer: Writer, target: EstopTarget): void {
  writer.u8(TARGET_KINDS.indexOf(target.kind));
  const id = target.kind === "all" ? "" : target.id ?? "";
  if ((target.kind === "asset" || target.kind === "cell") && id.length === 0) {
    throw new RangeError(`e-stop target ${target.kind} needs an id`);
  }
  writer.shortString("target id", id, MAX_TARGET_ID_BYTES);
}

/** True for a well-formed command id (32 lowercase hex characters). */
export function isCommandId(id: unknown): id is string {
  return typeof id === "string" && /^[0-9a-f]{32}$/.test(id);
}

/** A fresh random command id. */
export function newCommandId(randomBytes: (n: number) => Uint8Array = defaultRandomBytes): string {
  const bytes = randomBytes(COMMAND_ID_BYTES);
  assert(bytes.length === COMMAND_ID_BYTES, "random source returns the requested length");
  return bytesToHex(bytes);
}

function defaultRandomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

function withDomain(typeByte: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(SIGNATURE_DOMAIN.length + 1 + body.length);
  out.set(SIGNATURE_DOMAIN, 0);
  out[SIGNATURE_DOMAIN.length] = typeByte;
  out.set(body, SIGNATURE_DOMAIN.length + 1);
  return out;
}

/** A signed frame under construction: sign `signedBytes`, then call {@link sealFrame}. */
export interface UnsignedFrame {
  readonly typeByte: number;
  readonly body: Uint8Array;
  /** What the signer signs (domain tag, type byte, body). */
  readonly signedBytes: Uint8Array;
}

/** Encodes the signed part of a STOP. */
export function prepareStop(fields: StopFields): UnsignedFrame {
  const writer = new Writer();
  writeStopFields(writer, fields);
  writer.shortString("reason", fields.reason, MAX_REASON_BYTES);
  const body = writer.bytes();
  return { typeByte: TYPE_STOP, body, signedBytes: withDomain(TYPE_STOP, body) };
}

/** Encodes the signed part of a RESET. */
export function prepareReset(fields: ResetFields): UnsignedFrame {
  if (fields.stopIds.length === 0 || fields.stopIds.length > MAX_RESET_STOP_IDS) {
    throw new RangeError(
      `e-stop reset names ${fields.stopIds.length} stops; expected 1..${MAX_RESET_STOP_IDS}`,
    );
  }
  const writer = new Writer();
  writeStopFields(writer, fields);
  writer.u8(fields.stopIds.length);
  for (const stopId of fields.stopIds) writeId(writer, "reset stop id", stopId);
  writer.shortString("reason", fields.reason, MAX_REASON_BYTES);
  const body = writer.bytes();
  return { typeByte: TYPE_RESET, body, signedBytes: withDomain(TYPE_RESET, body) };
}

/** Encodes the signed part of an ACK. */
export function prepareAck(fields: AckFields): UnsignedFrame {
  assert(
    Number.isInteger(fields.assetCount) && fields.assetCount >= 0 && fields.assetCount <= 0xffff,
    "ack asset count fits u16",
  );
  const writer = new Writer();
  writeId(writer, "ack command id", fields.commandId);
  writer.u8(fields.commandType === "stop" ? TYPE_STOP : TYPE_RESET);
  writer.u8(ACK_STATUSES.indexOf(fields.status));
  writer.shortString("ack owner", fields.owner, MAX_PEER_ID_BYTES);
  writer.raw(encodeTimestamp(fields.hlc));
  writer.u16(fields.assetCount);
  const body = writer.bytes();
  return { typeByte: TYPE_ACK, body, signedBytes: withDomain(TYPE_ACK, body) };
}

function writeStopFields(writer: Writer, fields: StopFields): void {
  writeId(writer, "command id", fields.id);
  writer.raw(encodeTimestamp(fields.hlc));
  writer.shortString("origin", fields.origin, MAX_PEER_ID_BYTES);
  writeTarget(writer, fields.target);
}

/** Appends the signature and the length prefix: the frame as sent on the wire. */
export function sealFrame(unsigned: UnsignedFrame, signature: Uint8Array): Uint8Array {
  if (signature.length === 0 || signature.length > MAX_SIGNATURE_BYTES) {
    throw new RangeError(`e-stop signature is ${signature.length} bytes; expected 1..128`);
  }
  const writer = new Writer();
  writer.u16(2 + unsigned.body.length + 1 + signature.length);
  writer.u8(WIRE_VERSION);
  writer.u8(unsigned.typeByte);
  writer.raw(unsigned.body);
  writer.u8(signature.length);
  writer.raw(signature);
  return writer.bytes();
}

/** A PING (heartbeat) frame with its length prefix. */
export function encodePing(nonce: number): Uint8Array {
  return encodeHeartbeat(TYPE_PING, nonce);
}

/** The PONG answering a PING. */
export function encodePong(nonce: number): Uint8Array {
  return encodeHeartbeat(TYPE_PONG, nonce);
}

function encodeHeartbeat(typeByte: number, nonce: number): Uint8Array {
  const writer = new Writer();
  writer.u16(6);
  writer.u8(WIRE_VERSION);
  writer.u8(typeByte);
  writer.u32(nonce >>> 0);
  return writer.bytes();
}

/** Wraps a sealed STOP/RESET/ACK frame for one-hop forwarding to `destination`. */
export function encodeRelay(destination: string, innerFrame: Uint8Array): Uint8Array {
  const writer = new Writer();
  const destinationBytes = textEncoder.encode(destination);
  assert(destinationBytes.length <= MAX_PEER_ID_BYTES, "relay destination fits");
  writer.u16(2 + 1 + destinationBytes.length + innerFrame.length);
  writer.u8(WIRE_VERSION);
  writer.u8(TYPE_RELAY);
  writer.u8(destinationBytes.length);
  writer.raw(destinationBytes);
  writer.raw(innerFrame);
  return writer.bytes();
}

// ---------------------------------------------------------------- reading

class Reader {
  offset = 0;
  constructor(readonly bytes: Uint8Array) {}

  get remaining(): number {
    return this.bytes.length - this.offset;
  }

  need(field: string, n: number): void {
    if (this.remaining < n) {
      throw new MalformedFrameError(
        `e-stop frame truncated in ${field}: need ${n} bytes, ${this.remaining} left`,
      );
    }
  }

  u8(field: string): number {
    this.need(field, 1);
    return this.bytes[this.offset++]!;
  }

  u16(field: string): number {
    return this.u8(field) * 256 + this.u8(field);
  }

  u32(field: string): number {
    return this.u16(field) * 0x10000 + this.u16(field);
  }

  raw(field: string, n: number): Uint8Array {
    this.need(field, n);
    const out = this.bytes.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  shortString(field: string, maxBytes: number, minBytes = 0): string {
    const length = this.u8(field);
    if (length < minBytes || length > maxBytes) {
      throw new MalformedFrameError(
        `e-stop ${field} is ${length} bytes; expected ${minBytes}..${maxBytes}`,
      );
    }
    try {
      return textDecoder.decode(this.raw(field, length));
    } catch (err) {
      if (err instanceof MalformedFrameError) throw err;
      throw new MalformedFrameError(`e-stop ${field} is not UTF-8`);
    }
  }

  id(field: string): string {
    return bytesToHex(this.raw(field, COMMAND_ID_BYTES));
  }

  timestamp(field: string): Timestamp {
    try {
      const { timestamp, size } = decodeTimestamp(this.bytes, this.offset);
      this.offset += size;
      return timestamp;
    } catch (err) {
      throw new MalformedFrameError(`e-stop ${field}: ${(err as Error).message}`);
    }
  }

  end(field: string): void {
    if (this.remaining !== 0) {
      throw new MalformedFrameError(`e-stop ${field} has ${this.remaining} trailing bytes`);
    }
  }
}

function readTarget(reader: Reader): EstopTarget {
  const kindIndex = reader.u8("target kind");
  const kind = TARGET_KINDS[kindIndex];
  if (kind === undefined) {
    throw new MalformedFrameError(`e-stop target kind ${kindIndex}: expected 0..3`);
  }
  const id = reader.shortString("target id", MAX_TARGET_ID_BYTES);
  if (kind === "all") {
    if (id !== "") throw new MalformedFrameError("e-stop target all carries no id");
    return { kind };
  }
  if (kind === "factory") return id === "" ? { kind } : { kind, id };
  if (id === "") throw new MalformedFrameError(`e-stop target ${kind} without id`);
  return { kind, id };
}

function readSignature(reader: Reader): Uint8Array {
  const length = reader.u8("signature length");
  if (length === 0 || length > MAX_SIGNATURE_BYTES) {
    throw new MalformedFrameError(`e-stop signature is ${length} bytes; expected 1..128`);
  }
  return reader.raw("signature", length).slice();
}

/**
 * Decodes one frame given the bytes after its length prefix. Throws
 * {@link MalformedFrameError} on anything unexpected, including trailing bytes.
 */
export function decodeFrame(payload: Uint8Array, allowRelay = true): EstopFrame {
  if (payload.length > MAX_FRAME_BYTES) {
    throw new MalformedFrameError(
      `e-stop frame is ${payload.length} bytes; max ${MAX_FRAME_BYTES}`,
    );
  }
  const reader = new Reader(payload);
  const version = reader.u8("version");
  if (version !== WIRE_VERSION) {
    throw new MalformedFrameError(`e-stop wire version ${version}: expected ${WIRE_VERSION}`);
  }
  const typeByte = reader.u8("type");
  switch (typeByte) {
    case TYPE_PING:
    case TYPE_PONG: {
      const nonce = reader.u32("nonce");
      reader.end("heartbeat");
      return { type: typeByte === TYPE_PING ? "ping" : "pong", nonce };
    }
    case TYPE_STOP:
    case TYPE_RESET:
    case TYPE_ACK:
      return decodeSigned(payload, reader, typeByte);
    case TYPE_RELAY: {
      if (!allowRelay) throw new MalformedFrameError("e-stop relay frames do not nest");
      const destination = reader.shortString("relay destination", MAX_PEER_ID_BYTES, 1);
      const innerPrefixed = reader.raw("relay inner frame", reader.remaining);
      const inner = decodeFramePrefixed(innerPrefixed, false);
      if (inner.type !== "stop" && inner.type !== "reset" && inner.type !== "ack") {
        throw new MalformedFrameError(
          `e-stop relay carries ${inner.type}; expected a signed frame`,
        );
      }
      return { type: "relay", destination, inner };
    }
    default:
      throw new MalformedFrameError(`e-stop frame type 0x${typeByte.toString(16)} is unknown`);
  }
}

/** Decodes one whole frame including its 2-byte length prefix. */
export function decodeFramePrefixed(bytes: Uint8Array, allowRelay = true): EstopFrame {
  if (bytes.length < 2) throw new MalformedFrameError("e-stop frame shorter than its prefix");
  const length = bytes[0]! * 256 + bytes[1]!;
  if (length !== bytes.length - 2) {
    throw new MalformedFrameError(
      `e-stop frame prefix says ${length} bytes; ${bytes.length - 2} present`,
    );
  }
  return decodeFrame(bytes.subarray(2), allowRelay);
}

function decodeSigned(payload: Uint8Array, reader: Reader, typeByte: number): EstopFrame {
  const bodyStart = reader.offset;
  const frameBytes = prefixed(payload);
  if (typeByte === TYPE_ACK) {
    const commandId = reader.id("ack command id");
    const commandTypeByte = reader.u8("ack command type");
    if (commandTypeByte !== TYPE_STOP && commandTypeByte !== TYPE_RESET) {
      throw new MalformedFrameError(
        `e-stop ack command type ${commandTypeByte}: expected stop/reset`,
      );
    }
    const statusIndex = reader.u8("ack status");
    const status = ACK_STATUSES[statusIndex];
    if (status === undefined) {
      throw new MalformedFrameError(`e-stop ack status ${statusIndex} is unknown`);
    }
    const owner = reader.shortString("ack owner", MAX_PEER_ID_BYTES, 1);
    const hlc = reader.timestamp("ack hlc");
    const assetCount = reader.u16("ack asset count");
    const signedBytes = withDomain(typeByte, payload.subarray(bodyStart, reader.offset));
    const signature = readSignature(reader);
    reader.end("ack");
    return {
      type: "ack",
      commandId,
      commandType: commandTypeByte === TYPE_STOP ? "stop" : "reset",
      status,
      owner,
      hlc,
      assetCount,
      signedBytes,
      signature,
      frameBytes,
    };
  }
  const id = reader.id("command id");
  const hlc = reader.timestamp("hlc");
  const origin = reader.shortString("origin", MAX_PEER_ID_BYTES, 1);
  if (hlc.node !== origin) {
    throw new MalformedFrameError(`e-stop hlc node ${hlc.node} is not the origin ${origin}`);
  }
  const target = readTarget(reader);
  let stopIds: string[] = [];
  if (typeByte === TYPE_RESET) {
    const count = reader.u8("reset stop count");
    if (count === 0 || count > MAX_RESET_STOP_IDS) {
      throw new MalformedFrameError(
        `e-stop reset names ${count} stops; expected 1..${MAX_RESET_STOP_IDS}`,
      );
    }
    stopIds = [];
    for (let i = 0; i < count; i++) stopIds.push(reader.id("reset stop id"));
  }
  const reason = reader.shortString("reason", MAX_REASON_BYTES);
  const signedBytes = withDomain(typeByte, payload.subarray(bodyStart, reader.offset));
  const signature = readSignature(reader);
  reader.end(typeByte === TYPE_STOP ? "stop" : "reset");
  const common = { id, hlc, origin, target, reason, signedBytes, signature, frameBytes };
  return typeByte === TYPE_STOP
    ? { type: "stop", ...common }
    : { type: "reset", ...common, stopIds };
}

function prefixed(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(payload.length + 2);
  out[0] = payload.length >> 8;
  out[1] = payload.length & 0xff;
  out.set(payload, 2);
  return out;
}

/**
 * Splits a byte stream into frames. Bounded: it never holds more than one
 * partial frame of at most {@link MAX_FRAME_BYTES}; a larger declared length
 * throws {@link MalformedFrameError} before anything is buffered.
 */
export class FrameDecoder {
  #buffer = new Uint8Array(0);

  /** Feeds received bytes; returns the complete frame payloads (after the prefix). */
  push(chunk: Uint8Array): Uint8Array[] {
    const data = this.#buffer.length === 0 ? chunk : concatBytes([this.#buffer, chunk]);
    const frames: Uint8Array[] = [];
    let offset = 0;
    // Bounded: each iteration consumes at least 3 bytes of `data`.
    while (data.length - offset >= 2) {
      const length = data[offset]! * 256 + data[offset + 1]!;
      if (length < 2 || length > MAX_FRAME_BYTES) {
        throw new MalformedFrameError(
          `e-stop frame length ${length}: expected 2..${MAX_FRAME_BYTES}`,
        );
      }
      if (data.length - offset - 2 < length) break;
      frames.push(data.slice(offset + 2, offset + 2 + length));
      offset += 2 + length;
    }
    this.#buffer = data.slice(offset);
    assert(this.#buffer.length < MAX_FRAME_BYTES + 2, "frame decoder holds at most one frame");
    return frames;
  }
}
