/**
 * A gateway's set of twins: local writes (validated, stamped by the HLC,
 * batched into one Automerge change per twin and publish interval), gossip
 * ingest (decode, validate, park out-of-order changes, count the rest) and
 * the {@link TwinSyncTarget} a sync session works on. No I/O: the service
 * moves bytes between this, libp2p and storage, and a simulation can do the same.
 *
 * @example
 * ```ts
 * import { TwinReplica } from "./twin_replica.ts";
 * import { HybridLogicalClock } from "./hlc.ts";
 * const replica = new TwinReplica({}, {
 *   clock: new HybridLogicalClock({ node: "gw-a" }), gatewayName: "gw-a", factory: "f1",
 * });
 * replica.create("arm-1", "welding-arm");
 * replica.write("arm-1", [{ op: "add", field: "modes", element: "auto" }], "any");
 * const changes = replica.flush(); // gossip these
 * console.assert(changes.length === 1);
 * ```
 */
import { assert } from "./assert.ts";
import { ClockOffsetError, type HybridLogicalClock, type Timestamp } from "./hlc.ts";
import { type GossipBatch, isTwinId } from "./twin_codec.ts";
import { type ResolvedTwin, TwinDoc, type TwinSyncState } from "./twin_doc.ts";
import type { TwinSyncTarget } from "./twin_sync.ts";
import { modelFor, type TwinWrite, validateWrite, type WriterRole } from "./twin_model.ts";

/**
 * Twins one replica holds. A region replicating a few factories of 20-200
 * arms each stays far below; the bound stops a peer from making us allocate
 * a document per id it invents.
 */
export const MAX_TWINS = 10_000;
/** Writes per twin per publish interval: a burst beyond this is a runaway caller. */
export const MAX_PENDING_WRITES_PER_TWIN = 1_000;

/** An id that is not a twin this replica holds. */
export class UnknownTwinError extends Error {
  override name = "UnknownTwinError";
  constructor(readonly assetId: string) {
    super(`twin "${assetId.slice(0, 64)}": unknown`);
  }
}

/** A write refused because the twin has too many uncommitted writes. */
export class TwinBackpressureError extends Error {
  override name = "TwinBackpressureError";
  constructor(readonly assetId: string) {
    super(`twin "${assetId}": more than ${MAX_PENDING_WRITES_PER_TWIN} writes pending; retry`);
  }
}

/** Options; all optional. */
export interface TwinReplicaInit {
  /** Factories whose twins this replica holds; default: its own factory. */
  replicate?: readonly string[];
  /** See {@link MAX_TWINS}. */
  maxTwins?: number;
}

/** What the replica needs from its gateway. */
export interface TwinReplicaComponents {
  readonly clock: HybridLogicalClock;
  /** Origin recorded in each change (history shows it). */
  readonly gatewayName: string;
  /** This gateway's factory. */
  readonly factory: string;
}

/** Committed local changes of one twin, oldest first, to gossip. */
export interface FlushedChanges {
  readonly assetId: string;
  readonly factory: string;
  readonly changes: readonly Uint8Array[];
}

/** Counters, exported as metrics. */
export type TwinReplicaStats = {
  writes: number;
  changes_committed: number;
  gossip_changes_applied: number;
  gossip_changes_duplicate: number;
  gossip_changes_parked: number;
  gossip_changes_evicted: number;
  dropped_malformed: number;
  dropped_invalid: number;
  dropped_unknown_factory: number;
  dropped_twin_limit: number;
  sync_messages_received: number;
  hlc_remote_rejected: number;
};

/** What a gossip batch left missing; see {@link TwinReplica.ingestGossip}. */
export type GossipGap = "none" | "parked" | "evicted";

interface Entry {
  doc: TwinDoc;
  /** Factory from metadata, or from the gossip topic / hello that introduced the twin. */
  factory: string;
  pendingWrites: number;
}

/** See the module documentation. */
export class TwinReplica implements TwinSyncTarget {
  readonly factories: readonly string[];
  readonly stats: TwinReplicaStats = {
    writes: 0,
    changes_committed: 0,
    gossip_changes_applied: 0,
    gossip_changes_duplicate: 0,
    gossip_changes_parked: 0,
    gossip_changes_evicted: 0,
    dropped_malformed: 0,
    dropped_invalid: 0,
    dropped_unknown_factory: 0,
    dropped_twin_limit: 0,
    sync_messages_received: 0,
    hlc_remote_rejected: 0,
  };
  #components: TwinReplicaComponents;
  #maxTwins: number;
  #entries = new Map<string, Entry>();
  #remoteChanged = new Set<string>();
  #dirty = new Set<string>();
  /** Twins with local writes or a genesis not yet flushed (flush visits only these). */
  #touched = new Set<string>();

  constructor(init: TwinReplicaInit, components: TwinReplicaComponents) {
    this.#components = components;
    this.factories = [...new Set(init.replicate ?? [components.factory])].sort();
    for (const factory of this.factories) assert(isTwinId(factory), "factory ids are valid");
    this.#maxTwins = init.maxTwins ?? MAX_TWINS;
  }

  /** Ids of all twins held (including ones whose metadata has not arrived). */
  ids(): string[] {
    return [...this.#entries.keys()];
  }

  has(assetId: string): boolean {
    return this.#entries.has(assetId);
  }

  /** The document of a twin; throws {@link UnknownTwinError}. */
  doc(assetId: string): TwinDoc {
    return this.#entry(assetId).doc;
  }

  /** Factory of a twin. */
  factoryOf(assetId: string): string {
    return this.#entry(assetId).factory;
  }

  #entry(assetId: string): Entry {
    const entry = this.#entries.get(assetId);
    if (!entry) throw new UnknownTwinError(assetId);
    return entry;
  }

  /**
   * Creates the twin of an asset this gateway owns (no-op when it exists
   * with metadata, e.g. loaded from storage).
   */
  create(assetId: string, kind: string): void {
    assert(isTwinId(assetId), "owned asset ids are valid");
    modelFor(kind);
    const existing = this.#entries.get(assetId);
    if (existing?.doc.meta().kind !== undefined) return;
    const { clock, gatewayName, factory } = this.#components;
    const meta = { kind, factory, owner: gatewayName, ownerNode: clock.node };
    if (existing) {
      // Known from a peer before its genesis arrived: write the metadata into it.
      const hlc = clock.now();
      existing.doc.writeMeta(meta, hlc, gatewayName);
      existing.factory = factory;
    } else {
      this.#add(assetId, TwinDoc.create(assetId, meta, clock.now(), gatewayName), factory);
    }
    this.#dirty.add(assetId);
    this.#touched.add(assetId);
  }

  /** Adds a twin loaded from storage. */
  load(assetId: string, chunks: readonly Uint8Array[]): void {
    const doc = TwinDoc.load(assetId, chunks);
    this.#add(assetId, doc, doc.meta().factory ?? this.#components.factory);
  }

  #add(assetId: string, doc: TwinDoc, factory: string): void {
    assert(!this.#entries.has(assetId), "a twin is added once");
    this.#entries.set(assetId, { doc, factory, pendingWrites: 0 });
  }

  /**
   * Validates and applies writes to a twin in the open batch; returns the
   * HLC they were stamped with. Throws {@link UnknownTwinError},
   * `TwinValidationError` (naming the field) or {@link TwinBackpressureError}.
   */
  write(assetId: string, writes: readonly TwinWrite[], role: WriterRole): Timestamp {
    const entry = this.#entry(assetId);
    const kind = entry.doc.meta().kind;
    if (kind === undefined) throw new UnknownTwinError(assetId);
    const model = modelFor(kind);
    for (const write of writes) validateWrite(model, write, role);
    if (entry.pendingWrites + writes.length > MAX_PENDING_WRITES_PER_TWIN) {
      throw new TwinBackpressureError(assetId);
    }
    const hlc = this.#components.clock.now();
    entry.doc.write(writes, hlc, this.#components.gatewayName);
    this.stats.writes += writes.length;
    entry.pendingWrites += writes.length;
    this.#dirty.add(assetId);
    this.#touched.add(assetId);
    return hlc;
  }

  /** Commits every twin's open batch; returns the changes to gossip. */
  flush(): FlushedChanges[] {
    const out: FlushedChanges[] = [];
    for (const assetId of this.#touched) {
      const entry = this.#entry(assetId);
      entry.pendingWrites = 0;
      entry.doc.commit();
      const changes = entry.doc.takeUnpublished();
      if (changes.length === 0) continue;
      out.push({ assetId, factory: entry.factory, changes });
      this.stats.changes_committed += changes.length;
    }
    this.#touched.clear();
    return out;
  }

  /**
   * Applies a decoded gossip batch received on `factory`'s topic. Returns
   * what is missing: `"parked"` when changes wait for dependencies (usually
   * in flight from another writer: the caller syncs only if they are still
   * parked a moment later), `"evicted"` when the park overflowed (sync now),
   * `"none"` otherwise.
   */
  ingestGossip(batch: GossipBatch): GossipGap {
    if (!this.factories.includes(batch.factory)) {
      this.stats.dropped_unknown_factory++;
      return "none";
    }
    let gap: GossipGap = "none";
    for (const { assetId, changes } of batch.docs) {
      if (!this.ensureDoc(assetId, batch.factory)) {
        this.stats.dropped_twin_limit += changes.length;
        continue;
      }
      const result = this.#entry(assetId).doc.applyChanges(changes);
      this.stats.gossip_changes_applied += result.applied;
      this.stats.gossip_changes_duplicate += result.duplicate;
      this.stats.gossip_changes_parked += result.parked;
      this.stats.gossip_changes_evicted += result.evicted;
      this.stats.dropped_malformed += result.malformed;
      this.stats.dropped_invalid += result.invalid;
      if (result.evicted > 0) gap = "evicted";
      else if (result.parked > 0 && gap === "none") gap = "parked";
      if (result.applied > 0) this.#noteRemote(assetId);
    }
    return gap;
  }

  /** Twins holding gossip changes parked for missing dependencies. */
  parkedTwins(): Set<string> {
    const ids = new Set<string>();
    for (const [assetId, entry] of this.#entries) if (entry.doc.parkedChanges > 0) ids.add(assetId);
    return ids;
  }

  /** Gossip changes parked for missing dependencies, over all twins. */
  parkedChanges(): number {
    let parked = 0;
    for (const entry of this.#entries.values()) parked += entry.doc.parkedChanges;
    return parked;
  }

  #noteRemote(assetId: string): void {
    this.#remoteChanged.add(assetId);
    this.#dirty.add(assetId);
  }

  /**
   * Twins changed by peers since the last call, with their merged state.
   * Advances the HLC past the newest remote stamp seen, so a local write
   * made after seeing a value outranks it.
   */
  drainRemoteChanged(): ResolvedTwin[] {
    const out: ResolvedTwin[] = [];
    for (const assetId of this.#remoteChanged) {
      const state = this.#entry(assetId).doc.resolve();
      const entry = this.#entry(assetId);
      if (state.meta.factory && state.meta.factory !== entry.factory) {
        entry.factory = state.meta.factory;
      }
      if (state.lastHlc && state.lastHlc.node !== this.#components.clock.node) {
        this.#observeRemoteHlc(state.lastHlc);
      }
      out.push(state);
    }
    this.#remoteChanged.clear();
    return out;
  }

  #observeRemoteHlc(hlc: Timestamp): void {
    try {
      this.#components.clock.update(hlc);
    } catch (error) {
      if (!(error instanceof ClockOffsetError)) throw error;
      // Counted by the clock too; the value stays in the document (all replicas
      // must agree), the clock just does not jump ahead with it.
      this.stats.hlc_remote_rejected++;
    }
  }

  /** Twins changed (locally or remotely) since the last call: to persist. */
  drainDirty(): string[] {
    const out = [...this.#dirty];
    this.#dirty.clear();
    return out;
  }

  /** The merged state of a twin; throws {@link UnknownTwinError}. */
  state(assetId: string): ResolvedTwin {
    return this.#entry(assetId).doc.resolve();
  }

  // --- TwinSyncTarget ---

  listDocs(): { assetId: string; factory: string }[] {
    const out: { assetId: string; factory: string }[] = [];
    for (const [assetId, entry] of this.#entries) out.push({ assetId, factory: entry.factory });
    return out;
  }

  ensureDoc(assetId: string, factory: string): boolean {
    if (this.#entries.has(assetId)) return true;
    if (!this.factories.includes(factory) || !isTwinId(assetId)) return false;
    if (this.#entries.size >= this.#maxTwins) return false;
    this.#add(assetId, TwinDoc.empty(assetId), factory);
    return true;
  }

  generateSyncMessage(assetId: string, state: TwinSyncState): [TwinSyncState, Uint8Array | null] {
    return this.#entry(assetId).doc.generateSyncMessage(state);
  }

  heads(assetId: string): string {
    return this.#entry(assetId).doc.heads().join(",");
  }

  receiveSyncMessage(assetId: string, state: TwinSyncState, message: Uint8Array): TwinSyncState {
    const doc = this.#entry(assetId).doc;
    const before = doc.heads();
    const next = doc.receiveSyncMessage(state, message);
    this.stats.sync_messages_received++;
    const after = doc.heads();
    if (before.length !== after.length || before.some((h, i) => h !== after[i])) {
      this.#noteRemote(assetId);
    }
    return next;
  }
}
