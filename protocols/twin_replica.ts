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
import {
  ClockOffsetError,
  compareTimestamps,
  type HybridLogicalClock,
  type Timestamp,
} from "./hlc.ts";
import { type GossipBatch, isTwinId, parseTwinDocId, twinDocId } from "./twin_codec.ts";
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
/**
 * An owner starts a new epoch of its twin once the document holds this many
 * operations of history beyond its live keys. Applying a peer's change costs
 * time in proportion to the operations (see TwinDoc.opCount); `bench
 * history` measured a peer's p99 per change over a simulated day of 5 s
 * summaries at 0.75-0.9 ms with this bound, 1.4 ms with 5,000, and 4.3-6.4 ms
 * after only 4 hours without epochs. Such a twin passes the bound every ~24
 * minutes. The new epoch is a fresh
 * document holding the same state in one change; peers switch to it when
 * they see it and carry over anything only they had (TwinDoc.joinFrom).
 */
export const REBASE_AFTER_OPS = 2_000;
/**
 * Any other writer starts a new epoch past this many times the bound: during
 * a partition the owner is out of reach, and its side's documents must not
 * grow without end either. Two replicas starting the same epoch at once is
 * harmless (their documents merge like any concurrent writes); the factor
 * just leaves the ordinary case to the owner.
 */
export const NON_OWNER_REBASE_FACTOR = 4;
/**
 * Epochs one flush may start. Twins written at the same rate pass the bound
 * together (20 arms on one program: in the same tick), and each start builds,
 * gossips and stores a new document and makes every peer switch: one per
 * flush spreads them over ticks. A twin passed over starts at its next write.
 */
export const MAX_EPOCH_STARTS_PER_FLUSH = 1;
/** Later epochs a twin may be filling at once (one is usual); beyond it the highest is dropped. */
export const MAX_PENDING_EPOCHS = 4;
/**
 * A later epoch whose genesis has not arrived after this long is dropped: a
 * peer that named an epoch nobody can serve must not hold the twin back.
 */
export const PENDING_EPOCH_PATIENCE_MS = 60_000;
/** Epochs further ahead than this are refused (years of epochs; guards the id's range). */
export const MAX_EPOCH_LEAP = 100_000;
/** Largest epoch: the wire id's 15 digits. */
export const MAX_EPOCH = 999_999_999_999_999;

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
  /** See {@link REBASE_AFTER_OPS}. */
  rebaseAfterOps?: number;
  /**
   * Called synchronously whenever a twin's state may have changed (a local
   * write, applied gossip or sync, a new epoch), after the change: what
   * waits for a twin to change listens here. Must not call back into the replica.
   */
  onChanged?: (assetId: string) => void;
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
  /** The document they belong to on the wire (the twin's epoch, see twinDocId). */
  readonly docId: string;
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
  /** Epochs this replica started (as owner) and switched to (from a peer). */
  epochs_started: number;
  epochs_adopted: number;
  /** Keys carried from an old epoch into the new one at a switch. */
  epoch_keys_carried: number;
  /** Gossip changes for an epoch already left behind (their writer carries them over). */
  dropped_old_epoch: number;
  /** Gossip changes for a later epoch refused (too far ahead, or too many pending). */
  dropped_epoch_refused: number;
};

/** What a gossip batch left missing; see {@link TwinReplica.ingestGossip}. */
export type GossipGap = "none" | "parked" | "evicted";

interface Entry {
  doc: TwinDoc;
  epoch: number;
  /** Later epochs heard of, filling by gossip or sync until a genesis arrives; by epoch. */
  pending: Map<number, { doc: TwinDoc; sinceMs: number }>;
  /** Factory from metadata, or from the gossip topic / hello that introduced the twin. */
  factory: string;
  pendingWrites: number;
  /** See {@link TwinReplica.version}. */
  version: number;
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
    epochs_started: 0,
    epochs_adopted: 0,
    epoch_keys_carried: 0,
    dropped_old_epoch: 0,
    dropped_epoch_refused: 0,
  };
  #components: TwinReplicaComponents;
  #maxTwins: number;
  #rebaseAfterOps: number;
  #entries = new Map<string, Entry>();
  /** Twins whose document was replaced by a new epoch since the last drain: storage restarts them. */
  #replaced = new Set<string>();
  #remoteChanged = new Set<string>();
  /**
   * Per writer node, the newest HLC of its changes since the last drain (see
   * #noteRemote); per node, so one peer's stamp beyond the clock's max offset
   * (refused) does not hide the others'.
   */
  #remoteNewest = new Map<string, Timestamp>();
  /** Twins changed by sync since the last drain: their newest field is observed instead. */
  #resolveForClock = new Set<string>();
  #dirty = new Set<string>();
  /** Last version handed out (see {@link TwinReplica.version}). */
  #lastVersion = 0;
  #onChanged: ((assetId: string) => void) | undefined;
  /** Twins with local writes or a genesis not yet flushed (flush visits only these). */
  #touched = new Set<string>();

  constructor(init: TwinReplicaInit, components: TwinReplicaComponents) {
    this.#components = components;
    this.factories = [...new Set(init.replicate ?? [components.factory])].sort();
    for (const factory of this.factories) assert(isTwinId(factory), "factory ids are valid");
    this.#maxTwins = init.maxTwins ?? MAX_TWINS;
    this.#rebaseAfterOps = init.rebaseAfterOps ?? REBASE_AFTER_OPS;
    this.#onChanged = init.onChanged;
  }

  /** Ids of all twins held (including ones whose metadata has not arrived). */
  ids(): string[] {
    return [...this.#entries.keys()];
  }

  has(assetId: string): boolean {
    return this.#entries.has(assetId);
  }

  /** The current document of a twin; throws {@link UnknownTwinError}. */
  doc(assetId: string): TwinDoc {
    return this.#entry(assetId).doc;
  }

  /** The epoch of a twin's current document. */
  epochOf(assetId: string): number {
    return this.#entry(assetId).epoch;
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
      this.#add(assetId, TwinDoc.create(assetId, meta, clock.now(), gatewayName), factory, 0);
    }
    this.#changed(assetId);
    this.#touched.add(assetId);
  }

  /** Adds a twin loaded from storage. */
  load(assetId: string, chunks: readonly Uint8Array[]): void {
    const doc = TwinDoc.load(assetId, chunks);
    this.#add(assetId, doc, doc.meta().factory ?? this.#components.factory, doc.storedEpoch());
  }

  #add(assetId: string, doc: TwinDoc, factory: string, epoch: number): void {
    assert(!this.#entries.has(assetId), "a twin is added once");
    this.#entries.set(assetId, {
      doc,
      epoch,
      factory,
      pendingWrites: 0,
      pending: new Map(),
      version: ++this.#lastVersion,
    });
  }

  /**
   * A number that differs whenever the twin's state may have changed since
   * it was read (an HTTP ETag). Unique per replica, never reused: a twin in a
   * new epoch does not repeat an old number.
   */
  version(assetId: string): number {
    return this.#entry(assetId).version;
  }

  /** Marks a twin changed: to persist, with a new version, listeners told. */
  #changed(assetId: string): void {
    this.#dirty.add(assetId);
    const entry = this.#entries.get(assetId);
    if (entry) entry.version = ++this.#lastVersion;
    this.#onChanged?.(assetId);
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
    this.#changed(assetId);
    this.#touched.add(assetId);
    return hlc;
  }

  /**
   * Commits every twin's open batch; returns the changes to gossip. A twin
   * whose history passed {@link REBASE_AFTER_OPS} (owner) or
   * {@link NON_OWNER_REBASE_FACTOR} times it (any other writer) moves to a
   * new epoch here, after its last changes in the old one (at most
   * {@link MAX_EPOCH_STARTS_PER_FLUSH} twins per call).
   */
  flush(): FlushedChanges[] {
    const out: FlushedChanges[] = [];
    let epochsStarted = 0;
    for (const assetId of this.#touched) {
      const entry = this.#entry(assetId);
      entry.pendingWrites = 0;
      entry.doc.commit();
      this.#takeChanges(assetId, entry, out);
      if (epochsStarted < MAX_EPOCH_STARTS_PER_FLUSH && this.#historyPastBound(entry)) {
        const epoch = Math.max(entry.epoch, entry.doc.storedEpoch()) + 1;
        if (epoch > MAX_EPOCH) continue;
        const { clock, gatewayName } = this.#components;
        const doc = TwinDoc.rebase(entry.doc, epoch, clock.now(), gatewayName);
        this.#replace(assetId, entry, doc, epoch);
        this.stats.epochs_started++;
        epochsStarted++;
        this.#takeChanges(assetId, entry, out);
      }
    }
    this.#touched.clear();
    return out;
  }

  /**
   * History beyond the live keys passed the bound (a state with many keys,
   * OR-set tombstones piling up, must not start an epoch at every write).
   * Runs for every twin written in a tick: the op count, cheap, is checked
   * before the key count, which lists the map.
   */
  #historyPastBound(entry: Entry): boolean {
    if (entry.doc.meta().kind === undefined) return false;
    const bound = this.#rebaseAfterOps * (this.#owns(entry) ? 1 : NON_OWNER_REBASE_FACTOR);
    const ops = entry.doc.opCount();
    return ops > bound && ops - entry.doc.keyCount() > bound;
  }

  #takeChanges(assetId: string, entry: Entry, out: FlushedChanges[]): void {
    const changes = entry.doc.takeUnpublished();
    if (changes.length === 0) return;
    const docId = twinDocId(assetId, entry.epoch);
    out.push({ assetId, docId, factory: entry.factory, changes });
    this.stats.changes_committed += changes.length;
  }

  #owns(entry: Entry): boolean {
    return entry.doc.meta().ownerNode === this.#components.clock.node;
  }

  /** Makes `doc` (of `epoch`) the twin's current document. */
  #replace(assetId: string, entry: Entry, doc: TwinDoc, epoch: number): void {
    assert(epoch > entry.epoch, "a twin's epoch never goes back");
    entry.doc = doc;
    entry.epoch = epoch;
    for (const pending of entry.pending.keys()) if (pending <= epoch) entry.pending.delete(pending);
    this.#replaced.add(assetId);
    this.#changed(assetId);
  }

  /**
   * A later epoch's document got its genesis: switch to it and carry over
   * what only the old document held (this replica's writes the owner had
   * not seen when it started the epoch). The old document is dropped.
   */
  #adopt(assetId: string, entry: Entry, epoch: number): void {
    const doc = entry.pending.get(epoch)?.doc;
    if (!doc || doc.storedEpoch() !== epoch || doc.meta().kind === undefined) return;
    const older = entry.doc;
    this.#replace(assetId, entry, doc, epoch);
    // Uncommitted writes go with the rest of the old state (they are in its
    // open batch, which joinFrom commits); their old-epoch changes are moot.
    const { clock, gatewayName } = this.#components;
    const carried = doc.joinFrom(older, clock.now(), gatewayName);
    older.takeUnpublished();
    this.stats.epochs_adopted++;
    this.stats.epoch_keys_carried += carried;
    if (carried > 0) this.#touched.add(assetId);
    this.#noteRemote(assetId, "resolve");
  }

  /** Twins whose document was replaced by a new epoch since the last call: store them afresh. */
  drainReplaced(): string[] {
    const out = [...this.#replaced];
    this.#replaced.clear();
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
    for (const { docId, changes } of batch.docs) {
      if (changes.length === 0) continue; // names a document without content: nothing to create
      const held = this.holds(docId);
      const found = this.ensureDoc(docId, batch.factory) ? this.#find(docId) : undefined;
      if (!found) {
        const refused = this.#refusal(docId);
        if (refused === "old") this.stats.dropped_old_epoch += changes.length;
        else if (refused === "epoch") this.stats.dropped_epoch_refused += changes.length;
        else this.stats.dropped_twin_limit += changes.length;
        continue;
      }
      const { assetId, entry, doc, epoch } = found;
      const result = doc.applyChanges(changes);
      this.stats.gossip_changes_applied += result.applied;
      this.stats.gossip_changes_duplicate += result.duplicate;
      this.stats.gossip_changes_parked += result.parked;
      this.stats.gossip_changes_evicted += result.evicted;
      this.stats.dropped_malformed += result.malformed;
      this.stats.dropped_invalid += result.invalid;
      if (result.evicted > 0) gap = "evicted";
      else if (result.parked > 0 && gap === "none") gap = "parked";
      if (doc !== entry.doc) {
        // A later epoch created for nothing usable (malformed, duplicate) is not kept.
        if (!held && result.applied === 0 && doc.parkedChanges === 0) entry.pending.delete(epoch);
        else this.#adopt(assetId, entry, epoch);
      } else if (result.applied > 0) this.#noteRemote(assetId, result.newestHlc ?? "resolve");
    }
    return gap;
  }

  /** The held document a wire id names: the twin's current one or the later epoch it is fetching. */
  #find(
    docId: string,
  ): { assetId: string; entry: Entry; doc: TwinDoc; epoch: number } | undefined {
    const id = parseTwinDocId(docId);
    const entry = id && this.#entries.get(id.assetId);
    if (!id || !entry) return undefined;
    const doc = id.epoch === entry.epoch ? entry.doc : entry.pending.get(id.epoch)?.doc;
    return doc && { assetId: id.assetId, entry, doc, epoch: id.epoch };
  }

  /** True when the document a wire id names is held (see {@link TwinReplica.ensureDoc}). */
  holds(docId: string): boolean {
    return this.#find(docId) !== undefined;
  }

  /** Why ensureDoc refused a wire id: an epoch left behind, a later epoch refused, or neither. */
  #refusal(docId: string): "old" | "epoch" | undefined {
    const id = parseTwinDocId(docId);
    const entry = id && this.#entries.get(id.assetId);
    if (!id || !entry) return undefined;
    return id.epoch < entry.epoch ? "old" : "epoch";
  }

  /** Wire ids of documents holding gossip changes parked for missing dependencies. */
  parkedTwins(): Set<string> {
    const ids = new Set<string>();
    for (const [assetId, entry] of this.#entries) {
      if (entry.doc.parkedChanges > 0) ids.add(twinDocId(assetId, entry.epoch));
      for (const [epoch, { doc }] of entry.pending) {
        if (doc.parkedChanges > 0) ids.add(twinDocId(assetId, epoch));
      }
    }
    return ids;
  }

  /** Gossip changes parked for missing dependencies, over all twins. */
  parkedChanges(): number {
    let parked = 0;
    for (const entry of this.#entries.values()) {
      parked += entry.doc.parkedChanges;
      for (const { doc } of entry.pending.values()) parked += doc.parkedChanges;
    }
    return parked;
  }

  /**
   * `newest`: the highest HLC the peer's changes were committed with, or
   * "resolve" when unknown (a sync message): the twin's newest field stands in.
   */
  #noteRemote(assetId: string, newest: Timestamp | "resolve"): void {
    this.#remoteChanged.add(assetId);
    this.#changed(assetId);
    if (newest === "resolve") this.#resolveForClock.add(assetId);
    else this.#noteRemoteHlc(newest);
  }

  #noteRemoteHlc(hlc: Timestamp): void {
    const seen = this.#remoteNewest.get(hlc.node);
    if (!seen || compareTimestamps(hlc, seen) > 0) this.#remoteNewest.set(hlc.node, hlc);
  }

  /**
   * Ids of the twins changed by peers since the last call. Advances the HLC
   * past the newest remote stamp seen, so a local write made after seeing a
   * value outranks it, from the changes' commit stamps (only twins changed by
   * a sync message are resolved for that): most twins are read only when
   * someone asks.
   */
  drainRemoteChanged(): string[] {
    const out = [...this.#remoteChanged];
    this.#remoteChanged.clear();
    for (const assetId of this.#resolveForClock) {
      const hlc = this.#entries.get(assetId)?.doc.resolve().lastHlc;
      if (hlc) this.#noteRemoteHlc(hlc);
    }
    this.#resolveForClock.clear();
    for (const assetId of out) {
      const entry = this.#entry(assetId);
      const factory = entry.doc.meta().factory;
      if (factory && factory !== entry.factory) entry.factory = factory;
    }
    for (const [node, hlc] of this.#remoteNewest) {
      if (node !== this.#components.clock.node) this.#observeRemoteHlc(hlc);
    }
    this.#remoteNewest.clear();
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

  // --- TwinSyncTarget: documents are named by wire id (asset and epoch, see twinDocId) ---

  /**
   * Every held document; later epochs still waiting for their genesis are
   * marked `pending` (a session offers them only when fetching a known gap,
   * so an epoch nobody can serve does not spread through hellos).
   */
  listDocs(): { docId: string; factory: string; pending?: true }[] {
    const out: { docId: string; factory: string; pending?: true }[] = [];
    for (const [assetId, entry] of this.#entries) {
      out.push({ docId: twinDocId(assetId, entry.epoch), factory: entry.factory });
      this.#expirePending(entry);
      for (const epoch of entry.pending.keys()) {
        out.push({ docId: twinDocId(assetId, epoch), factory: entry.factory, pending: true });
      }
    }
    return out;
  }

  /** See {@link PENDING_EPOCH_PATIENCE_MS}. */
  #expirePending(entry: Entry): void {
    const now = performance.now();
    for (const [epoch, { sinceMs }] of entry.pending) {
      if (now - sinceMs > PENDING_EPOCH_PATIENCE_MS) entry.pending.delete(epoch);
    }
  }

  /**
   * Makes sure the document a wire id names is held: a new twin starts empty
   * in epoch 0, and a later epoch (of a new twin too) starts filling beside
   * the current document. False for an epoch left behind (its writers carry
   * their state over themselves), a factory not replicated, or the limit.
   */
  ensureDoc(docId: string, factory: string): boolean {
    const id = parseTwinDocId(docId);
    if (!id) return false;
    let entry = this.#entries.get(id.assetId);
    if (!entry) {
      if (!this.factories.includes(factory) || this.#entries.size >= this.#maxTwins) return false;
      // A twin first heard of in a later epoch starts empty in epoch 0 with that
      // epoch pending: an epoch number alone (one nobody can serve) must not
      // become the twin's current epoch and shut out the real ones.
      this.#add(id.assetId, TwinDoc.empty(id.assetId), factory, 0);
      entry = this.#entries.get(id.assetId)!;
    }
    if (id.epoch <= entry.epoch) return id.epoch === entry.epoch;
    if (entry.pending.has(id.epoch)) return true;
    if (id.epoch - entry.epoch > MAX_EPOCH_LEAP) return false;
    this.#expirePending(entry);
    if (entry.pending.size >= MAX_PENDING_EPOCHS) {
      // Keep the lower epochs: a far one is more likely one nobody can serve.
      const highest = Math.max(...entry.pending.keys());
      if (highest < id.epoch) return false;
      entry.pending.delete(highest);
    }
    entry.pending.set(id.epoch, { doc: TwinDoc.empty(id.assetId), sinceMs: performance.now() });
    return true;
  }

  generateSyncMessage(docId: string, state: TwinSyncState): [TwinSyncState, Uint8Array | null] {
    const found = this.#find(docId);
    return found ? found.doc.generateSyncMessage(state) : [state, null];
  }

  heads(docId: string): string {
    return this.#find(docId)?.doc.heads().join(",") ?? "";
  }

  hasHeads(docId: string, heads: readonly string[]): boolean {
    return this.#find(docId)?.doc.hasChanges(heads) ?? false;
  }

  receiveSyncMessage(docId: string, state: TwinSyncState, message: Uint8Array): TwinSyncState {
    const found = this.#find(docId);
    if (!found) return state; // an epoch left behind during the session
    const { assetId, entry, doc, epoch } = found;
    const before = doc.heads();
    const moved = () => {
      const after = doc.heads();
      return before.length !== after.length || before.some((h, i) => h !== after[i]);
    };
    let next: TwinSyncState;
    try {
      next = doc.receiveSyncMessage(state, message);
    } catch (error) {
      // Automerge may have applied part of the message before refusing the rest.
      if (doc === entry.doc && moved()) this.#noteRemote(assetId, "resolve");
      throw error;
    }
    this.stats.sync_messages_received++;
    if (doc !== entry.doc) {
      this.#adopt(assetId, entry, epoch);
      return next;
    }
    if (moved()) this.#noteRemote(assetId, "resolve");
    return next;
  }
}
