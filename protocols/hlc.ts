/**
 * Hybrid Logical Clock (Kulkarni et al., 2014).
 *
 * A timestamp is (wallMs, logical, node): `wallMs` follows the largest
 * physical time seen, `logical` breaks ties within one millisecond, `node`
 * makes the order total. Safety-relevant ordering in twinmesh (twin writes,
 * e-stop latches and resets) compares these, never raw wall clocks.
 *
 * Invariants asserted here: the clock never issues a timestamp that is not
 * strictly greater than the previous one, even when the wall clock jumps
 * backwards, and never goes below the persisted high-water mark after a
 * restart. Two threads of one gateway (the main loop and the e-stop thread)
 * share one clock through a {@link SharedClockState}: each stamp is issued
 * under its lock, so the gateway's stamps stay unique and increasing across
 * both threads.
 *
 * @example
 * ```ts
 * import { HybridLogicalClock, compareTimestamps } from "./hlc.ts";
 * const a = new HybridLogicalClock({ node: "a" });
 * const b = new HybridLogicalClock({ node: "b" });
 * const sent = a.now();
 * const received = b.update(sent);
 * console.assert(compareTimestamps(received, sent) > 0);
 * ```
 */
import { assert } from "./assert.ts";

/** One HLC reading. */
export interface Timestamp {
  /** Physical component, milliseconds since the Unix epoch. */
  readonly wallMs: number;
  /** Logical counter; resets to 0 when `wallMs` advances. */
  readonly logical: number;
  /** Identity of the issuing node (a peer ID); the final tie-breaker. */
  readonly node: string;
}

/** CockroachDB's default: a peer further ahead than this is not trusted. */
export const DEFAULT_MAX_OFFSET_MS = 500;
/**
 * How far ahead of the current wall time the high-water mark is persisted.
 * One persisted write covers this much time, so a busy clock writes at most
 * about once per window, and a restart resumes above anything issued before.
 */
export const DEFAULT_PERSIST_WINDOW_MS = 1_000;
/** The logical counter is encoded in 32 bits. */
export const MAX_LOGICAL = 0xffff_ffff;
/** 48 bits of milliseconds reach the year 10889. */
const MAX_WALL_MS = 2 ** 48 - 1;
/** Node ids are peer IDs (≈52 chars); longer ids are refused on decode. */
export const MAX_NODE_BYTES = 128;

/** A remote timestamp was too far ahead of our wall clock to be adopted. */
export class ClockOffsetError extends Error {
  override name = "ClockOffsetError";
  constructor(readonly remote: Timestamp, readonly offsetMs: number, readonly maxOffsetMs: number) {
    super(
      `remote HLC ${formatTimestamp(remote)} from ${remote.node} is ${offsetMs} ms ahead of ` +
        `the local wall clock (max offset ${maxOffsetMs} ms); not adopted`,
    );
  }
}

/** A timestamp that failed validation or decoding. */
export class InvalidTimestampError extends Error {
  override name = "InvalidTimestampError";
}

/** Options for {@link HybridLogicalClock}. All but `node` are optional. */
export interface HybridLogicalClockInit {
  /** This node's id (the gateway's peer ID). */
  node: string;
  /** Physical clock; defaults to `Date.now`. Tests pass a fake. */
  wallClockMs?: () => number;
  /** Remote timestamps further ahead than this are rejected. */
  maxOffsetMs?: number;
  /** High-water mark read back from storage at start; issued stamps stay above it. */
  persistedWallMs?: number;
  /** Called (synchronously) with a new high-water mark to persist. */
  persist?: (wallMs: number) => void;
  /** See {@link DEFAULT_PERSIST_WINDOW_MS}. */
  persistWindowMs?: number;
  /**
   * Clock state shared with another thread of this gateway. Its high-water mark
   * wins over `persistedWallMs`; each thread passes its own `persist`.
   */
  shared?: SharedClockState;
}

/**
 * The last stamp and the persisted high-water mark of a clock, in shared memory
 * with a lock, so that clocks on several threads of one gateway act as one.
 * Send {@link SharedClockState.buffer} to the other thread and wrap it there with
 * `new SharedClockState(buffer)`.
 */
export class SharedClockState {
  readonly buffer: SharedArrayBuffer;
  /** [0] lock word; [6] logical counter. */
  readonly #words: Int32Array;
  /** [1] last wall ms; [2] persisted high-water mark. */
  readonly #floats: Float64Array;

  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(32)) {
    assert(buffer.byteLength === 32, "shared clock state is 32 bytes");
    this.buffer = buffer;
    this.#words = new Int32Array(buffer);
    this.#floats = new Float64Array(buffer);
  }

  /** Runs `critical` holding the lock (a short spin with 1 ms waits). */
  locked<T>(critical: () => T): T {
    while (Atomics.compareExchange(this.#words, 0, 0, 1) !== 0) Atomics.wait(this.#words, 0, 1, 1);
    try {
      return critical();
    } finally {
      Atomics.store(this.#words, 0, 0);
      Atomics.notify(this.#words, 0, 1);
    }
  }

  /** Reads/writes under {@link locked}. */
  get wallMs(): number {
    return this.#floats[1]!;
  }
  set wallMs(value: number) {
    this.#floats[1] = value;
  }
  get logical(): number {
    return this.#words[6]! >>> 0;
  }
  set logical(value: number) {
    this.#words[6] = value | 0;
  }
  get persistedWallMs(): number {
    return this.#floats[2]!;
  }
  set persistedWallMs(value: number) {
    this.#floats[2] = value;
  }
}

/** Holds the clock state of a clock used by one thread only. */
class LocalClockState {
  wallMs = 0;
  logical = 0;
  persistedWallMs = 0;
  locked<T>(critical: () => T): T {
    return critical();
  }
}

/** The clock. One instance per gateway. */
export class HybridLogicalClock {
  readonly node: string;
  readonly maxOffsetMs: number;
  /** Remote timestamps refused by the max-offset guard. */
  rejectedRemote = 0;
  #wallClockMs: () => number;
  #state: SharedClockState | LocalClockState;
  #persist: ((wallMs: number) => void) | undefined;
  #persistWindowMs: number;

  constructor(init: HybridLogicalClockInit) {
    assert(init.node.length > 0, "HLC node id is not empty");
    this.node = init.node;
    this.maxOffsetMs = init.maxOffsetMs ?? DEFAULT_MAX_OFFSET_MS;
    this.#wallClockMs = init.wallClockMs ?? Date.now;
    this.#persist = init.persist;
    this.#persistWindowMs = init.persistWindowMs ?? DEFAULT_PERSIST_WINDOW_MS;
    this.#state = init.shared ?? new LocalClockState();
    const persistedWallMs = init.persistedWallMs ?? 0;
    this.#state.locked(() => {
      // Start strictly above anything a previous run may have issued.
      if (persistedWallMs > this.#state.persistedWallMs) {
        this.#state.persistedWallMs = persistedWallMs;
      }
      if (this.#state.persistedWallMs > this.#state.wallMs) {
        this.#state.wallMs = this.#state.persistedWallMs;
        this.#state.logical = 0;
      }
    });
  }

  /** The last timestamp issued or adopted (by any thread sharing the state). */
  get last(): Timestamp {
    return this.#state.locked(() => this.#read());
  }

  /** A timestamp for a local event or a send. */
  now(): Timestamp {
    return this.#state.locked(() => {
      const physical = this.#wallClockMs();
      const previous = this.#read();
      const next = physical > previous.wallMs
        ? { wallMs: physical, logical: 0, node: this.node }
        : { wallMs: previous.wallMs, logical: previous.logical + 1, node: this.node };
      return this.#advance(previous, next);
    });
  }

  /**
   * Merge a timestamp received from a peer; returns the stamp of the receive
   * event, greater than both the remote stamp and every stamp issued before.
   * Throws {@link ClockOffsetError} (and counts it) when the remote is more
   * than `maxOffsetMs` ahead of the local wall clock.
   */
  update(remote: Timestamp): Timestamp {
    validateTimestamp(remote);
    const physical = this.#wallClockMs();
    const aheadMs = remote.wallMs - physical;
    if (aheadMs > this.maxOffsetMs) {
      this.rejectedRemote++;
      throw new ClockOffsetError(remote, aheadMs, this.maxOffsetMs);
    }
    return this.#state.locked(() => {
      const previous = this.#read();
      const wallMs = Math.max(physical, previous.wallMs, remote.wallMs);
      let logical = 0;
      if (wallMs === previous.wallMs && wallMs === remote.wallMs) {
        logical = Math.max(previous.logical, remote.logical) + 1;
      } else if (wallMs === previous.wallMs) {
        logical = previous.logical + 1;
      } else if (wallMs === remote.wallMs) {
        logical = remote.logical + 1;
      }
      const next = this.#advance(previous, { wallMs, logical, node: this.node });
      assert(compareTimestamps(next, remote) > 0, "HLC update dominates the remote stamp");
      return next;
    });
  }

  #read(): Timestamp {
    return { wallMs: this.#state.wallMs, logical: this.#state.logical, node: this.node };
  }

  /** Under the state's lock. Persists before the stamp is handed out. */
  #advance(previous: Timestamp, next: Timestamp): Timestamp {
    assert(next.logical <= MAX_LOGICAL, "HLC logical counter fits 32 bits");
    assert(compareTimestamps(next, previous) > 0, "HLC never runs backwards");
    this.#state.wallMs = next.wallMs;
    this.#state.logical = next.logical;
    if (this.#persist && next.wallMs >= this.#state.persistedWallMs) {
      this.#state.persistedWallMs = next.wallMs + this.#persistWindowMs;
      this.#persist(this.#state.persistedWallMs);
    }
    return next;
  }
}

/** Total order: wall time, then logical counter, then node id. */
export function compareTimestamps(a: Timestamp, b: Timestamp): number {
  if (a.wallMs !== b.wallMs) return a.wallMs < b.wallMs ? -1 : 1;
  if (a.logical !== b.logical) return a.logical < b.logical ? -1 : 1;
  if (a.node === b.node) return 0;
  return a.node < b.node ? -1 : 1;
}

/** The larger of two timestamps. */
export function maxTimestamp(a: Timestamp, b: Timestamp): Timestamp {
  return compareTimestamps(a, b) >= 0 ? a : b;
}

/** Throws {@link InvalidTimestampError} unless `t` is a well-formed timestamp. */
export function validateTimestamp(t: Timestamp): void {
  if (!Number.isSafeInteger(t.wallMs) || t.wallMs < 0 || t.wallMs > MAX_WALL_MS) {
    throw new InvalidTimestampError(`HLC wallMs ${t.wallMs}: expected an integer in [0, 2^48)`);
  }
  if (!Number.isSafeInteger(t.logical) || t.logical < 0 || t.logical > MAX_LOGICAL) {
    throw new InvalidTimestampError(`HLC logical ${t.logical}: expected an integer in [0, 2^32)`);
  }
  if (typeof t.node !== "string" || t.node.length === 0 || t.node.length > MAX_NODE_BYTES) {
    throw new InvalidTimestampError(`HLC node: expected 1..${MAX_NODE_BYTES} characters`);
  }
}

/**
 * A string form whose lexicographic order is the timestamp order (fixed-width
 * hex wall time and counter, then the node): handy as a map key or a value
 * stored in a document. Example: `0193f1c2a4b0.00000003.12D3KooW…`.
 */
export function formatTimestamp(t: Timestamp): string {
  return `${t.wallMs.toString(16).padStart(12, "0")}.${
    t.logical.toString(16).padStart(8, "0")
  }.${t.node}`;
}

/** Inverse of {@link formatTimestamp}; throws {@link InvalidTimestampError}. */
export function parseTimestamp(text: string): Timestamp {
  const match = /^([0-9a-f]{12})\.([0-9a-f]{8})\.(.+)$/.exec(text);
  if (!match) {
    throw new InvalidTimestampError(`HLC text "${text.slice(0, 80)}": expected wall.logical.node`);
  }
  const t = {
    wallMs: parseInt(match[1]!, 16),
    logical: parseInt(match[2]!, 16),
    node: match[3]!,
  };
  validateTimestamp(t);
  return t;
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Compact binary form: 6 bytes wall time, 4 bytes counter (big-endian, so
 * byte order is time order), 1 byte node length, then the node id in UTF-8.
 */
export function encodeTimestamp(t: Timestamp): Uint8Array {
  validateTimestamp(t);
  const node = textEncoder.encode(t.node);
  if (node.length > MAX_NODE_BYTES) {
    throw new InvalidTimestampError(`HLC node is ${node.length} bytes; max ${MAX_NODE_BYTES}`);
  }
  const out = new Uint8Array(11 + node.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, Math.floor(t.wallMs / 2 ** 32));
  view.setUint32(2, t.wallMs % 2 ** 32);
  view.setUint32(6, t.logical);
  out[10] = node.length;
  out.set(node, 11);
  return out;
}

/** Decodes {@link encodeTimestamp}'s output; returns the stamp and bytes read. */
export function decodeTimestamp(
  bytes: Uint8Array,
  offset = 0,
): { timestamp: Timestamp; size: number } {
  if (bytes.length - offset < 11) throw new InvalidTimestampError("HLC bytes truncated (header)");
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset);
  const wallMs = view.getUint16(0) * 2 ** 32 + view.getUint32(2);
  const logical = view.getUint32(6);
  const nodeLength = bytes[offset + 10]!;
  if (nodeLength === 0 || bytes.length - offset < 11 + nodeLength) {
    throw new InvalidTimestampError("HLC bytes truncated (node)");
  }
  let node: string;
  try {
    node = textDecoder.decode(bytes.subarray(offset + 11, offset + 11 + nodeLength));
  } catch {
    throw new InvalidTimestampError("HLC node is not UTF-8");
  }
  const timestamp = { wallMs, logical, node };
  validateTimestamp(timestamp);
  return { timestamp, size: 11 + nodeLength };
}
