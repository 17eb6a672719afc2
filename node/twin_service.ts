/**
 * The gateway's twin service: holds the twins of the factories it
 * replicates, takes operator commands and the owner's measured state,
 * publishes local changes on gossipsub every {@link PUBLISH_INTERVAL_MS},
 * runs a sync session on every new connection (and periodically) to fetch
 * what gossip missed, persists to SQLite, and hands commands for owned assets
 * to the adapter via {@link TwinService.onCommand}.
 *
 * @example
 * ```ts ignore
 * import { createTwinService } from "./twin_service.ts";
 * const twins = createTwinService({ replicate: ["plant-a"] }, {
 *   libp2p, db, clock, logger, factory: "plant-a", gatewayName: "gw-1",
 *   ownedAssets: [{ id: "arm-1", kind: "welding-arm" }],
 * });
 * twins.onCommand((assetId, command) => adapter.apply(assetId, command));
 * await twins.start();
 * await twins.command("arm-1", { setpoints: { weldCurrentA: 180 } });
 * ```
 */
import type { DatabaseSync } from "node:sqlite";
import { clearImmediate, setImmediate } from "node:timers";
import * as Automerge from "@automerge/automerge";
import type { Connection, PeerId, Stream } from "@libp2p/interface";
import { assert } from "../protocols/assert.ts";
import { formatTimestamp, type HybridLogicalClock } from "../protocols/hlc.ts";
import {
  decodeGossip,
  encodeGossip,
  type GossipDoc,
  MAX_GOSSIP_CHANGES_PER_DOC,
  MAX_GOSSIP_MESSAGE_BYTES,
  parseTwinDocId,
  TWIN_GOSSIP_VERSION,
  TWIN_SYNC_PROTOCOL,
  TwinCodecError,
} from "../protocols/twin_codec.ts";
import type { ResolvedTwin, TwinHistoryEntry, TwinSyncState } from "../protocols/twin_doc.ts";
import {
  type MeasuredUpdate,
  modelFor,
  parseCommand,
  parseMeasured,
  type TwinValue,
} from "../protocols/twin_model.ts";
import {
  type FlushedChanges,
  TwinReplica,
  type TwinReplicaStats,
  UnknownTwinError,
} from "../protocols/twin_replica.ts";
import {
  runTwinSyncSession,
  TwinSyncSession,
  type TwinSyncTarget,
} from "../protocols/twin_sync.ts";
import { COMPACT_AFTER_CHUNKS, type TwinChunk, TwinStorage } from "./twin_storage.ts";
import { checkpointWal } from "./storage.ts";
import { TwinWatchers } from "./twin_watch.ts";

export { UnknownTwinError } from "../protocols/twin_replica.ts";
export { TwinValidationError } from "../protocols/twin_model.ts";

/**
 * How often local writes are committed, gossiped and persisted. 25 ms keeps
 * write→visible well under the 50 ms an operator notices, while a 10 Hz
 * joint stream plus bursts of commands still collapse into one Automerge
 * change (~150 µs each) and one gossip message per interval instead of one
 * per write; shorter intervals bring back per-write overhead on 2 shared cores.
 */
export const PUBLISH_INTERVAL_MS = 25;
/**
 * A command is published on demand rather than at the next interval tick:
 * at the end of the event-loop turn that took it (commands that arrived
 * together still land in one change), and never sooner than this after the
 * previous tick (so a write storm cannot turn into one Automerge change per
 * write). Not a 1 ms timer, as before: Deno fires timers ~1 ms late (2.1 ms
 * for both 0 and 1 ms), which was ~2 ms of every write's latency; with
 * `setImmediate` a POST at low load answered in 5.9 ms instead of 8.4 (p50),
 * and `bench twins` p99 fell in three of three interleaved pairs at the
 * same CPU per write (twenty-first session, README).
 */
export const MIN_TICK_GAP_MS = 5;
/**
 * The WAL is copied into the database (a checkpoint: ~13 µs per page on a
 * slow host, 15 ms for SQLite's default 1,000 pages) at most this often, in
 * a task of its own after a tick that stored, rather than by SQLite inside
 * whichever commit fills the WAL, where it held up the commands that tick
 * acknowledges. Under `bench twins` a gateway writes ~1 MB of WAL per second.
 */
export const WAL_CHECKPOINT_INTERVAL_MS = 2_000;
/**
 * How long `POST /twins/:id/commands` waits for its command to be stored
 * before answering 503: a store normally takes a millisecond or two, so
 * this only ends waits on a stalled or failing disk.
 */
export const STORE_WAIT_MS = 5_000;
/**
 * Anti-entropy: one sync session with a random connected peer this often.
 * Connection-time sync covers partitions; this covers gossip lost while
 * connected (a dropped message on a healthy link) within half a minute.
 */
export const ANTI_ENTROPY_INTERVAL_MS = 30_000;
/**
 * Gossip changes parked for a missing dependency are usually waiting for
 * another writer's message still in flight (gossip does not order messages
 * of different publishers) and lands within milliseconds. A sync session is
 * started only if something is still parked this long after, rather than
 * one per reordered message.
 */
export const PARKED_GRACE_MS = 250;
/**
 * A catch-up session is forwarded to the other peers this long after it
 * ends, one coalesced session per peer. Most of those peers are catching up
 * on their own links meanwhile (a mesh starting, a factory rejoining), and
 * the heads digests in the hello then skip every twin they already have, so
 * a forward costs a hello instead of a second copy of the backlog.
 */
export const FORWARD_DELAY_MS = 1_000;
/**
 * The catch-up sessions of new connections start once no new connection has
 * opened for this long (at most {@link CONNECT_SYNC_MAX_WAIT_MS} after the
 * first). Identify, the e-stop links and gossip subscriptions come up in the
 * first moments of a connection, and when a whole factory starts at once
 * connections keep opening for seconds: catch-up work in between holds all of
 * that up. Measured (`bench foundation`, 10 gateways on 2 cores, all ready →
 * fully linked): 2.9-3.4 s with sessions 1 s after each connection, 2.1-2.2
 * s with 2 s of quiet, 1.7-1.9 s with this. Gossip flows meanwhile; a single
 * healed link is caught up 3 s later.
 */
export const CONNECT_SYNC_DELAY_MS = 3_000;
/** See {@link CONNECT_SYNC_DELAY_MS}. */
export const CONNECT_SYNC_MAX_WAIT_MS = 8_000;
/** Concurrent inbound sync sessions per connection: a reconnect may overlap the old one. */
export const MAX_INBOUND_SYNC_STREAMS = 2;
/** Concurrent outbound sync sessions per connection. */
export const MAX_OUTBOUND_SYNC_STREAMS = 2;
/** Peers whose per-twin sync states are remembered between sessions (LRU). */
export const MAX_REMEMBERED_SYNC_PEERS = 64;

/** Gossip topic of a factory's twins. */
export function twinTopic(factory: string): string {
  return `twinmesh/${factory}/twins/${TWIN_GOSSIP_VERSION}`;
}

/** A command was applied and published but is not (yet) stored on this gateway's disk. */
export class TwinNotStoredError extends Error {
  override name = "TwinNotStoredError";
}

/** `writeMeasured` on an asset this gateway does not own. */
export class TwinOwnershipError extends Error {
  override name = "TwinOwnershipError";
  constructor(readonly assetId: string) {
    super(`twin "${assetId}": measured state is written only by its owning gateway`);
  }
}

/** A pubsub message as gossipsub delivers it (the fields used here). */
export interface TwinPubSubMessage {
  readonly type: "signed" | "unsigned";
  readonly topic: string;
  readonly data: Uint8Array;
  readonly from?: PeerId;
}

/** The part of gossipsub the service uses (`libp2p.services.pubsub`). */
export interface TwinPubSub {
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  publish(topic: string, data: Uint8Array): Promise<unknown>;
  addEventListener(
    type: "message",
    listener: (event: CustomEvent<TwinPubSubMessage>) => void,
  ): void;
  removeEventListener(
    type: "message",
    listener: (event: CustomEvent<TwinPubSubMessage>) => void,
  ): void;
}

/** The part of a libp2p node the service uses. */
export interface TwinLibp2p {
  readonly peerId: PeerId;
  readonly services: { readonly pubsub: TwinPubSub };
  handle(
    protocol: string,
    handler: (stream: Stream, connection: Connection) => void | Promise<void>,
    options?: { maxInboundStreams?: number; maxOutboundStreams?: number },
  ): Promise<void>;
  unhandle(protocol: string): Promise<void> | void;
  dialProtocol(peer: PeerId, protocol: string, options?: { signal?: AbortSignal }): Promise<Stream>;
  getPeers(): PeerId[];
  addEventListener(
    type: "peer:connect" | "peer:disconnect",
    listener: (event: CustomEvent<PeerId>) => void,
  ): void;
  removeEventListener(
    type: "peer:connect" | "peer:disconnect",
    listener: (event: CustomEvent<PeerId>) => void,
  ): void;
}

/** Structured logger (scoped by the caller). */
export interface TwinLogger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** An asset attached to this gateway. */
export interface OwnedAsset {
  readonly id: string;
  readonly kind: string;
}

/** Options; all optional. */
export interface TwinServiceInit {
  /** Factories to replicate; default: own factory. */
  replicate?: readonly string[];
  /** See {@link PUBLISH_INTERVAL_MS}. */
  publishIntervalMs?: number;
  /** See {@link ANTI_ENTROPY_INTERVAL_MS}; 0 disables. */
  antiEntropyIntervalMs?: number;
  /** See {@link CONNECT_SYNC_DELAY_MS}. */
  connectSyncDelayMs?: number;
  /** See {@link COMPACT_AFTER_CHUNKS}. */
  compactAfterChunks?: number;
  /** See {@link WAL_CHECKPOINT_INTERVAL_MS}. */
  walCheckpointIntervalMs?: number;
  /** History (ops beyond live keys) after which an owned twin starts a new epoch (REBASE_AFTER_OPS in twin_replica.ts). */
  rebaseAfterOps?: number;
}

/** What the service needs from the gateway. */
export interface TwinServiceComponents {
  readonly libp2p: TwinLibp2p;
  readonly db: DatabaseSync;
  readonly clock: HybridLogicalClock;
  readonly logger: TwinLogger;
  readonly factory: string;
  readonly gatewayName: string;
  readonly ownedAssets: readonly OwnedAsset[];
  /** Randomness for peer choice; default `Math.random`. */
  readonly random?: () => number;
  /**
   * True for a peer found by LAN discovery: every gateway of the factory
   * finds it the same way and links to it directly, so what it sends is
   * forwarded only across bridges (see #forward). Without it every
   * catch-up is forwarded to every peer.
   */
  readonly foundOnLan?: (peerId: string) => boolean;
}

/** A row of {@link TwinService.list}. */
export interface TwinSummary {
  readonly id: string;
  readonly kind: string;
  /** Gateway name of the owner. */
  readonly owner: string;
  /** HLC (text form, sortable) of the newest field, or null. */
  readonly lastHlc: string | null;
}

/** {@link TwinService.get}: current state with per-field HLC. */
export interface TwinView extends TwinSummary {
  readonly factory: string;
  readonly fields: Readonly<Record<string, { readonly value: TwinValue; readonly hlc: string }>>;
}

/** A command for an owned asset, for the adapter. */
export interface TwinCommand {
  /** Setpoints whose value changed, with the new value (units as in the model). */
  readonly setpoints: Readonly<Record<string, number>>;
  /** The full mode set after the change. */
  readonly modes: readonly string[];
  readonly modesAdded: readonly string[];
  readonly modesRemoved: readonly string[];
  /** HLC of the newest command field. */
  readonly hlc: string;
}

/** The service API the gateway (HTTP layer, telemetry loop, adapter) uses. */
export interface TwinService {
  start(): Promise<void>;
  stop(): Promise<void>;
  list(): TwinSummary[];
  /** How many twins {@link TwinService.list} shows, without resolving them. */
  count(): number;
  get(id: string): TwinView;
  /**
   * Differs whenever the twin may have changed since it was read, and from
   * any other service's (a restarted gateway's); throws UnknownTwinError.
   */
  version(id: string): string;
  /** Reads waiting for a twin to change (`GET /twins/:id` with `Prefer: wait`). */
  readonly watchers: TwinWatchers;
  /**
   * Applies a command and publishes it at once. The write is in memory only
   * until the next store: {@link TwinService.whenStored} says when it is on disk.
   */
  command(id: string, body: unknown): { hlc: string };
  /**
   * Resolves once every command written so far is committed to SQLite (it
   * then survives a crash of the process), hurrying a store if one is owed.
   * Rejects with {@link TwinNotStoredError} if the store fails, the service
   * stops first, or it takes longer than `timeoutMs`.
   */
  whenStored(timeoutMs?: number): Promise<void>;
  history(id: string, limit: number): TwinHistoryEntry[];
  writeMeasured(id: string, update: MeasuredUpdate): { hlc: string };
  onCommand(callback: (assetId: string, command: TwinCommand) => void): () => void;
  /** Flat counters and gauges, for Prometheus export. */
  stats(): TwinServiceStats;
  /** Commit, publish and persist now (tests; shutdown does this too). */
  flushNow(): Promise<void>;
  /**
   * Runs one sync session with `peer` now (after the running one, if any);
   * resolves when it ends (errors are counted). `scope` limits it to those
   * documents, named by wire id (`twinDocId`: the asset id in epoch 0).
   */
  syncWith(peer: PeerId, scope?: ReadonlySet<string>): Promise<void>;
}

/** Flat counters (monotonic) and gauges of the service; every value is a number. */
export type TwinServiceStats = TwinReplicaStats & ServiceCounters & {
  twins: number;
  twins_owned: number;
  parked_changes: number;
  sync_sessions_active: number;
  /** `GET /twins/:id` reads holding for a change (`Prefer: wait`). */
  reads_waiting: number;
  hlc_clock_rejected_remote: number;
};

/** Service-level counters (see {@link TwinServiceStats}). */
export type ServiceCounters = {
  gossip_published: number;
  gossip_publish_errors: number;
  gossip_received: number;
  gossip_skipped_oversized_change: number;
  dropped_malformed_gossip: number;
  dropped_oversized_gossip: number;
  dropped_wrong_topic: number;
  sync_sessions: number;
  sync_sessions_inbound: number;
  sync_sessions_failed: number;
  /** Sessions asked for, by reason (a request while one runs queues one more at most). */
  sync_wanted_connect: number;
  sync_wanted_gap: number;
  sync_wanted_forward: number;
  sync_wanted_anti_entropy: number;
  sync_protocol_errors: number;
  sync_bytes_sent: number;
  sync_bytes_received: number;
  persisted_chunks: number;
  compactions: number;
  commands_delivered: number;
  command_callback_errors: number;
  tick_errors: number;
  compaction_errors: number;
  /** WAL checkpoints run, the frames they copied, and those that failed. */
  wal_checkpoints: number;
  wal_checkpoint_frames: number;
  wal_checkpoint_errors: number;
};

/** Creates the service; nothing happens until `start()`. */
export function createTwinService(
  init: TwinServiceInit,
  components: TwinServiceComponents,
): TwinService {
  return new DefaultTwinService(init, components);
}

/** Why a sync session was started (see the `sync_wanted_*` counters). */
type SyncReason = "connect" | "gap" | "forward" | "anti_entropy";

/** What one sync session brought in. */
interface SessionFindings {
  changed: Set<string>;
  created: Set<string>;
}

interface StoreWaiter {
  upTo: number;
  resolve(): void;
  reject(error: Error): void;
}

interface CommandView {
  setpoints: Map<string, number>;
  modes: Set<string>;
}

class DefaultTwinService implements TwinService {
  readonly watchers = new TwinWatchers();
  /** Names this service in {@link version}: versions start over with every service. */
  readonly #versionTag = crypto.randomUUID().slice(0, 8);
  #init: Required<Omit<TwinServiceInit, "replicate" | "rebaseAfterOps">>;
  #components: TwinServiceComponents;
  #replica: TwinReplica;
  #storage: TwinStorage | undefined;
  #owned: Map<string, OwnedAsset>;
  #topics: Map<string, string>;
  #counters: ServiceCounters = {
    gossip_published: 0,
    gossip_publish_errors: 0,
    gossip_received: 0,
    gossip_skipped_oversized_change: 0,
    dropped_malformed_gossip: 0,
    dropped_oversized_gossip: 0,
    dropped_wrong_topic: 0,
    sync_sessions: 0,
    sync_sessions_inbound: 0,
    sync_sessions_failed: 0,
    sync_wanted_connect: 0,
    sync_wanted_gap: 0,
    sync_wanted_forward: 0,
    sync_wanted_anti_entropy: 0,
    sync_protocol_errors: 0,
    sync_bytes_sent: 0,
    sync_bytes_received: 0,
    persisted_chunks: 0,
    compactions: 0,
    commands_delivered: 0,
    command_callback_errors: 0,
    tick_errors: 0,
    compaction_errors: 0,
    wal_checkpoints: 0,
    wal_checkpoint_frames: 0,
    wal_checkpoint_errors: 0,
  };
  #callbacks = new Set<(assetId: string, command: TwinCommand) => void>();
  #commandViews = new Map<string, CommandView>();
  #syncStates = new Map<string, Map<string, TwinSyncState>>();
  #syncing = new Map<string, Promise<void>>();
  /** Peers with a completed session since their connection opened (see #forward). */
  #syncedSinceConnect = new Set<string>();
  /** Per peer, the twins the next session must cover ("all" unless only gaps are wanted). */
  #scopes = new Map<string, Set<string> | "all">();
  /** Peers asked for a sync while one was running: it may be past its last round, so run again. */
  #syncAgain = new Set<string>();
  #inbound = new Set<Promise<unknown>>();
  #timers: ReturnType<typeof setInterval>[] = [];
  #ticking: Promise<void> | undefined;
  #tickAgain = false;
  /** Cancels the tick #requestTick scheduled, while one is scheduled. */
  #soon: (() => void) | undefined;
  #parkedCheck: ReturnType<typeof setTimeout> | undefined;
  #forwardTimer: ReturnType<typeof setTimeout> | undefined;
  /** Twins past their chunk limit, compacted one per task (see #compactNext). */
  #compactDue = new Set<string>();
  #compactTimer: ReturnType<typeof setTimeout> | undefined;
  #checkpointTimer: ReturnType<typeof setTimeout> | undefined;
  #checkpointedAtMs = performance.now();
  /**
   * Twins in a new epoch: their next store must be a snapshot, before any
   * chunk of theirs (the stored chunks are of the old epoch's document).
   */
  #snapshotOwed = new Set<string>();
  /**
   * Chunks for the next append: ones a failed append did not store, and ones
   * a compaction took before its save(). Each chunk builds on the twin's
   * previous one, so they go first into the next append: a gap would make
   * the twin unloadable after a restart.
   */
  #unstored: TwinChunk[] = [];
  /** Peers whose catch-up waits for connections to settle (see CONNECT_SYNC_DELAY_MS). */
  #connectPending = new Map<string, PeerId>();
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #connectFirstAtMs = 0;
  /** Peers whose catch-up sessions are waiting to be forwarded (see #forward). */
  #forwardSources = new Set<string>();
  #lastTickAtMs = 0;
  /** Set by every interval tick: the next tick stores (command ticks in between do not). */
  #storeDue = false;
  /** Commands written so far, and how many of them the last successful store covered. */
  #commandsWritten = 0;
  #commandsStored = 0;
  /** Callers of whenStored(), each waiting for the store covering its `upTo` commands. */
  #storeWaiters: StoreWaiter[] = [];
  #abort = new AbortController();
  #started = false;

  constructor(init: TwinServiceInit, components: TwinServiceComponents) {
    this.#components = components;
    this.#init = {
      publishIntervalMs: init.publishIntervalMs ?? PUBLISH_INTERVAL_MS,
      antiEntropyIntervalMs: init.antiEntropyIntervalMs ?? ANTI_ENTROPY_INTERVAL_MS,
      connectSyncDelayMs: init.connectSyncDelayMs ?? CONNECT_SYNC_DELAY_MS,
      compactAfterChunks: init.compactAfterChunks ?? COMPACT_AFTER_CHUNKS,
      walCheckpointIntervalMs: init.walCheckpointIntervalMs ?? WAL_CHECKPOINT_INTERVAL_MS,
    };
    const replicate = init.replicate ?? [components.factory];
    this.#replica = new TwinReplica({
      replicate,
      ...(init.rebaseAfterOps ? { rebaseAfterOps: init.rebaseAfterOps } : {}),
      onChanged: (assetId) => this.watchers.changed(assetId),
    }, components);
    this.#owned = new Map(components.ownedAssets.map((asset) => [asset.id, asset]));
    this.#topics = new Map(this.#replica.factories.map((f) => [twinTopic(f), f]));
  }

  async start(): Promise<void> {
    assert(!this.#started, "the twin service starts once");
    this.#started = true;
    const { libp2p, logger } = this.#components;
    this.#storage = new TwinStorage(
      this.#components.db,
      this.#components.random ? { random: this.#components.random } : {},
    );
    for (const [assetId, chunks] of this.#storage.loadAll()) this.#replica.load(assetId, chunks);
    for (const asset of this.#owned.values()) {
      modelFor(asset.kind);
      this.#replica.create(asset.id, asset.kind);
      this.#commandViews.set(asset.id, commandView(this.#replica.state(asset.id)));
    }
    libp2p.services.pubsub.addEventListener("message", this.#onGossip);
    for (const topic of this.#topics.keys()) libp2p.services.pubsub.subscribe(topic);
    await libp2p.handle(TWIN_SYNC_PROTOCOL, this.#onSyncStream, {
      maxInboundStreams: MAX_INBOUND_SYNC_STREAMS,
      maxOutboundStreams: MAX_OUTBOUND_SYNC_STREAMS,
    });
    libp2p.addEventListener("peer:connect", this.#onPeerConnect);
    libp2p.addEventListener("peer:disconnect", this.#onPeerDisconnect);
    this.#timers.push(setInterval(() => {
      this.#storeDue = true; // kept until a tick stores, even if this one is skipped
      this.#scheduleTick();
    }, this.#init.publishIntervalMs));
    if (this.#init.antiEntropyIntervalMs > 0) {
      this.#timers.push(setInterval(() => this.#antiEntropy(), this.#init.antiEntropyIntervalMs));
    }
    logger.info("twin service started", {
      twins: this.#replica.ids().length,
      owned: this.#owned.size,
      replicate: this.#replica.factories,
    });
    await this.flushNow();
  }

  async stop(): Promise<void> {
    if (!this.#started) return;
    this.#started = false;
    const { libp2p } = this.#components;
    for (const timer of this.#timers) clearInterval(timer);
    this.#timers = [];
    this.#soon?.();
    this.#soon = undefined;
    clearTimeout(this.#parkedCheck);
    clearTimeout(this.#forwardTimer);
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#compactTimer);
    this.#compactTimer = undefined;
    clearTimeout(this.#checkpointTimer);
    this.#checkpointTimer = undefined;
    this.#connectPending.clear();
    this.#parkedCheck = undefined;
    libp2p.removeEventListener("peer:connect", this.#onPeerConnect);
    libp2p.removeEventListener("peer:disconnect", this.#onPeerDisconnect);
    libp2p.services.pubsub.removeEventListener("message", this.#onGossip);
    for (const topic of this.#topics.keys()) libp2p.services.pubsub.unsubscribe(topic);
    await libp2p.unhandle(TWIN_SYNC_PROTOCOL);
    this.watchers.close();
    this.#abort.abort(new Error("twin service stopping"));
    await Promise.allSettled([...this.#syncing.values(), ...this.#inbound]);
    await this.flushNow();
    // Commands written while stopping (after the last store) are not stored.
    this.#settleStoreWaiters(Infinity, "the twin service stopped");
    this.#compactAll();
    this.#components.logger.info("twin service stopped", this.stats());
  }

  // --- API ---

  list(): TwinSummary[] {
    const out: TwinSummary[] = [];
    for (const id of this.#replica.ids()) {
      const state = this.#replica.state(id);
      if (state.meta.kind === undefined) continue; // genesis not arrived yet
      out.push(summaryOf(state));
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  count(): number {
    let known = 0;
    for (const id of this.#replica.ids()) {
      if (this.#replica.doc(id).meta().kind !== undefined) known++;
    }
    return known;
  }

  get(id: string): TwinView {
    const state = this.#knownState(id);
    const fields: Record<string, { value: TwinValue; hlc: string }> = {};
    // By name: the resolved view's order follows when keys arrived, which differs by replica.
    for (const name of Object.keys(state.fields).sort()) {
      const field = state.fields[name]!;
      fields[name] = { value: field.value, hlc: formatTimestamp(field.hlc) };
    }
    return { ...summaryOf(state), factory: state.meta.factory ?? "", fields };
  }

  version(id: string): string {
    this.#knownKind(id);
    return `${this.#versionTag}-${this.#replica.version(id)}`;
  }

  command(id: string, body: unknown): { hlc: string } {
    const writes = parseCommand(modelFor(this.#knownKind(id)), body);
    const hlc = this.#replica.write(id, writes, "any");
    this.#commandsWritten++;
    if (this.#owned.has(id)) this.#deliverCommands(this.#replica.state(id));
    this.#requestTick();
    return { hlc: formatTimestamp(hlc) };
  }

  whenStored(timeoutMs = STORE_WAIT_MS): Promise<void> {
    const upTo = this.#commandsWritten;
    if (this.#commandsStored >= upTo) return Promise.resolve();
    if (!this.#started) {
      return Promise.reject(new TwinNotStoredError("the twin service stopped before storing"));
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: StoreWaiter = {
        upTo,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.#storeWaiters = this.#storeWaiters.filter((w) => w !== waiter);
        reject(new TwinNotStoredError(`not stored within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#storeWaiters.push(waiter);
      this.#requestTick();
    });
  }

  history(id: string, limit: number): TwinHistoryEntry[] {
    this.#knownKind(id);
    return this.#replica.doc(id).history(limit);
  }

  writeMeasured(id: string, update: MeasuredUpdate): { hlc: string } {
    const asset = this.#owned.get(id);
    if (!asset) {
      if (!this.#replica.has(id)) throw new UnknownTwinError(id);
      throw new TwinOwnershipError(id);
    }
    const writes = parseMeasured(modelFor(asset.kind), update);
    if (writes.length === 0) return { hlc: formatTimestamp(this.#components.clock.last) };
    return { hlc: formatTimestamp(this.#replica.write(id, writes, "owner")) };
  }

  onCommand(callback: (assetId: string, command: TwinCommand) => void): () => void {
    this.#callbacks.add(callback);
    return () => this.#callbacks.delete(callback);
  }

  stats(): TwinServiceStats {
    const parked = this.#replica.parkedChanges();
    const replicaStats: TwinReplicaStats = this.#replica.stats;
    return {
      ...replicaStats,
      ...this.#counters,
      twins: this.#replica.ids().length,
      twins_owned: this.#owned.size,
      parked_changes: parked,
      sync_sessions_active: this.#syncing.size + this.#inbound.size,
      reads_waiting: this.watchers.waiting,
      hlc_clock_rejected_remote: this.#components.clock.rejectedRemote,
    };
  }

  async flushNow(): Promise<void> {
    if (this.#ticking) await this.#ticking;
    await this.#tick(true);
  }

  /** Starts (or queues) a session, counted by why it was wanted. */
  #syncFor(reason: SyncReason, peer: PeerId, scope?: ReadonlySet<string>): Promise<void> {
    this.#counters[`sync_wanted_${reason}`]++;
    return this.syncWith(peer, scope);
  }

  syncWith(peer: PeerId, scope?: ReadonlySet<string>): Promise<void> {
    const key = peer.toString();
    const wanted = this.#scopes.get(key);
    if (scope === undefined || wanted === "all") this.#scopes.set(key, "all");
    else this.#scopes.set(key, new Set([...(wanted ?? []), ...scope]));
    return this.#runQueued(peer);
  }

  /** Runs the session wanted with `peer`, or queues one more after the running one. */
  #runQueued(peer: PeerId): Promise<void> {
    const key = peer.toString();
    const running = this.#syncing.get(key);
    if (running) {
      this.#syncAgain.add(key);
      return running;
    }
    const scope = this.#scopes.get(key);
    this.#scopes.delete(key);
    const session = this.#runOutbound(peer, scope === "all" ? undefined : scope).finally(() => {
      this.#syncing.delete(key);
      if (this.#syncAgain.delete(key) && this.#started) void this.#runQueued(peer);
    });
    this.#syncing.set(key, session);
    return session;
  }

  #knownState(id: string): ResolvedTwin {
    this.#knownKind(id);
    return this.#replica.state(id);
  }

  /** The kind of a twin whose genesis has arrived; throws {@link UnknownTwinError}. */
  #knownKind(id: string): string {
    const kind = this.#replica.has(id) ? this.#replica.doc(id).meta().kind : undefined;
    if (kind === undefined) throw new UnknownTwinError(id);
    return kind;
  }

  // --- publish, persist, deliver ---

  #scheduleTick(): void {
    if (this.#ticking) return; // the previous tick is still publishing: skip, do not pile up
    this.#lastTickAtMs = performance.now();
    this.#ticking = this.#tick().catch((error) => {
      // A tick that throws must not end the gateway (an unhandled rejection
      // would): count it, say so, and let the next tick try again.
      this.#counters.tick_errors++;
      this.#components.logger.error("twin tick failed", { error: String(error) });
    }).finally(() => {
      this.#ticking = undefined;
      if (this.#tickAgain) {
        this.#tickAgain = false;
        this.#requestTick();
      }
    });
  }

  /** Publishes a command soon (see {@link MIN_TICK_GAP_MS}). */
  #requestTick(): void {
    if (!this.#started) return;
    if (this.#ticking) {
      this.#tickAgain = true;
      return;
    }
    if (this.#soon !== undefined) return;
    const run = () => {
      this.#soon = undefined;
      this.#scheduleTick();
    };
    const gapLeftMs = this.#lastTickAtMs + MIN_TICK_GAP_MS - performance.now();
    if (gapLeftMs <= 0) {
      const immediate = setImmediate(run);
      this.#soon = () => clearImmediate(immediate);
    } else {
      const timer = setTimeout(run, gapLeftMs);
      this.#soon = () => clearTimeout(timer);
    }
  }

  /**
   * Commits and publishes local writes; stores what changed in the first tick
   * after the interval timer fired, in a tick whose commands a caller of
   * whenStored() waits for (every HTTP command: a 202 means stored), and when
   * `persistNow`. Measured-state writes, the bulk of the writes, nobody waits
   * for: they are stored once per interval, one transaction for all of them.
   */
  async #tick(persistNow = false): Promise<void> {
    const commandsFlushed = this.#commandsWritten;
    const flushed = this.#replica.flush();
    for (const assetId of this.#replica.drainRemoteChanged()) {
      if (this.#owned.has(assetId)) this.#deliverCommands(this.#replica.state(assetId));
    }
    // Publish before the SQLite write: peers see the change a store sooner,
    // and a command is acknowledged only once both have happened.
    await this.#publish(flushed);
    const waited = this.#storeWaiters.some((w) => w.upTo <= commandsFlushed);
    if (persistNow || this.#storeDue || waited) {
      this.#storeDue = false;
      try {
        this.#persist();
      } catch (error) {
        this.#settleStoreWaiters(commandsFlushed, `store failed: ${String(error)}`);
        throw error;
      }
      this.#commandsStored = commandsFlushed;
      this.#settleStoreWaiters(commandsFlushed);
      this.#scheduleCheckpoint();
    }
    this.#scheduleCompaction();
  }

  /** Settles the whenStored() callers of the first `upTo` commands: stored, or `failure`. */
  #settleStoreWaiters(upTo: number, failure?: string): void {
    const settled = this.#storeWaiters.filter((w) => w.upTo <= upTo);
    if (settled.length === 0) return;
    this.#storeWaiters = this.#storeWaiters.filter((w) => w.upTo > upTo);
    for (const waiter of settled) {
      if (failure === undefined) waiter.resolve();
      else waiter.reject(new TwinNotStoredError(failure));
    }
  }

  async #publish(flushed: readonly FlushedChanges[]): Promise<void> {
    const byFactory = new Map<string, GossipDoc[]>();
    for (const { docId, factory, changes } of flushed) {
      const docs = byFactory.get(factory) ?? [];
      for (let i = 0; i < changes.length; i += MAX_GOSSIP_CHANGES_PER_DOC) {
        docs.push({ docId, changes: changes.slice(i, i + MAX_GOSSIP_CHANGES_PER_DOC) });
      }
      byFactory.set(factory, docs);
    }
    const sends: Promise<void>[] = [];
    for (const [factory, docs] of byFactory) {
      for (const batch of this.#packGossip(docs)) {
        sends.push(this.#publishOne(factory, encodeGossip({ factory, docs: batch })));
      }
    }
    await Promise.all(sends);
  }

  /** Splits docs into gossip messages under the size limit; drops single oversized changes. */
  #packGossip(docs: readonly GossipDoc[]): GossipDoc[][] {
    // Headroom for ids and varints per entry.
    const overheadBytes = 160;
    const limit = MAX_GOSSIP_MESSAGE_BYTES - overheadBytes;
    const batches: GossipDoc[][] = [];
    let current: GossipDoc[] = [];
    let size = 0;
    for (const doc of docs) {
      const kept = doc.changes.filter((change) => {
        if (change.length + overheadBytes <= limit) return true;
        this.#counters.gossip_skipped_oversized_change++; // peers fetch it by sync
        return false;
      });
      let bytes = overheadBytes + kept.reduce((n, c) => n + c.length + 8, 0);
      if (kept.length === 0) continue;
      if (current.length > 0 && size + bytes > limit) {
        batches.push(current);
        current = [];
        size = 0;
      }
      if (bytes > limit) {
        // Many changes of one twin: one message per change.
        for (const change of kept) batches.push([{ docId: doc.docId, changes: [change] }]);
        bytes = 0;
        continue;
      }
      current.push({ docId: doc.docId, changes: kept });
      size += bytes;
    }
    if (current.length > 0) batches.push(current);
    return batches;
  }

  async #publishOne(factory: string, data: Uint8Array): Promise<void> {
    try {
      await this.#components.libp2p.services.pubsub.publish(twinTopic(factory), data);
      this.#counters.gossip_published++;
    } catch (error) {
      // No subscribed peers (partitioned) is normal: the next sync session carries it.
      this.#counters.gossip_publish_errors++;
      this.#components.logger.debug("twin gossip publish failed", {
        factory,
        error: String(error),
      });
    }
  }

  /**
   * Stores what changed since the last tick. A step that throws (a full or
   * failing disk) leaves what it did not store queued for the next tick
   * rather than lost.
   */
  #persist(): void {
    const storage = this.#storage;
    if (!storage) return;
    // A twin in a new epoch is a new document: its snapshot replaces the old
    // one's chunks, and old-epoch chunks not stored yet are not wanted.
    const replaced = new Set(this.#replica.drainReplaced());
    for (const assetId of replaced) this.#snapshotOwed.add(assetId);
    if (replaced.size > 0) this.#unstored = this.#unstored.filter((c) => !replaced.has(c.assetId));
    for (const assetId of this.#snapshotOwed) {
      this.#compact(assetId);
      this.#snapshotOwed.delete(assetId);
    }
    for (const assetId of this.#replica.drainDirty()) {
      const bytes = this.#replica.doc(assetId).saveIncremental();
      if (bytes.length > 0) this.#unstored.push({ assetId, bytes });
    }
    const chunks = this.#unstored;
    const due = storage.appendChunks(chunks, this.#init.compactAfterChunks);
    this.#unstored = [];
    this.#counters.persisted_chunks += chunks.length;
    for (const assetId of due) this.#compactDue.add(assetId);
  }

  /**
   * Compacts the twins that came due in tasks of their own, one twin each,
   * after the tick: a compaction (1-10 ms) then delays neither the answers
   * to the commands the tick stored nor, by more than one twin's, anything
   * else (twins written at the same rate come due together).
   */
  #scheduleCompaction(): void {
    if (this.#compactTimer !== undefined || this.#compactDue.size === 0 || !this.#started) return;
    this.#compactTimer = setTimeout(() => {
      this.#compactTimer = undefined;
      this.#compactNext();
      this.#scheduleCompaction();
    }, 0);
  }

  /** Checkpoints the WAL in a task of its own (see WAL_CHECKPOINT_INTERVAL_MS). */
  #scheduleCheckpoint(): void {
    if (this.#checkpointTimer !== undefined || !this.#started) return;
    if (performance.now() - this.#checkpointedAtMs < this.#init.walCheckpointIntervalMs) return;
    this.#checkpointTimer = setTimeout(() => {
      this.#checkpointTimer = undefined;
      this.#checkpointedAtMs = performance.now();
      try {
        this.#counters.wal_checkpoint_frames += checkpointWal(this.#components.db);
        this.#counters.wal_checkpoints++;
      } catch (error) {
        // SQLite's own checkpoint (WAL_BACKSTOP_PAGES) still bounds the WAL.
        this.#counters.wal_checkpoint_errors++;
        this.#components.logger.error("WAL checkpoint failed", { error: String(error) });
      }
    }, 0);
  }

  #compactNext(): void {
    const [assetId] = this.#compactDue;
    if (assetId === undefined) return;
    this.#compactDue.delete(assetId);
    const doc = this.#replica.doc(assetId);
    // save() moves the incremental-save point: what the twin has not stored
    // yet goes to the next store as a chunk first, so its chunks stay a
    // whole chain should the snapshot not be stored (and are merely
    // repeated by the snapshot when it is).
    const pending = doc.saveIncremental();
    if (pending.length > 0) this.#unstored.push({ assetId, bytes: pending });
    // Its next epoch's scan of unchecked changes, spread as compactions are
    // (twins pass the epoch bound together; TwinDoc.prepareEpoch).
    doc.prepareEpoch();
    try {
      this.#compact(assetId);
    } catch (error) {
      // The storage lets it come due again at a later store.
      this.#counters.compaction_errors++;
      this.#components.logger.error("twin compaction failed", { assetId, error: String(error) });
    }
  }

  /** Stores a snapshot of the twin in place of its chunks. */
  #compact(assetId: string): void {
    const storage = this.#storage;
    if (!storage) return;
    storage.compact(assetId, this.#replica.doc(assetId).save());
    this.#counters.compactions++;
  }

  #compactAll(): void {
    for (const assetId of this.#replica.ids()) {
      const owed = this.#snapshotOwed.delete(assetId);
      if (owed || (this.#storage?.chunkCount(assetId) ?? 0) > 0) this.#compact(assetId);
    }
  }

  #deliverCommands(state: ResolvedTwin): void {
    const previous = this.#commandViews.get(state.assetId) ??
      { setpoints: new Map(), modes: new Set() };
    const next = commandView(state);
    this.#commandViews.set(state.assetId, next);
    const setpoints: Record<string, number> = {};
    for (const [name, value] of next.setpoints) {
      if (previous.setpoints.get(name) !== value) setpoints[name] = value;
    }
    const modesAdded = [...next.modes].filter((m) => !previous.modes.has(m));
    const modesRemoved = [...previous.modes].filter((m) => !next.modes.has(m));
    if (
      Object.keys(setpoints).length === 0 && modesAdded.length === 0 && modesRemoved.length === 0
    ) {
      return;
    }
    let newest = "";
    for (const [name, field] of Object.entries(state.fields)) {
      if (!name.startsWith("setpoints.") && name !== "modes") continue;
      const text = formatTimestamp(field.hlc);
      if (text > newest) newest = text;
    }
    const command: TwinCommand = {
      setpoints,
      modes: [...next.modes].sort(),
      modesAdded,
      modesRemoved,
      hlc: newest,
    };
    for (const callback of this.#callbacks) {
      try {
        callback(state.assetId, command);
        this.#counters.commands_delivered++;
      } catch (error) {
        this.#counters.command_callback_errors++;
        this.#components.logger.error("twin command callback failed", {
          assetId: state.assetId,
          error: String(error),
        });
      }
    }
  }

  // --- inbound gossip ---

  #onGossip = (event: CustomEvent<TwinPubSubMessage>): void => {
    const message = event.detail;
    const factory = this.#topics.get(message.topic);
    if (factory === undefined) return; // another service's topic
    this.#counters.gossip_received++;
    let batch;
    try {
      batch = decodeGossip(message.data);
    } catch (error) {
      if (!(error instanceof TwinCodecError)) throw error;
      if (error.oversized) this.#counters.dropped_oversized_gossip++;
      else this.#counters.dropped_malformed_gossip++;
      this.#components.logger.debug("twin gossip dropped", { error: error.message });
      return;
    }
    if (batch.factory !== factory) {
      this.#counters.dropped_wrong_topic++;
      return;
    }
    const publisher = message.type === "signed" ? message.from : undefined;
    const gap = this.#replica.ingestGossip(batch);
    if (gap === "evicted") this.#fetchMissing(publisher);
    else if (gap === "parked") this.#fetchIfStillParked(publisher);
  };

  /** See {@link PARKED_GRACE_MS}. One check at a time: it covers every twin. */
  #fetchIfStillParked(publisher: PeerId | undefined): void {
    if (this.#parkedCheck !== undefined) return;
    this.#parkedCheck = setTimeout(() => {
      this.#parkedCheck = undefined;
      // Only the twins still waiting take part: a session over every twin
      // would send a message for each one a change is in flight for.
      const parked = this.#replica.parkedTwins();
      if (this.#started && parked.size > 0) this.#fetchMissing(publisher, parked);
    }, PARKED_GRACE_MS);
  }

  /**
   * Gossip brought changes with missing dependencies: fetch the gap by sync
   * from the publisher when linked to it. Gossipsub relays across gateways,
   * so the publisher is often not a neighbour (a bridge between factories):
   * dialling it then fails for want of an address, and the gap would wait for
   * anti-entropy. Any neighbour on the path has the gap or fetches it (and
   * forwards it, see #forward), so sync with one of them instead.
   */
  #fetchMissing(publisher: PeerId | undefined, scope?: ReadonlySet<string>): void {
    const peers = this.#components.libp2p.getPeers();
    const linked = publisher && peers.find((peer) => peer.equals(publisher));
    if (linked) {
      void this.#syncFor("gap", linked, scope);
      return;
    }
    if (peers.length === 0) return;
    const random = this.#components.random ?? Math.random;
    void this.#syncFor("gap", peers[Math.floor(random() * peers.length)]!, scope);
  }

  // --- sync sessions ---

  #onPeerDisconnect = (event: CustomEvent<PeerId>): void => {
    this.#syncedSinceConnect.delete(event.detail.toString());
  };

  #onPeerConnect = (event: CustomEvent<PeerId>): void => {
    const peer = event.detail;
    this.#syncedSinceConnect.delete(peer.toString());
    // Both ends see the connection; the smaller peer id initiates so one session runs.
    if (this.#components.libp2p.peerId.toString() >= peer.toString()) return;
    const now = performance.now();
    if (this.#connectPending.size === 0) this.#connectFirstAtMs = now;
    this.#connectPending.set(peer.toString(), peer);
    clearTimeout(this.#connectTimer);
    const waitMs = Math.min(
      this.#init.connectSyncDelayMs,
      this.#connectFirstAtMs + CONNECT_SYNC_MAX_WAIT_MS - now,
    );
    this.#connectTimer = setTimeout(() => this.#catchUpConnected(), Math.max(0, waitMs));
  };

  #catchUpConnected(): void {
    const peers = [...this.#connectPending.values()];
    this.#connectPending.clear();
    const connected = this.#components.libp2p.getPeers();
    for (const peer of peers) {
      // Still connected: a connection that closed meanwhile has nothing to catch up on.
      if (this.#started && connected.some((p) => p.equals(peer))) {
        void this.#syncFor("connect", peer);
      }
    }
  }

  #antiEntropy(): void {
    const peers = this.#components.libp2p.getPeers();
    if (peers.length === 0) return;
    const random = this.#components.random ?? Math.random;
    const peer = peers[Math.floor(random() * peers.length)]!;
    void this.#syncFor("anti_entropy", peer);
  }

  async #runOutbound(peer: PeerId, scope?: ReadonlySet<string>): Promise<void> {
    if (!this.#started) return;
    const { libp2p, logger } = this.#components;
    let stream: Stream;
    try {
      stream = await libp2p.dialProtocol(peer, TWIN_SYNC_PROTOCOL, { signal: this.#abort.signal });
    } catch (error) {
      this.#counters.sync_sessions_failed++;
      logger.debug("twin sync dial failed", { peer: peer.toString(), error: String(error) });
      return;
    }
    await this.#runSession(stream, peer.toString(), "initiator", scope);
  }

  #onSyncStream = (stream: Stream, connection: Connection): void => {
    const session = this.#runSession(stream, connection.remotePeer.toString(), "responder");
    this.#inbound.add(session);
    void session.finally(() => this.#inbound.delete(session));
  };

  async #runSession(
    stream: Stream,
    peer: string,
    role: "initiator" | "responder",
    scope?: ReadonlySet<string>,
  ): Promise<void> {
    if (!this.#started) {
      stream.abort(new Error("twin service stopped"));
      return;
    }
    if (role === "responder") this.#counters.sync_sessions_inbound++;
    const states = this.#rememberedStates(peer);
    const seen: SessionFindings = { changed: new Set(), created: new Set() };
    const session = new TwinSyncSession(role, this.#recordingTarget(seen), { states, scope });
    const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(120_000)]);
    try {
      const result = await runTwinSyncSession(stream, session, { signal });
      this.#counters.sync_sessions++;
      this.#counters.sync_bytes_sent += result.bytesSent;
      this.#counters.sync_bytes_received += result.bytesReceived;
      this.#components.logger.debug("twin sync session done", {
        peer,
        role,
        twinsChanged: seen.changed.size,
        ...session.stats,
      });
      // The first full session after a (re)connection carries what the link
      // missed (a healed partition); later ones carry what gossip is also
      // bringing. A scoped session fetched a known gap: it is neither.
      if (!session.scoped) {
        const catchUp = !this.#syncedSinceConnect.has(peer);
        this.#syncedSinceConnect.add(peer);
        if (seen.changed.size > 0 && (seen.created.size > 0 || catchUp)) this.#forward(peer);
      }
    } catch (error) {
      this.#counters.sync_sessions_failed++;
      const name = error instanceof Error ? error.name : "";
      if (
        name === "TwinSyncProtocolError" || name === "TwinCodecError" ||
        name === "TwinSyncMessageError"
      ) {
        this.#counters.sync_protocol_errors++;
      }
      this.#components.logger.warn("twin sync session failed", {
        peer,
        role,
        error: String(error),
      });
      this.#syncStates.delete(peer); // do not trust half-updated states next time
    }
    // New remote changes are picked up by the next tick (commands, persistence).
  }

  /**
   * Changes fetched by sync are not gossiped (only local writes are), so a
   * peer that is not linked to where they came from would see them only at
   * its next anti-entropy session, up to 30 s later: after a partition heals
   * at a bridge gateway, the rest of each side would lag. So a catch-up
   * session (the first after a connection opened, on either side) that
   * brought anything, or any session that brought new twins, starts a
   * session with every other connected peer, coalesced and
   * {@link FORWARD_DELAY_MS} later; what came from a peer found on the LAN
   * goes only to peers across a bridge (the LAN's gateways are linked to
   * its source too): one hop, which covers a
   * factory (its gateways are all linked by mDNS) behind a bridge. Further
   * hops catch up by gap detection on the next gossip change and by
   * anti-entropy. Other sessions are not forwarded: what they bring on a
   * live link is mostly what gossip is also carrying, and forwarding it
   * (and then cascading) kept sessions running through a loaded 10-gateway
   * mesh, taking most of each gateway's CPU.
   */
  #forward(source: string): void {
    if (!this.#started) return;
    this.#forwardSources.add(source);
    this.#forwardTimer ??= setTimeout(() => {
      this.#forwardTimer = undefined;
      const sources = this.#forwardSources;
      this.#forwardSources = new Set();
      if (!this.#started) return;
      const onLan = (peer: string) => this.#components.foundOnLan?.(peer) ?? false;
      // Gateways found on the LAN are all linked to each other: news from one
      // of them needs passing on only to peers across a bridge (configured).
      const fromBridge = [...sources].some((source) => !onLan(source));
      for (const peer of this.#components.libp2p.getPeers()) {
        const id = peer.toString();
        // A peer is skipped when it is the one source: it has what it sent.
        if (sources.size === 1 && sources.has(id)) continue;
        if (!fromBridge && onLan(id)) continue;
        void this.#syncFor("forward", peer);
      }
    }, FORWARD_DELAY_MS);
  }

  /** The replica as a sync target that notes what a session brought. */
  #recordingTarget(seen: SessionFindings): TwinSyncTarget {
    const { changed, created } = seen;
    const replica = this.#replica;
    return {
      factories: replica.factories,
      listDocs: () => replica.listDocs(),
      ensureDoc: (docId, factory) => {
        // A new twin (not a later epoch of a known one) is worth passing on.
        const assetId = parseTwinDocId(docId)?.assetId;
        const known = assetId === undefined || replica.has(assetId);
        const ok = replica.ensureDoc(docId, factory);
        if (ok && !known) created.add(docId);
        return ok;
      },
      generateSyncMessage: (docId, state) => replica.generateSyncMessage(docId, state),
      heads: (docId) => replica.heads(docId),
      hasHeads: (docId, heads) => replica.hasHeads(docId, heads),
      receiveSyncMessage: (docId, state, message) => {
        const before = replica.heads(docId);
        const next = replica.receiveSyncMessage(docId, state, message);
        if (replica.heads(docId) !== before) changed.add(docId);
        return next;
      },
    };
  }

  /** Per-twin sync states for a peer, round-tripped through encode/decode (Automerge's rule for reuse). */
  #rememberedStates(peer: string): Map<string, TwinSyncState> {
    const states = new Map<string, TwinSyncState>();
    // Documents left behind by a new epoch drop out here.
    const held = new Set(this.#replica.listDocs().map((d) => d.docId));
    for (const [docId, state] of this.#syncStates.get(peer) ?? []) {
      if (!held.has(docId)) continue;
      states.set(docId, Automerge.decodeSyncState(Automerge.encodeSyncState(state)));
    }
    this.#syncStates.delete(peer);
    if (this.#syncStates.size >= MAX_REMEMBERED_SYNC_PEERS) {
      const oldest = this.#syncStates.keys().next().value as string;
      this.#syncStates.delete(oldest);
    }
    this.#syncStates.set(peer, states);
    return states;
  }
}

function summaryOf(state: ResolvedTwin): TwinSummary {
  return {
    id: state.assetId,
    kind: state.meta.kind ?? "",
    owner: state.meta.owner ?? "",
    lastHlc: state.lastHlc ? formatTimestamp(state.lastHlc) : null,
  };
}

function commandView(state: ResolvedTwin): CommandView {
  const setpoints = new Map<string, number>();
  for (const [name, field] of Object.entries(state.fields)) {
    if (name.startsWith("setpoints.") && typeof field.value === "number") {
      setpoints.set(name.slice("setpoints.".length), field.value);
    }
  }
  const modes = new Set((state.fields.modes?.value ?? []) as readonly string[]);
  return { setpoints, modes };
}
