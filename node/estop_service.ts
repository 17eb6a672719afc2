/**
 * The e-stop service: `/twinmesh/estop/1.0.0` over libp2p, outside gossip.
 *
 * Every gateway keeps one long-lived stream to every gateway of its factory,
 * its configured region peers and its safety supervisors, reopened as soon as
 * it drops, with a heartbeat that also feeds the supervisor watchdog.
 *
 * Origin: `stop()` signs a STOP, sends it to every owner of the target, acts
 * locally on the assets it owns itself, and retries unacked owners over other
 * paths (relays, then gossip) until they ack or the deadline passes; then it
 * reports who is missing and keeps redelivering those (persisted in SQLite)
 * whenever they reconnect, so a stop across a partition arrives on heal.
 *
 * Owner: verifies the signature, calls the adapter's stop at once (safety
 * first), writes the latch to SQLite, then acks. A latched asset stays
 * stopped until an operator's reset names the stop with a later HLC
 * ({@link EstopLatch}); `isLatched()` lets the command path refuse motion.
 *
 * @example
 * ```ts ignore
 * const estop = createEstopService({ operators: [controlRoomPeerId] }, components);
 * await estop.start();
 * const { id, acked, missing } = await estop.stop({ target: { kind: "asset", id: "gw-1.arm-0" }, reason: "fence open" });
 * ```
 */
import type { DatabaseSync } from "node:sqlite";
import type { Connection, Libp2p, PeerId, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { assert } from "../protocols/assert.ts";
import {
  ClockOffsetError,
  formatTimestamp,
  type HybridLogicalClock,
  type Timestamp,
} from "../protocols/hlc.ts";
import {
  type AckFrame,
  type AckStatus,
  decodeFrame,
  decodeFramePrefixed,
  encodePing,
  encodePong,
  encodeRelay,
  type EstopFrame,
  type EstopTarget,
  FrameDecoder,
  MalformedFrameError,
  newCommandId,
  prepareAck,
  prepareReset,
  prepareStop,
  type ResetFrame,
  sealFrame,
  type StopFrame,
  type UnsignedFrame,
} from "../protocols/estop_codec.ts";
import {
  DEFAULT_COMMAND_MAX_AGE_MS,
  DEFAULT_LATE_AFTER_MS,
  DEFAULT_LINK_TIMEOUT_MS,
  DEFAULT_PING_INTERVAL_MS,
  ESTOP_PROTOCOL,
  MAX_ESTOP_STREAMS_PER_CONNECTION,
  MAX_PENDING_COMMANDS,
  MAX_RECENT_EVENTS,
  MAX_REOPEN_BACKOFF_MS,
  MAX_RESET_STOP_IDS,
  MAX_STREAM_WRITE_BUFFER_BYTES,
} from "../protocols/estop_constants.ts";
import { EstopLatch, type KnownCommand, type LatchEntry } from "../protocols/estop_latch.ts";
import {
  type DispatchAction,
  EstopDispatcher,
  type LinkView,
} from "../protocols/estop_dispatcher.ts";
import { SupervisorWatchdog, type WatchdogTransition } from "../protocols/estop_watchdog.ts";
import { createEstopStorage, type EstopStorage, type OutboxRow } from "./estop_storage.ts";

export type { EstopTarget } from "../protocols/estop_codec.ts";

/** Log fields are a flat bag; the gateway's logger satisfies this. */
export interface EstopLogger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Where assets live: provided by the gateway's directory. */
export interface EstopDirectory {
  /**
   * Peer IDs of the gateway owning `assetId`: none while unknown, more than
   * one only where gateways share a name (each is sent the stop).
   */
  ownersOf(assetId: string): string[];
  /** Gateways (peer IDs) in a cell/factory/all scope; may include this gateway. */
  gatewaysIn(target: EstopTarget): string[];
  /** Assets of this gateway that `target` covers (possibly none). */
  localAssets(target: EstopTarget): string[];
}

/** What the service needs from its gateway. Nothing else is reached for. */
export interface EstopComponents extends EstopDirectory {
  libp2p: Pick<
    Libp2p,
    | "peerId"
    | "handle"
    | "unhandle"
    | "dialProtocol"
    | "getConnections"
    | "addEventListener"
    | "removeEventListener"
  >;
  db: DatabaseSync;
  /**
   * Makes every commit so far durable (an fdatasync of the WAL, off the
   * thread). With it, a received stop's latch is committed at NORMAL and its
   * ack waits for this, so the thread reads other frames meanwhile; every
   * other e-stop commit still syncs inline (FULL). A rejection means the
   * latch may not be on disk: nothing is acked after it (the caller should
   * treat it as fatal).
   */
  syncDb?: () => Promise<void>;
  clock: HybridLogicalClock;
  /** The gateway's identity key (a libp2p `PrivateKey` fits); signs stops, resets, acks. */
  privateKey: { sign(data: Uint8Array): Uint8Array | Promise<Uint8Array> };
  logger: EstopLogger;
  /**
   * Gateways to keep e-stop links with (peer IDs). Default: the factory's
   * gateways plus `regionPeers` and `supervisors`; a gateway passes every
   * known mesh member so that stops across regions have a link ready.
   */
  linkPeers?(): string[];
  /**
   * Peers whose e-stop address is known without a prior connection (the e-stop
   * thread's node learns them from the main mesh), so a first dial may go ahead.
   */
  dialable?(peer: string): boolean;
  /** The adapter's stop. Called synchronously, before the latch is persisted or acked. */
  stopAssets(assetIds: string[], reason: string): void;
  /** The adapter's hold (watchdog `safeState: "hold"`); without it the watchdog stops. */
  holdAssets?(assetIds: string[], reason: string): void;
  /** Last-resort path: publish a sealed frame on the mesh's gossip (the lead wires it). */
  publishGossip?(frame: Uint8Array): void;
  /**
   * Verifies `signature` over `data` by `peerId`'s key. Default: the Ed25519 key
   * embedded in the peer ID.
   */
  verify?(peerId: string, data: Uint8Array, signature: Uint8Array): boolean | Promise<boolean>;
  /** Wall clock in ms with sub-ms precision; default `performance.timeOrigin + performance.now()`. */
  nowMs?: () => number;
  randomBytes?: (length: number) => Uint8Array;
}

/** Configuration; every field is optional. */
export interface EstopServiceInit {
  /** Peer IDs holding the operator role: the only ones whose resets are honoured. */
  operators?: readonly string[];
  /** Safety supervisors watched by the watchdog. */
  supervisors?: readonly string[];
  /** Silence from every supervisor longer than this enters the safe state; 0 = off. */
  watchdogMs?: number;
  /** What the watchdog does: latch a stop (needs an operator reset) or hold. */
  safeState?: "stop" | "hold";
  /** Peers outside the factory that also get a stream (other regions' gateways). */
  regionPeers?: readonly string[];
  /** `stop()`/`reset()` report after this; delivery continues afterwards. */
  ackDeadlineMs?: number;
  pingIntervalMs?: number;
  linkTimeoutMs?: number;
  /** A stop received this long after its HLC is recorded as late. */
  lateAfterMs?: number;
  /** Replay window and redelivery horizon. */
  commandMaxAgeMs?: number;
  /** Retry schedule override (tests). */
  retryScheduleMs?: readonly number[];
}

/** One owner's ack as shown in the record. */
export interface EstopAckView {
  peer: string;
  latencyMs: number;
  status: AckStatus;
}

/** A stop, reset, watchdog action or refusal, as `status().recent` shows it. */
export interface EstopRecord {
  id: string;
  kind: "stop" | "reset" | "watchdog" | "refusal";
  /** `issued` here, or `received` from another gateway. */
  direction: "issued" | "received";
  target: EstopTarget;
  origin: string;
  /** Formatted HLC ({@link formatTimestamp}). */
  hlc: string;
  reason: string;
  /** For resets: the stops named. */
  stopIds?: string[];
  acks: EstopAckView[];
  /** Owners that have not acked (after the deadline report, until they do). */
  missing: string[];
  /** Issued: an ack arrived after the deadline. Received: arrived > `lateAfterMs` after its HLC. */
  late: boolean;
  /** Wall ms when issued (origin) or received (owner). */
  atMs: number;
  /** Owner: wall ms the adapter stop was called (benchmark hook). */
  actedAtMs?: number;
  /** Local assets it covered here. */
  assets?: string[];
  /** Outcome here (ok, duplicate, refused-…). */
  status?: AckStatus;
}

/** Result of {@link EstopService.stop} and {@link EstopService.reset}. */
export interface EstopResult {
  id: string;
  hlc: string;
  acked: EstopAckView[];
  missing: string[];
}

/** An issued command whose acks are still coming in. */
export interface EstopIssued {
  id: string;
  hlc: string;
  /** Resolves after every owner acked or the deadline passed. */
  result: Promise<EstopResult>;
}

/** `status()` for the HTTP layer. */
export interface EstopStatus {
  latched: { assetId: string; stopIds: string[]; since: string }[];
  recent: EstopRecord[];
  watchdogTripped: boolean;
}

/** Everything observable, for the twin, logs and metrics. */
export type EstopEvent =
  | { type: "issued"; record: EstopRecord }
  | { type: "ack"; id: string; ack: EstopAckView; late: boolean }
  | { type: "report"; id: string; result: EstopResult }
  | { type: "latched"; record: EstopRecord }
  | { type: "released"; resetId: string; assets: string[]; cleared: string[] }
  | { type: "refused"; record: EstopRecord }
  | { type: "forged"; origin: string; fromPeer: string }
  | { type: "undeliverable"; id: string; peer: string; why: "window" | "overflow" }
  | {
    type: "watchdog-tripped";
    safeState: "stop" | "hold";
    assets: string[];
    silentForMs: number;
    stopId?: string;
  }
  | { type: "watchdog-recovered"; supervisor: string; trippedForMs: number };

/** The service. */
export interface EstopService {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Issues a stop; resolves after every owner acked or the deadline. */
  stop(params: { target: EstopTarget; reason: string }): Promise<EstopResult>;
  /** Issues a stop and returns its id at once (for HTTP 202). */
  issueStop(params: { target: EstopTarget; reason: string }): Promise<EstopIssued>;
  /** Issues a reset of `stopIds` (only honoured from an operator gateway). */
  reset(params: { stopIds: string[]; target?: EstopTarget; reason?: string }): Promise<EstopResult>;
  issueReset(
    params: { stopIds: string[]; target?: EstopTarget; reason?: string },
  ): Promise<EstopIssued>;
  /** True while a stop is latched on `assetId`: refuse every motion command. */
  isLatched(assetId: string): boolean;
  status(): EstopStatus;
  /** Flat counters and gauges for Prometheus. */
  stats(): Record<string, number>;
  /** Subscribes to events; returns the unsubscribe function. */
  onEvent(listener: (event: EstopEvent) => void): () => void;
  /** Feeds a frame received over gossip (the lead's subscription). */
  receiveGossip(frame: Uint8Array, fromPeer?: string): void;
  /** Runs heartbeats, link checks, watchdog and retries now (tests, simulators). */
  tick(): void;
  /** Peers with a live e-stop link. */
  livePeers(): string[];
}

/** A stream the service reads and writes. */
interface StreamState {
  readonly peer: string;
  readonly stream: Stream;
  readonly connection: Connection;
  readonly decoder: FrameDecoder;
  lastReceivedAtMs: number;
  pingNonce: number;
}

/** How a frame arrived: decides where its ack goes. */
type Arrival =
  | { readonly via: "stream"; readonly state: StreamState }
  | { readonly via: "relay"; readonly state: StreamState }
  | { readonly via: "gossip"; readonly fromPeer: string | undefined };

/** A forged or unverifiable frame. */
export class EstopSignatureError extends Error {
  override name = "EstopSignatureError";
}

const COUNTERS = [
  "stops_issued",
  "resets_issued",
  "stops_acked",
  "resets_acked",
  "acks_late",
  "stops_received",
  "stops_latched",
  "stops_duplicate",
  "stops_precleared",
  "stops_expired",
  "resets_received",
  "resets_applied",
  "resets_refused",
  "forged_rejected",
  "malformed_frames",
  "relayed_frames",
  "relay_undeliverable",
  "gossip_sent",
  "gossip_received",
  "retries_sent",
  "undeliverable_dropped",
  "outbox_overflow",
  "clock_offset_rejected",
  "persist_failures",
  "watchdog_trips",
  "watchdog_recoveries",
  "streams_opened",
  "streams_closed",
  "stream_open_failures",
] as const;
type Counter = typeof COUNTERS[number];

/** Peer IDs parsed for signature checks, cached. One per mesh member is plenty. */
const MAX_CACHED_PEER_IDS = 1024;
/** Outbox writes are batched: a commit per this many ms instead of per frame. */
const OUTBOX_FLUSH_DELAY_MS = 5;
/** A dial for an e-stop stream that takes longer than this is abandoned and retried. */
const DIAL_TIMEOUT_MS = 2_000;
/** How often known-command ids are pruned against the replay window. */
const PRUNE_INTERVAL_MS = 60_000;

/**
 * Creates the e-stop service. Call `start()` once libp2p has started.
 *
 * @example
 * ```ts ignore
 * const estop = createEstopService({ operators, supervisors, watchdogMs: 2_000 }, components);
 * await estop.start();
 * if (estop.isLatched(assetId)) refuseMotion();
 * ```
 */
export function createEstopService(
  init: EstopServiceInit,
  components: EstopComponents,
): EstopService {
  return new DefaultEstopService(init, components);
}

class DefaultEstopService implements EstopService {
  readonly #init: Required<Omit<EstopServiceInit, "retryScheduleMs">>;
  readonly #c: EstopComponents;
  readonly #self: string;
  readonly #nowMs: () => number;
  readonly #operators: ReadonlySet<string>;
  readonly #latch: EstopLatch;
  readonly #dispatcher: EstopDispatcher;
  readonly #watchdog: SupervisorWatchdog;
  readonly #storage: EstopStorage;
  readonly #counters = new Map<Counter, number>(COUNTERS.map((name) => [name, 0]));
  readonly #listeners = new Set<(event: EstopEvent) => void>();
  readonly #recent = new Map<string, EstopRecord>();
  readonly #waiters = new Map<string, (result: EstopResult) => void>();
  /** peer → open streams (both directions). */
  readonly #streams = new Map<string, Set<StreamState>>();
  /** Peers with an outbound dial in flight. */
  readonly #dialing = new Set<string>();
  /** peer → {attempt count, earliest next dial}. */
  readonly #reopen = new Map<string, { failures: number; notBeforeMs: number }>();
  readonly #peerIds = new Map<string, PeerId>();
  /**
   * Peers we have had a connection to: their addresses are in the peer store,
   * so re-dialling them after a drop can work. Others are left to the mesh's
   * discovery (a dial without addresses fails and would hijack the mesh's own
   * dial to that peer). Bounded by the mesh size.
   */
  readonly #everConnected = new Set<string>();
  /**
   * Asset stops whose owner this gateway did not know when they were issued (it had just
   * started and not yet discovered the mesh): sent to the owner as soon as the directory
   * names it. Bounded by MAX_PENDING_COMMANDS, kept until the replay window ends.
   */
  readonly #unresolved = new Map<
    string,
    { assetId: string; frame: Uint8Array; hlcWallMs: number; asked: readonly string[] }
  >();
  #outboxInserts: OutboxRow[] = [];
  #outboxDeletes: { commandId: string; peer: string }[] = [];
  #outboxTimer: ReturnType<typeof setTimeout> | undefined;
  #dispatchTimer: ReturnType<typeof setTimeout> | undefined;
  #dispatchWakeAtMs = Infinity;
  #heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  #lastPruneAtMs = 0;
  /** `performance.now()` at the previous tick, to detect event-loop stalls. */
  #lastTickRealMs = performance.now();
  #running = false;
  readonly #onPeerConnect = (event: CustomEvent<PeerId>) => {
    const peer = event.detail.toString();
    this.#everConnected.add(peer);
    this.#reopen.delete(peer);
    if (this.#wantedPeers().has(peer)) this.#ensureStream(peer);
  };

  constructor(init: EstopServiceInit, components: EstopComponents) {
    this.#c = components;
    this.#self = components.libp2p.peerId.toString();
    this.#nowMs = components.nowMs ?? (() => performance.timeOrigin + performance.now());
    this.#init = {
      operators: init.operators ?? [],
      supervisors: init.supervisors ?? [],
      watchdogMs: init.watchdogMs ?? 0,
      safeState: init.safeState ?? "stop",
      regionPeers: init.regionPeers ?? [],
      ackDeadlineMs: init.ackDeadlineMs ?? 2_000,
      pingIntervalMs: init.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
      linkTimeoutMs: init.linkTimeoutMs ?? DEFAULT_LINK_TIMEOUT_MS,
      lateAfterMs: init.lateAfterMs ?? DEFAULT_LATE_AFTER_MS,
      commandMaxAgeMs: init.commandMaxAgeMs ?? DEFAULT_COMMAND_MAX_AGE_MS,
    };
    assert(
      this.#init.linkTimeoutMs > this.#init.pingIntervalMs,
      "link timeout exceeds ping interval",
    );
    this.#operators = new Set(this.#init.operators);
    this.#latch = new EstopLatch({ commandMaxAgeMs: this.#init.commandMaxAgeMs });
    this.#dispatcher = new EstopDispatcher({
      ackDeadlineMs: this.#init.ackDeadlineMs,
      commandMaxAgeMs: this.#init.commandMaxAgeMs,
      ...(init.retryScheduleMs ? { retryScheduleMs: init.retryScheduleMs } : {}),
    });
    this.#watchdog = new SupervisorWatchdog(
      { supervisors: this.#init.supervisors, timeoutMs: this.#init.watchdogMs },
      this.#nowMs(),
    );
    this.#storage = createEstopStorage(components.db, { syncDb: components.syncDb });
  }

  // ------------------------------------------------------------ lifecycle

  async start(): Promise<void> {
    if (this.#running) return;
    const snapshot = this.#storage.load();
    this.#latch.load(snapshot.latch, snapshot.known);
    // Adapters start unstopped: a latch restored from disk (a crash right after
    // the ack) must stop its assets again before anything else runs.
    for (const { assetId, entries } of this.#latch.latched()) {
      this.#c.stopAssets([assetId], `e-stop latched before restart: ${entries[0]!.reason}`);
    }
    this.#running = true;
    await this.#c.libp2p.handle(ESTOP_PROTOCOL, (stream, connection) => {
      this.#attach(stream, connection);
    }, {
      maxInboundStreams: MAX_ESTOP_STREAMS_PER_CONNECTION,
      maxOutboundStreams: MAX_ESTOP_STREAMS_PER_CONNECTION,
      runOnLimitedConnection: true,
    });
    this.#c.libp2p.addEventListener("peer:connect", this.#onPeerConnect);
    this.#restoreOutbox(snapshot.outbox);
    // A random phase spreads the heartbeats of gateways sharing a host (or a test process).
    const phaseMs = Math.random() * this.#init.pingIntervalMs;
    this.#heartbeatTimer = setTimeout(() => {
      this.tick();
      this.#heartbeatTimer = setInterval(() => this.tick(), this.#init.pingIntervalMs);
    }, phaseMs);
    for (const peer of this.#wantedPeers()) this.#ensureStream(peer);
    this.#c.logger.info("e-stop service started", {
      latchedAssets: this.#latch.latchedAssetCount,
      undelivered: snapshot.outbox.length,
      operators: this.#operators.size,
      watchdog: this.#watchdog.enabled,
    });
  }

  async #shutdown(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearTimeout(this.#heartbeatTimer);
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#dispatchTimer);
    this.#flushOutbox();
    this.#c.libp2p.removeEventListener("peer:connect", this.#onPeerConnect);
    await this.#c.libp2p.unhandle(ESTOP_PROTOCOL);
    const closing: Promise<void>[] = [];
    for (const states of this.#streams.values()) {
      for (const state of states) {
        closing.push(
          state.stream.close({ signal: AbortSignal.timeout(500) }).catch(() => {
            state.stream.abort(new Error("e-stop service stopped"));
          }),
        );
      }
    }
    await Promise.all(closing);
    this.#streams.clear();
    for (const [id, resolve] of this.#waiters) resolve(this.#resultOf(id));
    this.#waiters.clear();
  }

  // ------------------------------------------------------------ public API

  stop(): Promise<void>;
  stop(params: { target: EstopTarget; reason: string }): Promise<EstopResult>;
  async stop(params?: { target: EstopTarget; reason: string }): Promise<void | EstopResult> {
    if (params === undefined) return await this.#shutdown();
    return await (await this.issueStop(params)).result;
  }

  async issueStop(params: { target: EstopTarget; reason: string }): Promise<EstopIssued> {
    this.#requireRunning();
    const id = newCommandId(this.#c.randomBytes);
    const hlc = this.#c.clock.now();
    const fields = { id, hlc, origin: this.#self, target: params.target, reason: params.reason };
    const frame = await this.#seal(prepareStop(fields));
    this.#count("stops_issued");
    const { record, result, owners, issuedAtMs, reports } = this.#beginIssue({
      id,
      kind: "stop",
      hlc,
      target: params.target,
      reason: params.reason,
      frame,
    });
    const local = this.#c.localAssets(params.target);
    if (local.length > 0 || owners.length === 0) {
      const stop = { id, hlc, origin: this.#self, reason: params.reason };
      const actedAtMs = this.#actOnStop(stop, local, issuedAtMs);
      record.actedAtMs = actedAtMs;
      record.assets = local;
      const ack = { peer: this.#self, latencyMs: actedAtMs - issuedAtMs, status: "ok" as const };
      record.acks.push(ack);
    }
    if (
      params.target.kind === "asset" && local.length === 0 &&
      this.#c.ownersOf(params.target.id).length === 0
    ) {
      this.#parkUnresolved(id, params.target.id, frame, hlc.wallMs, owners);
    }
    this.#emit({ type: "issued", record: { ...record } });
    // Assets of this gateway latched by its own stop: the same event as for a received one.
    if (local.length > 0) this.#emit({ type: "latched", record: { ...record } });
    this.#perform(reports);
    this.#c.logger.warn("e-stop issued", {
      id,
      target: params.target,
      reason: params.reason,
      owners: owners.length,
      localAssets: local.length,
    });
    this.#scheduleDispatch();
    return { id, hlc: formatTimestamp(hlc), result };
  }

  async reset(
    params: { stopIds: string[]; target?: EstopTarget; reason?: string },
  ): Promise<EstopResult> {
    return await (await this.issueReset(params)).result;
  }

  async issueReset(
    params: { stopIds: string[]; target?: EstopTarget; reason?: string },
  ): Promise<EstopIssued> {
    this.#requireRunning();
    if (params.stopIds.length === 0 || params.stopIds.length > MAX_RESET_STOP_IDS) {
      throw new RangeError(
        `e-stop reset names ${params.stopIds.length} stops; expected 1..${MAX_RESET_STOP_IDS}`,
      );
    }
    const id = newCommandId(this.#c.randomBytes);
    const hlc = this.#c.clock.now();
    const target: EstopTarget = params.target ?? { kind: "all" };
    const reason = params.reason ?? "reset";
    const stopIds = [...new Set(params.stopIds)];
    const frame = await this.#seal(
      prepareReset({ id, hlc, origin: this.#self, target, reason, stopIds }),
    );
    this.#count("resets_issued");
    const { record, result, issuedAtMs, reports } = this.#beginIssue({
      id,
      kind: "reset",
      hlc,
      target,
      reason,
      stopIds,
      frame,
    });
    const status = this.#actOnReset({ id, hlc, origin: this.#self, reason, stopIds }, record);
    record.acks.push({ peer: this.#self, latencyMs: this.#nowMs() - issuedAtMs, status });
    this.#emit({ type: "issued", record: { ...record } });
    this.#perform(reports);
    this.#scheduleDispatch();
    return { id, hlc: formatTimestamp(hlc), result };
  }

  /**
   * The part of issuing a stop or a reset that is the same for both: record
   * it, start waiting for acks, send it to the remote owners (first: `send`
   * only queues, so local work after this does not delay them) and keep it in
   * the outbox. Report actions are returned for the caller to run once its
   * local part is recorded.
   */
  #beginIssue(command: {
    id: string;
    kind: "stop" | "reset";
    hlc: Timestamp;
    target: EstopTarget;
    reason: string;
    stopIds?: string[];
    frame: Uint8Array;
  }) {
    const { id, kind, hlc, target, reason, stopIds, frame } = command;
    const issuedAtMs = this.#nowMs();
    const owners = this.#ownersOf(target);
    const record = this.#record({
      id,
      kind,
      direction: "issued",
      target,
      origin: this.#self,
      hlc: formatTimestamp(hlc),
      reason,
      ...(stopIds ? { stopIds } : {}),
      acks: [],
      missing: [],
      late: false,
      atMs: issuedAtMs,
    });
    const result = this.#await(id);
    const actions = this.#dispatcher.issue(
      { id, type: kind, frame, owners, hlcWallMs: hlc.wallMs },
      issuedAtMs,
      this.#links,
    );
    this.#perform(actions.filter((a) => a.type !== "report"));
    this.#queueOutbox(owners, id, kind, frame, hlc.wallMs);
    return {
      record,
      result,
      owners,
      issuedAtMs,
      reports: actions.filter((a) => a.type === "report"),
    };
  }

  isLatched(assetId: string): boolean {
    return this.#latch.isLatched(assetId);
  }

  status(): EstopStatus {
    const latched = this.#latch.latched().map(({ assetId, entries }) => {
      const since = entries.reduce((a, b) => (a.hlc.wallMs <= b.hlc.wallMs ? a : b));
      return {
        assetId,
        stopIds: entries.map((e) => e.stopId),
        since: formatTimestamp(since.hlc),
      };
    });
    const recent = [...this.#recent.values()].reverse().map((r) => structuredClone(r));
    return { latched, recent, watchdogTripped: this.#watchdog.tripped };
  }

  stats(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.#counters);
    out.latched_assets = this.#latch.latchedAssetCount;
    out.outbox_entries = this.#dispatcher.unackedCount;
    out.pending_commands = this.#dispatcher.pendingCount;
    out.live_links = this.livePeers().length;
    out.watchdog_tripped = this.#watchdog.tripped ? 1 : 0;
    return out;
  }

  onEvent(listener: (event: EstopEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  receiveGossip(bytes: Uint8Array, fromPeer?: string): void {
    if (!this.#running) return;
    this.#count("gossip_received");
    let frame: EstopFrame;
    try {
      frame = decodeFramePrefixed(bytes, false);
    } catch (err) {
      this.#count("malformed_frames");
      this.#c.logger.warn("e-stop gossip frame malformed; dropped", {
        fromPeer,
        error: (err as Error).message,
      });
      return;
    }
    if (frame.type !== "stop" && frame.type !== "reset" && frame.type !== "ack") return;
    void this.#onSigned(frame, { via: "gossip", fromPeer });
  }

  tick(): void {
    if (!this.#running) return;
    const nowMs = this.#nowMs();
    // After an event-loop stall (GC, a burst of work) the timer runs before the
    // sockets are read: silence seen now is ours, not the peers'. Judge next tick.
    const realNowMs = performance.now();
    const stalled = realNowMs - this.#lastTickRealMs > 2 * this.#init.pingIntervalMs;
    this.#lastTickRealMs = realNowMs;
    for (const [peer, states] of this.#streams) {
      for (const state of states) {
        if (!stalled && nowMs - state.lastReceivedAtMs > this.#init.linkTimeoutMs) {
          this.#c.logger.warn("e-stop stream silent; replacing it", {
            peer,
            silentMs: Math.round(nowMs - state.lastReceivedAtMs),
          });
          state.stream.abort(new Error("e-stop link timeout"));
          continue;
        }
        // The dialling side pings, the other pongs: both ends hear something every interval.
        if (state.stream.direction === "outbound") {
          this.#write(state, encodePing(++state.pingNonce));
        }
      }
    }
    for (const peer of this.#wantedPeers()) {
      if (!this.#hasOutbound(peer)) this.#ensureStream(peer);
    }
    this.#resolveParked(nowMs);
    if (!stalled) this.#onWatchdog(this.#watchdog.tick(nowMs));
    if (nowMs - this.#lastPruneAtMs > PRUNE_INTERVAL_MS) {
      this.#lastPruneAtMs = nowMs;
      this.#prune(nowMs);
    }
    this.#runDispatch();
  }

  livePeers(): string[] {
    return [...this.#streams.keys()].filter((peer) => this.#hasLink(peer)).sort();
  }

  // ------------------------------------------------------------ streams

  #wantedPeers(): Set<string> {
    const peers = new Set<string>([
      ...(this.#c.linkPeers ? this.#c.linkPeers() : this.#c.gatewaysIn({ kind: "factory" })),
      ...this.#init.regionPeers,
      ...this.#init.supervisors,
    ]);
    peers.delete(this.#self);
    return peers;
  }

  #hasOutbound(peer: string): boolean {
    for (const state of this.#streams.get(peer) ?? []) {
      if (state.stream.direction === "outbound" && state.stream.status === "open") return true;
    }
    return this.#dialing.has(peer);
  }

  #ensureStream(peer: string): void {
    if (!this.#running || peer === this.#self || this.#hasOutbound(peer)) return;
    const backoff = this.#reopen.get(peer);
    if (backoff && this.#nowMs() < backoff.notBeforeMs) return;
    const peerId = this.#peerId(peer);
    if (this.#c.libp2p.getConnections(peerId).length > 0) this.#everConnected.add(peer);
    if (!this.#everConnected.has(peer) && !this.#c.dialable?.(peer)) return;
    this.#dialing.add(peer);
    this.#c.libp2p.dialProtocol(peerId, ESTOP_PROTOCOL, {
      signal: AbortSignal.timeout(DIAL_TIMEOUT_MS),
    }).then((stream) => {
      this.#dialing.delete(peer);
      if (!this.#running) {
        stream.abort(new Error("e-stop service stopped"));
        return;
      }
      const connections = this.#c.libp2p.getConnections(peerId);
      const connection = connections.find((c) => c.streams.includes(stream)) ?? connections[0];
      if (connection === undefined) {
        // The connection closed between the dial and now (two gateways dialling each
        // other at once, one duplicate is closed): not an invariant, a failed open.
        stream.abort(new Error("e-stop stream lost its connection"));
        throw new Error("connection closed before the e-stop stream was attached");
      }
      this.#reopen.delete(peer);
      this.#attach(stream, connection);
    }).catch((err: Error) => {
      // Also catches a throw while attaching: an unhandled rejection would end the process.
      this.#dialing.delete(peer);
      this.#count("stream_open_failures");
      const failures = (this.#reopen.get(peer)?.failures ?? 0) + 1;
      const delayMs = Math.min(MAX_REOPEN_BACKOFF_MS, 50 * 2 ** (failures - 1));
      this.#reopen.set(peer, { failures, notBeforeMs: this.#nowMs() + delayMs });
      this.#c.logger.debug("e-stop stream open failed", { peer, error: err.message, failures });
    });
  }

  #attach(stream: Stream, connection: Connection): void {
    const peer = connection.remotePeer.toString();
    this.#everConnected.add(peer);
    if (!this.#running) {
      stream.abort(new Error("e-stop service not running"));
      return;
    }
    stream.maxWriteBufferLength = MAX_STREAM_WRITE_BUFFER_BYTES;
    const state: StreamState = {
      peer,
      stream,
      connection,
      decoder: new FrameDecoder(),
      lastReceivedAtMs: this.#nowMs(),
      pingNonce: 0,
    };
    let states = this.#streams.get(peer);
    if (!states) {
      states = new Set();
      this.#streams.set(peer, states);
    }
    const wasLinked = this.#hasLink(peer);
    states.add(state);
    this.#count("streams_opened");
    stream.addEventListener("message", (event) => {
      const data = event.data;
      this.#onData(state, data instanceof Uint8Array ? data : data.subarray());
    });
    stream.addEventListener("close", (event) => this.#detach(state, event.error));
    // Say hello at once: the far side's link and watchdog see us without waiting a tick.
    this.#write(state, encodePing(++state.pingNonce));
    this.#c.logger.debug("e-stop stream open", { peer, direction: stream.direction });
    if (!wasLinked) this.#perform(this.#dispatcher.linkUp(peer, this.#nowMs(), this.#links));
    if (!wasLinked) this.#resolveParked(this.#nowMs());
  }

  #detach(state: StreamState, error: Error | undefined): void {
    const states = this.#streams.get(state.peer);
    if (!states?.delete(state)) return;
    if (states.size === 0) this.#streams.delete(state.peer);
    this.#count("streams_closed");
    this.#c.logger.debug("e-stop stream closed", { peer: state.peer, error: error?.message });
    if (this.#running && this.#wantedPeers().has(state.peer)) {
      // Reopen at once; #ensureStream backs off only after failures.
      queueMicrotask(() => this.#ensureStream(state.peer));
    }
  }

  #hasLink(peer: string): boolean {
    const nowMs = this.#nowMs();
    for (const state of this.#streams.get(peer) ?? []) {
      if (
        state.stream.status === "open" && state.stream.writeStatus === "writable" &&
        nowMs - state.lastReceivedAtMs <= this.#init.linkTimeoutMs
      ) return true;
    }
    return false;
  }

  /** The stream to write to `peer` on: the most recently heard open one. */
  #bestStream(peer: string): StreamState | undefined {
    let best: StreamState | undefined;
    for (const state of this.#streams.get(peer) ?? []) {
      if (state.stream.status !== "open" || state.stream.writeStatus !== "writable") continue;
      if (!best || state.lastReceivedAtMs > best.lastReceivedAtMs) best = state;
    }
    return best;
  }

  readonly #links: LinkView = {
    // Direct sends need only a writable stream: a slow peer still gets the frame.
    hasLink: (peer) => this.#bestStream(peer) !== undefined,
    relaysFor: (peer) =>
      [...this.#streams.keys()].filter((via) =>
        via !== peer && via !== this.#self && this.#hasLink(via)
      ),
  };

  #write(state: StreamState, frame: Uint8Array): boolean {
    try {
      state.stream.send(frame);
      return true;
    } catch (err) {
      this.#c.logger.debug("e-stop stream write failed", {
        peer: state.peer,
        error: (err as Error).message,
      });
      state.stream.abort(err as Error);
      return false;
    }
  }

  #sendTo(peer: string, frame: Uint8Array): boolean {
    const state = this.#bestStream(peer);
    return state !== undefined && this.#write(state, frame);
  }

  #onData(state: StreamState, chunk: Uint8Array): void {
    let payloads: Uint8Array[];
    let frames: EstopFrame[];
    try {
      payloads = state.decoder.push(chunk);
      frames = payloads.map((payload) => decodeFrame(payload));
    } catch (err) {
      this.#onMalformed(state, err as Error);
      return;
    }
    state.lastReceivedAtMs = this.#nowMs();
    this.#onWatchdog(this.#watchdog.heard(state.peer, state.lastReceivedAtMs));
    for (const frame of frames) this.#onFrame(state, frame);
  }

  #onMalformed(state: StreamState, err: Error): void {
    if (!(err instanceof MalformedFrameError)) throw err;
    this.#count("malformed_frames");
    this.#c.logger.warn("e-stop frame malformed; dropping the connection", {
      peer: state.peer,
      error: err.message,
    });
    state.stream.abort(err);
    state.connection.abort(err);
  }

  #onFrame(state: StreamState, frame: EstopFrame): void {
    switch (frame.type) {
      case "ping":
        this.#write(state, encodePong(frame.nonce));
        return;
      case "pong":
        return;
      case "relay":
        this.#onRelay(state, frame.destination, frame.inner);
        return;
      default:
        void this.#onSigned(frame, { via: "stream", state });
    }
  }

  #onRelay(state: StreamState, destination: string, inner: StopFrame | ResetFrame | AckFrame) {
    if (destination === this.#self) {
      void this.#onSigned(inner, { via: "relay", state });
      return;
    }
    // One hop only: forward on a direct link or drop (the origin tries other paths).
    if (this.#sendTo(destination, encodeRelay(destination, inner.frameBytes))) {
      this.#count("relayed_frames");
    } else {
      this.#count("relay_undeliverable");
    }
  }

  // ------------------------------------------------------------ signed frames

  async #onSigned(frame: StopFrame | ResetFrame | AckFrame, arrival: Arrival): Promise<void> {
    const signer = frame.type === "ack" ? frame.owner : frame.origin;
    if (signer === this.#self) return; // our own frame echoed back by gossip or a relay
    // Cheap paths first (a retry storm must not cost a signature check per copy):
    // an ack nobody waits for changes nothing; a known stop id is only re-acked
    // (a forged copy of a known id cannot change what was latched).
    if (frame.type === "ack" && !this.#dispatcher.missing(frame.commandId)?.includes(signer)) {
      return;
    }
    if (frame.type === "stop" && this.#latch.known(frame.id)?.hlc !== undefined) {
      this.#count("stops_received");
      this.#count("stops_duplicate");
      await this.#ack(frame, "duplicate", 0, arrival);
      return;
    }
    let valid: boolean;
    try {
      valid = await this.#verify(signer, frame.signedBytes, frame.signature);
    } catch {
      valid = false;
    }
    if (!this.#running) return;
    if (!valid) {
      this.#count("forged_rejected");
      const fromPeer = arrival.via === "gossip" ? arrival.fromPeer ?? "gossip" : arrival.state.peer;
      this.#c.logger.warn("e-stop frame with a bad signature; ignored", {
        type: frame.type,
        signer,
        fromPeer,
      });
      this.#emit({ type: "forged", origin: signer, fromPeer });
      return;
    }
    if (frame.type === "stop") await this.#onStop(frame, arrival);
    else if (frame.type === "reset") await this.#onReset(frame, arrival);
    else this.#onAck(frame);
  }

  async #onStop(frame: StopFrame, arrival: Arrival): Promise<void> {
    this.#count("stops_received");
    const nowMs = this.#nowMs();
    const duplicate = this.#latch.known(frame.id);
    if (duplicate && duplicate.hlc !== undefined) {
      this.#count("stops_duplicate");
      await this.#ack(frame, "duplicate", 0, arrival);
      return;
    }
    this.#adoptClock(frame.hlc);
    const assets = this.#c.localAssets(frame.target);
    if (arrival.via === "gossip" && assets.length === 0 && frame.target.kind === "asset") return;
    const decision = this.#latch.applyStop(frame, assets, nowMs);
    let actedAtMs: number | undefined;
    if (decision.outcome === "latched") {
      if (assets.length > 0) {
        actedAtMs = this.#nowMs();
        this.#c.stopAssets(assets, frame.reason);
      }
      this.#count("stops_latched");
    } else if (decision.outcome === "precleared") {
      this.#count("stops_precleared");
    } else if (decision.outcome === "expired") {
      this.#count("stops_expired");
      this.#c.logger.warn("e-stop older than the replay window; refused", {
        id: frame.id,
        origin: frame.origin,
      });
    } else {
      this.#count("stops_duplicate");
    }
    const change = { added: decision.added, known: decision.known ? [decision.known] : [] };
    if (!this.#persist(change, { beforeAck: true })) {
      return; // no ack without a durable latch; the origin retries
    }
    const late = Date.now() - frame.hlc.wallMs > this.#init.lateAfterMs;
    const record = this.#record({
      id: frame.id,
      kind: "stop",
      direction: "received",
      target: frame.target,
      origin: frame.origin,
      hlc: formatTimestamp(frame.hlc),
      reason: frame.reason,
      acks: [],
      missing: [],
      late,
      atMs: nowMs,
      assets,
      status: decision.status,
      ...(actedAtMs !== undefined ? { actedAtMs } : {}),
    });
    if (decision.outcome === "latched") {
      this.#emit({ type: "latched", record: { ...record } });
      this.#c.logger.warn("e-stop latched", {
        id: frame.id,
        origin: frame.origin,
        assets,
        late,
        reason: frame.reason,
      });
    }
    await this.#ack(frame, decision.status, assets.length, arrival);
  }

  async #onReset(frame: ResetFrame, arrival: Arrival): Promise<void> {
    this.#count("resets_received");
    const record: EstopRecord = {
      id: frame.id,
      kind: "reset",
      direction: "received",
      target: frame.target,
      origin: frame.origin,
      hlc: formatTimestamp(frame.hlc),
      reason: frame.reason,
      stopIds: [...frame.stopIds],
      acks: [],
      missing: [],
      late: Date.now() - frame.hlc.wallMs > this.#init.lateAfterMs,
      atMs: this.#nowMs(),
    };
    let status: AckStatus;
    try {
      this.#c.clock.update(frame.hlc);
      status = this.#actOnReset(frame, record);
    } catch (err) {
      if (!(err instanceof ClockOffsetError)) throw err;
      // Keeping a stop latched is the safe side: refuse the reset, never the stop.
      this.#count("clock_offset_rejected");
      status = "refused-clock";
      this.#refuse(record, status);
    }
    if (status === "duplicate" && !this.#recent.has(frame.id)) this.#record(record);
    await this.#ack(frame, status, record.assets?.length ?? 0, arrival);
  }

  #onAck(frame: AckFrame): void {
    this.#adoptClock(frame.hlc);
    const outcome = this.#dispatcher.ack(frame.commandId, frame.owner, frame.status, this.#nowMs());
    if (!outcome.accepted || !outcome.record) return;
    if (outcome.first) {
      // Counted and emitted whether or not the bounded `recent` list still holds the record.
      const ack = {
        peer: frame.owner,
        latencyMs: outcome.record.latencyMs,
        status: outcome.record.status,
      };
      const record = this.#recent.get(frame.commandId);
      if (record) {
        record.acks.push(ack);
        record.missing = record.missing.filter((p) => p !== frame.owner);
        if (outcome.record.late) record.late = true;
      }
      if (outcome.record.late) this.#count("acks_late");
      this.#count(frame.commandType === "stop" ? "stops_acked" : "resets_acked");
      this.#emit({ type: "ack", id: frame.commandId, ack, late: outcome.record.late });
    }
    this.#outboxDeletes.push({ commandId: frame.commandId, peer: frame.owner });
    this.#scheduleOutboxFlush();
    this.#perform(outcome.actions);
  }

  async #ack(
    frame: StopFrame | ResetFrame,
    status: AckStatus,
    assetCount: number,
    arrival: Arrival,
  ): Promise<void> {
    // An ack says the latch is durable: wait for the disk (a no-op when commits sync inline).
    try {
      await this.#storage.durable();
    } catch (err) {
      this.#count("persist_failures");
      this.#c.logger.error("e-stop latch sync failed; not acking", {
        error: (err as Error).message,
      });
      return;
    }
    if (!this.#running) return;
    const ackFrame = await this.#seal(prepareAck({
      commandId: frame.id,
      commandType: frame.type,
      status,
      owner: this.#self,
      hlc: this.#c.clock.now(),
      assetCount: Math.min(assetCount, 0xffff),
    }));
    const origin = frame.origin;
    if (arrival.via !== "gossip" && arrival.state.peer === origin) {
      if (this.#write(arrival.state, ackFrame)) return;
    }
    if (this.#sendTo(origin, ackFrame)) return;
    if (arrival.via !== "gossip" && this.#write(arrival.state, encodeRelay(origin, ackFrame))) {
      return;
    }
    if (this.#c.publishGossip) {
      this.#count("gossip_sent");
      this.#c.publishGossip(ackFrame);
    }
  }

  // ------------------------------------------------------------ acting

  /** Local stop: adapter first, then the durable latch. Returns when the adapter was called. */
  #actOnStop(
    stop: { id: string; hlc: Timestamp; origin: string; reason: string },
    assets: string[],
    nowMs: number,
  ): number {
    const decision = this.#latch.applyStop(stop, assets, nowMs);
    assert(decision.outcome === "latched", "a fresh local stop latches");
    const actedAtMs = this.#nowMs();
    if (assets.length > 0) this.#c.stopAssets(assets, stop.reason);
    this.#count("stops_latched");
    this.#persist({ added: decision.added, known: decision.known ? [decision.known] : [] });
    return actedAtMs;
  }

  /** Applies a (verified) reset here; updates `record` and returns the ack status. */
  #actOnReset(
    reset: {
      id: string;
      hlc: Timestamp;
      origin: string;
      reason: string;
      stopIds: readonly string[];
    },
    record: EstopRecord,
  ): AckStatus {
    const fromOperator = this.#operators.has(reset.origin);
    const decision = this.#latch.applyReset(reset, fromOperator, this.#nowMs());
    record.status = decision.status;
    if (decision.outcome === "refused-not-operator") {
      this.#persist({ known: decision.known });
      this.#refuse(record, decision.status);
      return decision.status;
    }
    if (decision.outcome !== "applied") return decision.status;
    this.#count("resets_applied");
    // On a write failure the latch rows stay on disk: after a restart the assets are
    // stopped again, which is the safe side; the failure is logged and counted.
    this.#persist({ removed: decision.cleared, known: decision.known });
    record.assets = [...new Set(decision.cleared.map((e) => e.assetId))];
    if (record.direction === "received") this.#record(record);
    this.#c.logger.warn("e-stop reset applied", {
      id: reset.id,
      origin: reset.origin,
      cleared: decision.cleared.length,
      released: decision.released,
      keptConcurrent: decision.keptConcurrent,
    });
    if (decision.released.length > 0 || decision.cleared.length > 0) {
      this.#emit({
        type: "released",
        resetId: reset.id,
        assets: [...decision.released],
        cleared: [...new Set(decision.cleared.map((e) => e.stopId))],
      });
    }
    return decision.status;
  }

  #refuse(record: EstopRecord, status: AckStatus): void {
    this.#count("resets_refused");
    record.status = status;
    const refusal = this.#record({ ...record, kind: "refusal" });
    this.#c.logger.warn("e-stop reset refused", {
      id: record.id,
      origin: record.origin,
      why: status,
    });
    this.#emit({ type: "refused", record: { ...refusal } });
  }

  #onWatchdog(transition: WatchdogTransition | undefined): void {
    if (!transition) return;
    if (transition.type === "recover") {
      this.#count("watchdog_recoveries");
      this.#c.logger.warn("e-stop watchdog: supervisor heard again", {
        supervisor: transition.supervisor,
        trippedForMs: Math.round(transition.trippedForMs),
      });
      this.#emit({
        type: "watchdog-recovered",
        supervisor: transition.supervisor,
        trippedForMs: transition.trippedForMs,
      });
      return;
    }
    this.#count("watchdog_trips");
    const assets = this.#c.localAssets({ kind: "all" });
    const reason = `watchdog: no safety supervisor heard for ${
      Math.round(transition.silentForMs)
    } ms`;
    const safeState = this.#init.safeState;
    let stopId: string | undefined;
    if (safeState === "hold" && this.#c.holdAssets) {
      this.#c.holdAssets(assets, reason);
    } else {
      stopId = newCommandId(this.#c.randomBytes);
      const hlc = this.#c.clock.now();
      const nowMs = this.#nowMs();
      const actedAtMs = this.#actOnStop(
        { id: stopId, hlc, origin: this.#self, reason },
        assets,
        nowMs,
      );
      this.#record({
        id: stopId,
        kind: "watchdog",
        direction: "issued",
        target: { kind: "all" },
        origin: this.#self,
        hlc: formatTimestamp(hlc),
        reason,
        acks: [],
        missing: [],
        late: false,
        atMs: nowMs,
        actedAtMs,
        assets,
      });
    }
    this.#c.logger.error("e-stop watchdog tripped: assets put in their safe state", {
      safeState,
      assets,
      silentForMs: Math.round(transition.silentForMs),
      lastHeard: transition.lastHeard,
    });
    this.#emit({
      type: "watchdog-tripped",
      safeState,
      assets,
      silentForMs: transition.silentForMs,
      ...(stopId ? { stopId } : {}),
    });
  }

  // ------------------------------------------------------------ dispatch

  #ownersOf(target: EstopTarget): string[] {
    let owners: string[];
    if (target.kind === "asset") {
      owners = this.#c.ownersOf(target.id);
      // Unknown owner: fail safe, ask every gateway of the factory (each acks for what it owns).
      if (owners.length === 0) owners = this.#c.gatewaysIn({ kind: "factory" });
    } else {
      owners = this.#c.gatewaysIn(target);
    }
    return [...new Set(owners)].filter((peer) => peer !== this.#self);
  }

  #parkUnresolved(
    id: string,
    assetId: string,
    frame: Uint8Array,
    hlcWallMs: number,
    asked: readonly string[],
  ): void {
    // Bounded: beyond the maximum the oldest parked stop is given up, loudly.
    while (this.#unresolved.size >= MAX_PENDING_COMMANDS) {
      const [oldId, old] = this.#unresolved.entries().next().value!;
      this.#giveUpParked(oldId, old.assetId, "overflow");
    }
    this.#unresolved.set(id, { assetId, frame, hlcWallMs, asked });
    this.#c.logger.warn("e-stop target's owner unknown; delivering as soon as it is known", {
      id,
      assetId,
      askedMeanwhile: asked.length,
    });
    // Last resort meanwhile: only the owner acts on an asset stop seen on gossip.
    if (this.#c.publishGossip) {
      this.#count("gossip_sent");
      this.#c.publishGossip(frame);
    }
  }

  /** Sends parked stops to owners the directory has learned since. */
  #resolveParked(nowMs: number): void {
    for (const [id, parked] of this.#unresolved) {
      if (nowMs - parked.hlcWallMs > this.#init.commandMaxAgeMs) {
        this.#giveUpParked(id, parked.assetId, "window");
        continue;
      }
      const known = this.#c.ownersOf(parked.assetId);
      if (known.length === 0) continue;
      this.#unresolved.delete(id);
      const owners = known.filter((owner) => owner !== this.#self && !parked.asked.includes(owner));
      if (owners.length === 0) continue;
      this.#c.logger.info("e-stop target's owner now known; sending", {
        id,
        assetId: parked.assetId,
        owners,
      });
      const record = this.#recent.get(id);
      for (const owner of owners) {
        if (record && !record.missing.includes(owner)) record.missing.push(owner);
      }
      this.#perform(this.#dispatcher.addOwners(
        { id, type: "stop", frame: parked.frame, owners, hlcWallMs: parked.hlcWallMs },
        nowMs,
        this.#links,
      ));
      this.#queueOutbox(owners, id, "stop", parked.frame, parked.hlcWallMs);
      this.#scheduleDispatch();
    }
  }

  #giveUpParked(id: string, assetId: string, why: "window" | "overflow"): void {
    this.#unresolved.delete(id);
    this.#count(why === "overflow" ? "outbox_overflow" : "undeliverable_dropped");
    this.#c.logger.error("e-stop given up: its target's owner never became known", {
      id,
      assetId,
      why,
    });
    this.#emit({ type: "undeliverable", id, peer: `owner of ${assetId}`, why });
  }

  #perform(actions: readonly DispatchAction[]): void {
    for (const action of actions) {
      switch (action.type) {
        case "send":
          this.#sendTo(action.peer, action.frame);
          break;
        case "relay": {
          this.#count("retries_sent");
          this.#sendTo(action.via, encodeRelay(action.destination, action.frame));
          break;
        }
        case "gossip":
          if (this.#c.publishGossip) {
            this.#count("gossip_sent");
            this.#c.publishGossip(action.frame);
          }
          break;
        case "report":
          this.#onReport(action.id, action.missing);
          break;
        case "expire":
          this.#count(action.why === "overflow" ? "outbox_overflow" : "undeliverable_dropped");
          this.#c.logger.error("e-stop command given up for an owner", { ...action });
          this.#outboxDeletes.push({ commandId: action.id, peer: action.peer });
          this.#scheduleOutboxFlush();
          this.#emit({ type: "undeliverable", id: action.id, peer: action.peer, why: action.why });
          break;
      }
    }
  }

  #onReport(id: string, missing: readonly string[]): void {
    const record = this.#recent.get(id);
    if (record) record.missing = [...missing];
    const result = this.#resultOf(id);
    if (missing.length > 0) {
      this.#c.logger.error("e-stop not acked by every owner before the deadline", {
        id,
        missing,
      });
    }
    this.#emit({ type: "report", id, result });
    const resolve = this.#waiters.get(id);
    this.#waiters.delete(id);
    resolve?.(result);
  }

  #resultOf(id: string): EstopResult {
    const record = this.#recent.get(id);
    return {
      id,
      hlc: record?.hlc ?? "",
      acked: record ? record.acks.map((a) => ({ ...a })) : [],
      missing: record?.missing ?? this.#dispatcher.missing(id) ?? [],
    };
  }

  #await(id: string): Promise<EstopResult> {
    return new Promise((resolve) => this.#waiters.set(id, resolve));
  }

  #runDispatch(): void {
    if (!this.#running) return;
    const retries = this.#dispatcher.tick(this.#nowMs(), this.#links);
    this.#count("retries_sent", retries.filter((a) => a.type === "send").length);
    this.#perform(retries);
    this.#scheduleDispatch();
  }

  #scheduleDispatch(): void {
    const wakeAtMs = this.#dispatcher.nextWakeAtMs();
    if (wakeAtMs === undefined || !this.#running) return;
    if (this.#dispatchTimer !== undefined && wakeAtMs >= this.#dispatchWakeAtMs) return;
    clearTimeout(this.#dispatchTimer);
    this.#dispatchWakeAtMs = wakeAtMs;
    this.#dispatchTimer = setTimeout(() => {
      this.#dispatchTimer = undefined;
      this.#dispatchWakeAtMs = Infinity;
      this.#runDispatch();
    }, Math.max(0, wakeAtMs - this.#nowMs()));
  }

  #restoreOutbox(rows: readonly OutboxRow[]): void {
    const byCommand = new Map<string, OutboxRow[]>();
    for (const row of rows) {
      const list = byCommand.get(row.commandId) ?? [];
      list.push(row);
      byCommand.set(row.commandId, list);
    }
    const nowMs = this.#nowMs();
    for (const [id, list] of byCommand) {
      const first = list[0]!;
      let frame: EstopFrame;
      try {
        frame = decodeFramePrefixed(first.frame, false);
      } catch (err) {
        this.#c.logger.error("e-stop outbox row unreadable; skipped", {
          id,
          error: (err as Error).message,
        });
        continue;
      }
      if (frame.type !== "stop" && frame.type !== "reset") continue;
      this.#record({
        id,
        kind: frame.type,
        direction: "issued",
        target: frame.target,
        origin: frame.origin,
        hlc: formatTimestamp(frame.hlc),
        reason: frame.reason,
        acks: [],
        missing: list.map((r) => r.peer),
        late: true,
        atMs: first.hlcWallMs,
        ...(frame.type === "reset" ? { stopIds: [...frame.stopIds] } : {}),
      });
      this.#perform(this.#dispatcher.issue(
        {
          id,
          type: first.type,
          frame: first.frame,
          owners: list.map((r) => r.peer),
          hlcWallMs: first.hlcWallMs,
        },
        nowMs,
        this.#links,
        first.hlcWallMs,
      ));
    }
  }

  #queueOutbox(
    owners: readonly string[],
    commandId: string,
    type: "stop" | "reset",
    frame: Uint8Array,
    hlcWallMs: number,
  ): void {
    for (const peer of owners) {
      this.#outboxInserts.push({ commandId, peer, type, frame, hlcWallMs });
    }
    this.#scheduleOutboxFlush();
  }

  /**
   * Outbox writes are batched a few ms after the sends: a synchronous commit
   * per stop would block the event loop before the frames reach the socket.
   */
  #scheduleOutboxFlush(): void {
    if (this.#outboxTimer !== undefined) return;
    this.#outboxTimer = setTimeout(() => {
      this.#outboxTimer = undefined;
      this.#flushOutbox();
    }, OUTBOX_FLUSH_DELAY_MS);
  }

  #flushOutbox(): void {
    clearTimeout(this.#outboxTimer);
    this.#outboxTimer = undefined;
    const deleted = new Set(this.#outboxDeletes.map((d) => `${d.commandId}/${d.peer}`));
    // An insert acked before the flush never needs to touch the disk.
    const inserts = this.#outboxInserts.filter((r) => !deleted.has(`${r.commandId}/${r.peer}`));
    const inserted = new Set(this.#outboxInserts.map((r) => `${r.commandId}/${r.peer}`));
    const deletes = this.#outboxDeletes.filter((d) => !inserted.has(`${d.commandId}/${d.peer}`));
    this.#outboxInserts = [];
    this.#outboxDeletes = [];
    try {
      this.#storage.updateOutbox(inserts, deletes);
    } catch (err) {
      this.#count("persist_failures");
      this.#c.logger.error("e-stop outbox write failed", { error: (err as Error).message });
    }
  }

  #prune(nowMs: number): void {
    const forgotten = this.#latch.prune(nowMs);
    try {
      this.#storage.forget(forgotten);
    } catch (err) {
      this.#count("persist_failures");
      this.#c.logger.error("e-stop prune failed", { error: (err as Error).message });
    }
  }

  // ------------------------------------------------------------ helpers

  #persist(
    change: {
      added?: readonly LatchEntry[];
      removed?: readonly LatchEntry[];
      known?: readonly KnownCommand[];
    },
    options: { beforeAck?: boolean } = {},
  ): boolean {
    if (!change.added?.length && !change.removed?.length && !change.known?.length) return true;
    try {
      this.#storage.commit(change, options);
      return true;
    } catch (err) {
      // The asset is already stopped (adapter first); only durability failed.
      this.#count("persist_failures");
      this.#c.logger.error("e-stop latch write failed; not acking", {
        error: (err as Error).message,
      });
      return false;
    }
  }

  #adoptClock(hlc: Timestamp): void {
    try {
      this.#c.clock.update(hlc);
    } catch (err) {
      if (!(err instanceof ClockOffsetError)) throw err;
      // A stop acts regardless of clocks (fail-safe); the skew is only counted.
      this.#count("clock_offset_rejected");
    }
  }

  async #seal(unsigned: UnsignedFrame): Promise<Uint8Array> {
    const signature = this.#c.privateKey.sign(unsigned.signedBytes);
    return sealFrame(unsigned, signature instanceof Uint8Array ? signature : await signature);
  }

  #verify(peer: string, data: Uint8Array, signature: Uint8Array): boolean | Promise<boolean> {
    if (this.#c.verify) return this.#c.verify(peer, data, signature);
    const publicKey = this.#peerId(peer).publicKey;
    if (publicKey === undefined) throw new EstopSignatureError(`peer ${peer} has no embedded key`);
    return publicKey.verify(data, signature);
  }

  #peerId(peer: string): PeerId {
    let peerId = this.#peerIds.get(peer);
    if (peerId === undefined) {
      peerId = peerIdFromString(peer);
      if (this.#peerIds.size >= MAX_CACHED_PEER_IDS) this.#peerIds.clear();
      this.#peerIds.set(peer, peerId);
    }
    return peerId;
  }

  #record(record: EstopRecord): EstopRecord {
    const key = record.kind === "refusal" ? `refusal:${record.id}` : record.id;
    this.#recent.delete(key);
    this.#recent.set(key, record);
    // Bounded: drops the oldest beyond MAX_RECENT_EVENTS.
    while (this.#recent.size > MAX_RECENT_EVENTS) {
      this.#recent.delete(this.#recent.keys().next().value as string);
    }
    return record;
  }

  #emit(event: EstopEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (err) {
        this.#c.logger.error("e-stop event listener threw", { error: (err as Error).message });
      }
    }
  }

  #count(name: Counter, by = 1): void {
    this.#counters.set(name, (this.#counters.get(name) ?? 0) + by);
  }

  #requireRunning(): void {
    if (!this.#running) throw new Error("e-stop service is not started");
  }
}
