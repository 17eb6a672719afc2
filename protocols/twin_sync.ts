/**
 * Twin sync sessions: Automerge's sync protocol for every twin two peers both
 * replicate, run over one stream of the `/twinmesh/twin-sync/6.0.0` protocol
 * on every (re)connection. It fetches whatever gossip missed, so a partition
 * of any length heals without manual work.
 *
 * The session is a pure state machine ({@link TwinSyncSession}: frames in,
 * frames out); {@link runTwinSyncSession} drives it over a libp2p `Stream`
 * with length-prefixed frames. Turn-taking keeps it deadlock-free and bounds
 * buffering: after both hellos, the initiator sends a round of frames ending
 * with `end-round`, the responder answers with its round, and so on; the
 * session ends when two consecutive rounds (one from each side) are empty.
 *
 * @example
 * ```ts
 * import { TwinSyncSession } from "./twin_sync.ts";
 * // `replicaA` and `replicaB` implement TwinSyncTarget (see TwinReplica).
 * declare const replicaA: import("./twin_sync.ts").TwinSyncTarget;
 * declare const replicaB: import("./twin_sync.ts").TwinSyncTarget;
 * const a = new TwinSyncSession("initiator", replicaA);
 * const b = new TwinSyncSession("responder", replicaB);
 * let toB = a.start();
 * while (!a.done || !b.done) {
 *   const toA = toB.flatMap((f) => b.receive(f));
 *   toB = toA.flatMap((f) => a.receive(f));
 *   if (toA.length === 0 && toB.length === 0) break;
 * }
 * ```
 */
import { setImmediate } from "node:timers";
import type { Stream } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import { assert } from "./assert.ts";
import { concatBytes } from "./bytes.ts";
import {
  chunkSyncMessage,
  decodeSyncFrame,
  encodeSyncFrame,
  HEAD_BYTES,
  MAX_HELLO_HEADS,
  MAX_SYNC_FRAME_BYTES,
  MAX_SYNC_MESSAGE_BYTES,
  type SyncFrame,
  TwinCodecError,
  unpackSyncMessage,
} from "./twin_codec.ts";
import type { TwinSyncState } from "./twin_doc.ts";
import * as Automerge from "@automerge/automerge";

/**
 * Bytes of sync frames one side sends per round. The receiver buffers at most
 * one round while it applies frames, so this bounds its memory; frames of a
 * larger backlog continue in the next round.
 */
export const MAX_ROUND_BYTES = 8 * 1024 * 1024;
/**
 * Rounds per session. Automerge needs 3-5 per twin (all twins run in
 * parallel) plus one per {@link MAX_ROUND_BYTES} of backlog; a 48-hour
 * backlog of 20 arms is well under 200. A peer that never converges is cut off here.
 */
export const MAX_SYNC_ROUNDS = 1_000;
/**
 * A session exists to catch up; live changes travel by gossip. While writes
 * keep flowing, two empty rounds in a row may never happen, and a session
 * would echo every live change forever (N−1 sessions per gateway, each one
 * doing gossip's work again). So after this many rounds (sent plus received,
 * the same count on both sides), a round of less than {@link TRICKLE_BYTES}
 * counts as quiet, like an empty one before: two quiet rounds in a row end
 * the session on both sides at once.
 */
export const CATCH_UP_ROUNDS = 8;
/**
 * Below this, a round after the catch-up rounds is live trickle, not backlog.
 * Measured in the twins bench (600 writes/s over 60 twins), live rounds carry
 * a sync message per changed twin and run to several KB, so 2 KB kept
 * sessions alive for the whole run. A backlog still being fetched fills
 * rounds up to {@link MAX_ROUND_BYTES}. A tail cut short is not lost: the
 * next gossip change of that twin parks on the missing dependency and starts
 * a new session, and anti-entropy runs regardless.
 */
export const TRICKLE_BYTES = 64 * 1024;
/** A session that has not finished after this long is aborted (2 min ≈ 150 MB at 10 Mbit/s). */
export const SYNC_SESSION_TIMEOUT_MS = 120_000;
/**
 * Bytes of heads one hello may carry (~33 B per head per twin). A hello is
 * one frame: with thousands of twins, those past this budget are announced
 * without heads (and always synced) instead of the hello outgrowing the
 * frame limit and every session failing. Half the frame leaves the ids room.
 */
export const HELLO_HEADS_BUDGET = Math.floor(MAX_SYNC_FRAME_BYTES / 2);

/** What a sync session needs from the replica. */
export interface TwinSyncTarget {
  /** Factories this replica replicates. */
  readonly factories: readonly string[];
  /**
   * Documents this replica holds in `factories`, with their factory.
   * `pending`: held but still empty (a later epoch waiting for its genesis);
   * offered only by a session fetching a known gap.
   */
  listDocs(): readonly {
    readonly docId: string;
    readonly factory: string;
    readonly pending?: true;
  }[];
  /** Makes sure a twin exists (empty if new); false when it may not be held (limit, factory). */
  ensureDoc(docId: string, factory: string): boolean;
  generateSyncMessage(docId: string, state: TwinSyncState): [TwinSyncState, Uint8Array | null];
  /** Applies a peer's sync message; throws when it is invalid. */
  receiveSyncMessage(docId: string, state: TwinSyncState, message: Uint8Array): TwinSyncState;
  /**
   * The twin's current heads, joined by ",": lets a round skip twins that
   * neither changed nor heard from the peer (Automerge would have nothing to
   * say), and goes into the hello.
   */
  heads?(docId: string): string;
  /** True when the twin holds every change named (and so all they depend on). */
  hasHeads(docId: string, heads: readonly string[]): boolean;
}

/** The peer broke the session protocol; the session is abandoned. */
export class TwinSyncProtocolError extends Error {
  override name = "TwinSyncProtocolError";
}

/** Counters of one session. */
export interface TwinSyncSessionStats {
  rounds: number;
  messagesSent: number;
  messagesReceived: number;
  framesIgnored: number;
  /**
   * Twins this side did not open a dialogue about: it already held everything
   * the peer had when it sent its hello (see TwinSyncSession.#round). It
   * still answers if the peer speaks about one.
   */
  twinsInSync: number;
}

type Phase = "start" | "await-hello" | "rounds" | "done";

/** See the module documentation. */
export class TwinSyncSession {
  readonly role: "initiator" | "responder";
  readonly stats: TwinSyncSessionStats = {
    rounds: 0,
    messagesSent: 0,
    messagesReceived: 0,
    framesIgnored: 0,
    twinsInSync: 0,
  };
  #target: TwinSyncTarget;
  #phase: Phase = "start";
  #docs: string[] = [];
  /** Twins this session is limited to (set by the initiator, adopted by the responder). */
  #scope: ReadonlySet<string> | undefined;
  #states = new Map<string, TwinSyncState>();
  /** Per twin: heads when we last generated a message, and whether the peer spoke since. */
  readonly #lastHeads = new Map<string, string>();
  /** The peer's heads from its hello, per twin this side has not spoken about yet. */
  readonly #peerHeads = new Map<string, readonly string[]>();
  readonly #skipped = new Set<string>();
  readonly #heardFrom = new Set<string>();
  #outgoing: SyncFrame[] = [];
  #incoming = new Map<string, { parts: number; chunks: Uint8Array[]; bytes: number }>();
  #receivedInRound = 0;
  #bytesInRound = 0;
  /** Rounds sent plus rounds received: equal on both sides after each round. */
  #exchanged = 0;
  #lastSentEmpty = false;
  #maxRounds: number;

  /**
   * `states` seeds per-twin sync states remembered from an earlier session
   * with the same peer (saves a round trip per twin); they are updated in place.
   */
  constructor(
    role: "initiator" | "responder",
    target: TwinSyncTarget,
    options: {
      states?: Map<string, TwinSyncState>;
      maxRounds?: number;
      /** Initiator only: sync just these twins (a known gap), not every shared one. */
      scope?: ReadonlySet<string>;
    } = {},
  ) {
    this.role = role;
    this.#target = target;
    assert(options.scope === undefined || role === "initiator", "only the initiator scopes");
    this.#scope = options.scope;
    this.#states = options.states ?? new Map();
    this.#maxRounds = options.maxRounds ?? MAX_SYNC_ROUNDS;
  }

  /** True when the session covers only the initiator's listed twins (a gap fetch). */
  get scoped(): boolean {
    return this.#scope !== undefined;
  }

  /** True once both sides sent an empty round (or the round limit was hit). */
  get done(): boolean {
    return this.#phase === "done";
  }

  /** Per-twin sync states, to remember for the next session with this peer. */
  get states(): Map<string, TwinSyncState> {
    return this.#states;
  }

  /** Frames to send first: the initiator's hello. */
  start(): SyncFrame[] {
    assert(this.#phase === "start", "a sync session starts once");
    this.#phase = "await-hello";
    return this.role === "initiator" ? [this.#hello()] : [];
  }

  /** Handles one frame from the peer; returns frames to send. Throws {@link TwinSyncProtocolError}. */
  receive(frame: SyncFrame): SyncFrame[] {
    const steps = this.#receiveSteps(frame);
    for (;;) {
      const step = steps.next();
      if (step.done) return step.value;
    }
  }

  /**
   * As {@link receive}, but between two twins of a round it awaits `pause()`
   * whenever `due()` says so: a round over many changed twins is the longest
   * piece of work a session does, and nothing else on the event loop (e-stop
   * frames among it) runs until it ends.
   */
  async receivePausing(
    frame: SyncFrame,
    due: () => boolean,
    pause: () => Promise<void>,
  ): Promise<SyncFrame[]> {
    const steps = this.#receiveSteps(frame);
    for (;;) {
      const step = steps.next();
      if (step.done) return step.value;
      if (due()) await pause();
    }
  }

  /** The work of `receive`, yielding between the twins of a round. */
  *#receiveSteps(frame: SyncFrame): Generator<void, SyncFrame[]> {
    if (this.#phase === "await-hello") {
      if (frame.type !== "hello") {
        throw new TwinSyncProtocolError(`expected hello, got ${frame.type}`);
      }
      this.#chooseDocs(frame);
      this.#phase = "rounds";
      if (this.role === "responder") return [this.#hello()];
      return yield* this.#round(false);
    }
    if (this.#phase !== "rounds") {
      throw new TwinSyncProtocolError(`unexpected ${frame.type} frame after the session ended`);
    }
    if (frame.type === "hello") throw new TwinSyncProtocolError("second hello");
    if (frame.type === "sync") {
      this.#receiveChunk(frame);
      return [];
    }
    this.#exchanged++;
    const peerEmpty = this.#quiet(this.#receivedInRound, this.#bytesInRound);
    this.#receivedInRound = 0;
    this.#bytesInRound = 0;
    this.stats.rounds++;
    if (peerEmpty && this.#lastSentEmpty) {
      this.#phase = "done";
      return [];
    }
    return yield* this.#round(peerEmpty);
  }

  #hello(): SyncFrame {
    const shared = new Set(this.#target.factories);
    const scope = this.#scope;
    let budget = HELLO_HEADS_BUDGET;
    const docs = this.#target.listDocs()
      .filter((d) =>
        shared.has(d.factory) && (scope === undefined ? !d.pending : scope.has(d.docId))
      )
      .map((d) => {
        const heads = this.#target.heads?.(d.docId).split(",").filter((h) => h !== "") ?? [];
        const bytes = heads.length * (HEAD_BYTES + 1);
        if (heads.length === 0 || heads.length > MAX_HELLO_HEADS || bytes > budget) {
          return { docId: d.docId, factory: d.factory };
        }
        budget -= bytes;
        return { docId: d.docId, factory: d.factory, heads };
      });
    const factories = [...this.#target.factories];
    return scope === undefined
      ? { type: "hello", factories, docs }
      : { type: "hello", factories, docs, scoped: true };
  }

  #chooseDocs(hello: Extract<SyncFrame, { type: "hello" }>): void {
    // A scoped hello limits the responder to the initiator's list of twins.
    if (this.role === "responder" && hello.scoped) {
      this.#scope = new Set(hello.docs.map((d) => d.docId));
    }
    const scope = this.#scope;
    const inScope = (docId: string) => scope === undefined || scope.has(docId);
    const theirs = new Set(hello.factories);
    const shared = new Set(this.#target.factories.filter((f) => theirs.has(f)));
    const ids = new Set<string>();
    for (const doc of this.#target.listDocs()) {
      const offered = scope === undefined ? !doc.pending : scope.has(doc.docId);
      if (shared.has(doc.factory) && offered) ids.add(doc.docId);
    }
    for (const doc of hello.docs) {
      if (
        shared.has(doc.factory) && inScope(doc.docId) &&
        (ids.has(doc.docId) || this.#target.ensureDoc(doc.docId, doc.factory))
      ) {
        ids.add(doc.docId);
      }
    }
    this.#docs = [...ids].sort();
    for (const doc of hello.docs) {
      if (doc.heads && ids.has(doc.docId)) this.#peerHeads.set(doc.docId, doc.heads);
    }
  }

  /**
   * This side opens a dialogue about a twin only if it lacks something the
   * peer had at its hello; the peer does the same, and Automerge's protocol
   * answers whoever speaks. A twin both sides already hold costs nothing.
   * On a live link every twin changes all the time, so hello heads rarely
   * match, but what differs is gossip in flight: checked as late as the
   * round that would speak, it has usually arrived. What either side writes
   * after the hellos is gossip's to carry (a session exists to catch up).
   */
  #peerHasNothingNew(docId: string): boolean {
    const heads = this.#peerHeads.get(docId);
    if (!heads || this.#heardFrom.has(docId)) return false;
    if (!this.#target.hasHeads(docId, heads)) return false;
    if (!this.#skipped.has(docId)) {
      this.#skipped.add(docId);
      this.stats.twinsInSync++;
    }
    return true;
  }

  #receiveChunk(frame: Extract<SyncFrame, { type: "sync" }>): void {
    this.#receivedInRound++;
    this.#bytesInRound += frame.bytes.length;
    if (!this.#docs.includes(frame.docId)) {
      // A twin the peer shares but we could not hold (limit): skip its dialogue.
      this.stats.framesIgnored++;
      return;
    }
    const partial = this.#incoming.get(frame.docId) ??
      { parts: frame.parts, chunks: [], bytes: 0 };
    if (partial.parts !== frame.parts || partial.chunks.length !== frame.part) {
      throw new TwinSyncProtocolError(
        `chunk ${frame.part}/${frame.parts} of "${frame.docId}" out of order`,
      );
    }
    partial.chunks.push(frame.bytes);
    partial.bytes += frame.bytes.length;
    if (partial.bytes > MAX_SYNC_MESSAGE_BYTES) {
      throw new TwinSyncProtocolError(
        `sync message for "${frame.docId}" exceeds ${MAX_SYNC_MESSAGE_BYTES} B`,
      );
    }
    if (partial.chunks.length < partial.parts) {
      this.#incoming.set(frame.docId, partial);
      return;
    }
    this.#incoming.delete(frame.docId);
    const message = unpackSyncMessage(concatBytes(partial.chunks));
    const state = this.#states.get(frame.docId) ?? Automerge.initSyncState();
    this.#states.set(frame.docId, this.#target.receiveSyncMessage(frame.docId, state, message));
    this.#heardFrom.add(frame.docId);
    this.stats.messagesReceived++;
  }

  /** Empty; or, once the backlog rounds are over, live trickle (see CATCH_UP_ROUNDS). */
  #quiet(frames: number, bytes: number): boolean {
    return frames === 0 || (this.#exchanged >= CATCH_UP_ROUNDS && bytes < TRICKLE_BYTES);
  }

  #unchanged(docId: string, heads: string): boolean {
    return this.#lastHeads.get(docId) === heads && !this.#heardFrom.has(docId);
  }

  *#round(peerEmpty: boolean): Generator<void, SyncFrame[]> {
    if (this.stats.rounds >= this.#maxRounds) {
      this.#phase = "done";
      return [{ type: "end-round" }];
    }
    const busy = new Set<string>();
    for (const frame of this.#outgoing) if (frame.type === "sync") busy.add(frame.docId);
    for (const docId of this.#docs) {
      if (busy.has(docId)) continue; // the previous message is still being sent
      // Unchanged since our last message and nothing heard: Automerge would
      // return null. Skipping keeps a live session's rounds proportional to
      // the change rate instead of to the number of twins.
      const heads = this.#target.heads?.(docId);
      if (heads !== undefined && this.#unchanged(docId, heads)) continue;
      if (this.#peerHasNothingNew(docId)) continue;
      this.#peerHeads.delete(docId); // from here on Automerge's dialogue decides
      const state = this.#states.get(docId) ?? Automerge.initSyncState();
      const [next, message] = this.#target.generateSyncMessage(docId, state);
      this.#states.set(docId, next);
      if (heads !== undefined) this.#lastHeads.set(docId, heads);
      this.#heardFrom.delete(docId);
      if (message) {
        this.#outgoing.push(...chunkSyncMessage(docId, message));
        this.stats.messagesSent++;
      }
      yield;
    }
    const frames: SyncFrame[] = [];
    let bytes = 0;
    while (this.#outgoing.length > 0 && (frames.length === 0 || bytes < MAX_ROUND_BYTES)) {
      const frame = this.#outgoing.shift()!;
      bytes += frame.type === "sync" ? frame.bytes.length : 0;
      frames.push(frame);
    }
    this.#exchanged++;
    this.#lastSentEmpty = this.#quiet(frames.length, bytes);
    if (peerEmpty && this.#lastSentEmpty) this.#phase = "done";
    frames.push({ type: "end-round" });
    return frames;
  }
}

/**
 * A session hands the event loop back after this much work: frames already
 * buffered resolve reads as microtasks, which run before any timer or socket
 * callback, so a large backlog would otherwise hold up e-stop frames, pings
 * and gossip for as long as it takes to apply.
 */
export const SYNC_YIELD_AFTER_MS = 5;

/**
 * Lets due timers and I/O callbacks run (one event-loop turn). Not
 * `setTimeout(0)`: Deno fires that ~2 ms later even on an idle loop (measured
 * 2.16 ms per yield, 6.6 µs with `setImmediate`), which left a session idle
 * for ~2 ms after every 5 ms of work.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Byte counts of a session run over a stream. */
export interface TwinSyncRunResult {
  readonly bytesSent: number;
  readonly bytesReceived: number;
}

/**
 * Runs `session` over `stream` until it is done, then closes the stream (a
 * libp2p protocol handler must close its streams). On any error the stream is
 * aborted and the error rethrown: {@link TwinSyncProtocolError} or
 * {@link TwinCodecError} for a misbehaving peer, others for a lost link.
 */
export async function runTwinSyncSession(
  stream: Stream,
  session: TwinSyncSession,
  options: { signal?: AbortSignal } = {},
): Promise<TwinSyncRunResult> {
  const signal = options.signal ?? AbortSignal.timeout(SYNC_SESSION_TIMEOUT_MS);
  const lp = lpStream(stream, {
    maxDataLength: MAX_SYNC_FRAME_BYTES,
    // One round plus one frame of slack (see MAX_ROUND_BYTES).
    maxBufferSize: MAX_ROUND_BYTES + 2 * MAX_SYNC_FRAME_BYTES,
  });
  let bytesSent = 0;
  let bytesReceived = 0;
  const send = async (frames: SyncFrame[]) => {
    if (frames.length === 0) return;
    const encoded = frames.map(encodeSyncFrame);
    for (const bytes of encoded) bytesSent += bytes.length;
    await lp.writeV(encoded, { signal });
  };
  let sliceStart = performance.now();
  try {
    await send(session.start());
    while (!session.done) {
      if (performance.now() - sliceStart > SYNC_YIELD_AFTER_MS) {
        await yieldToEventLoop();
        sliceStart = performance.now();
      }
      const data = await lp.read({ signal });
      const bytes = data.subarray();
      // lpStream yields an empty read at end of stream; frames are never empty.
      if (bytes.length === 0) throw new TwinSyncProtocolError("peer closed the stream mid-session");
      bytesReceived += bytes.length;
      let frame: SyncFrame;
      try {
        frame = decodeSyncFrame(bytes);
      } catch (error) {
        if (error instanceof TwinCodecError) throw error;
        throw new TwinCodecError(`undecodable sync frame: ${error}`);
      }
      const due = () => performance.now() - sliceStart > SYNC_YIELD_AFTER_MS;
      await send(
        await session.receivePausing(frame, due, async () => {
          await yieldToEventLoop();
          sliceStart = performance.now();
        }),
      );
    }
    await stream.close({ signal });
    return { bytesSent, bytesReceived };
  } catch (error) {
    stream.abort(error instanceof Error ? error : new Error(String(error)));
    throw error;
  }
}
