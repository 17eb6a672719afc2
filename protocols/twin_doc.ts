/**
 * One asset's twin as an Automerge document, with the layout that makes every
 * field's merge deterministic, and the validation that keeps peers' garbage
 * out of resolved state.
 *
 * Layout: a root map of keys. Every writing node has its own keys, tagged
 * with a short hash of its node id, so concurrent writers never touch the
 * same key: merging is then a per-key no-conflict insert for Automerge
 * (about 2.5x faster to sync than shared keys) and the merge rule is ours,
 * not Automerge's actor order. A writer's LWW and counter slots, the keys
 * written again and again, are each a small map holding the value under
 * `v`. (Chosen under Automerge 3.5, which applied a change in time linear
 * in the ops of the written object that precede the written key: a one-op
 * change on a twin with 2,500 ops of history took 87 µs in a slot map, 313 µs
 * in one flat map. Automerge 2.2.9, used since, seeks the key: 26 against 21
 * µs. Kept, as stored documents and peers use it.) A slot map is created
 * only where its key holds none, so two maps at one key are concurrent
 * creations, both visible, and resolving reads them all:
 *
 * | key                               | value                    | rule |
 * |-----------------------------------|--------------------------|------|
 * | `meta:kind`, `meta:factory`, ...  | string                   | set once by the creator |
 * | `n:<tag>`                         | node id                  | names the node behind a writer tag |
 * | `f:<field>@<tag>`                 | map, `v`: `"<wall>.<logical>\|<json>"` | LWW: the highest HLC over all writers' slots wins |
 * | `c:<field>@<tag>`                 | map, `v`: `"<wall>.<logical>\|<total>"` | G-counter: one running total per writer; value = sum |
 * | `s:<field>=<element>@<hlc>`       | `1`                      | OR-set: one key per add (tag = full HLC) |
 * | `r:<field>=<element>@<hlc>`       | `1`                      | OR-set: a remove's tombstone for one observed add tag |
 * | `meta:epoch`                      | integer                  | the document's epoch (absent: 0), see {@link TwinDoc.rebase} |
 *
 * (Documents stored before slot maps hold slot values flat, as strings at
 * the key; they are read the same way, and a write replaces one by a map.)
 *
 * A slot holds its writer's latest write, and a writer's HLC only grows, so
 * "highest HLC over all slots" is the highest HLC ever written to the field.
 * Nothing is ever deleted (removes write tombstones), so the keys and their
 * best values form a state that merges by union and per-key maximum: a
 * document's state can be carried into another document ({@link
 * TwinDoc.joinFrom}) any number of times, by anyone, without changing the
 * result. That is what lets an owner replace a long history with a short
 * new document (an epoch) while peers still write into the old one.
 * Should one key still hold concurrent values (a gateway that lost its
 * database and rewrote its slot), `getAll` conflicts resolve the same way:
 * highest HLC for LWW, largest total for counters.
 *
 * Local writes go straight into Automerge's open transaction (so reads see
 * them) and become one Automerge change per {@link TwinDoc.commit}; the
 * service commits every publish interval, so one change carries a batch of
 * field writes.
 *
 * @example
 * ```ts
 * import { TwinDoc } from "./twin_doc.ts";
 * import { HybridLogicalClock } from "./hlc.ts";
 * const clock = new HybridLogicalClock({ node: "gw-a" });
 * const doc = TwinDoc.create("arm-1", { kind: "welding-arm", factory: "f1", owner: "gw-a", ownerNode: "gw-a" }, clock.now(), "gw-a");
 * doc.write([{ op: "set", field: "setpoints.weldCurrentA", value: 180 }], clock.now());
 * doc.commit();
 * console.assert(doc.resolve().fields["setpoints.weldCurrentA"]?.value === 180);
 * ```
 */
import * as Automerge from "@automerge/automerge";
import { assert } from "./assert.ts";
import { concatBytes } from "./bytes.ts";
import { readChangeHeader } from "./change_header.ts";
import {
  compareTimestamps,
  formatTimestamp,
  InvalidTimestampError,
  parseTimestamp,
  type Timestamp,
} from "./hlc.ts";
import {
  type FieldSpec,
  isFieldName,
  TWIN_MODELS,
  type TwinValue,
  type TwinWrite,
  validateValue,
} from "./twin_model.ts";

type Handle = ReturnType<typeof Automerge.getBackend>;
/** Automerge's per-peer sync bookkeeping. */
export type TwinSyncState = ReturnType<typeof Automerge.initSyncState>;

/**
 * Changes from gossip whose dependencies have not arrived yet are parked per
 * document, up to this many. Gossip reorders by a few messages at most; a
 * longer gap means messages were lost, and one sync session (which the caller
 * starts when this overflows) fetches the whole gap more cheaply than parking.
 */
export const MAX_PARKED_CHANGES_PER_DOC = 256;
/** What #deletedAdds finds in a document of a later epoch. */
const NO_DELETES: ReadonlySet<string> = new Set();
/**
 * A sync message that brings at most this many changes has them listed for
 * the next incremental save and scanned for deletes (~17 µs per change) as
 * it arrives; after a larger one both wait (the save asks Automerge, the
 * scan runs at the next #deletedAdds), so a big reconcile is not slowed.
 */
const FEW_SYNC_CHANGES = 64;
/**
 * Unsaved changes a document lists at most (a document nobody saves, as in a
 * test or a benchmark, must not grow a list); past it, saveIncremental()
 * asks Automerge.
 */
const MAX_UNSAVED_LISTED = 1_024;
/** history() returns at most this many entries; it walks the whole change log. */
export const MAX_HISTORY_ENTRIES = 1_000;

/** Document metadata written by the creating (owning) gateway. */
export interface TwinMeta {
  readonly kind: string;
  readonly factory: string;
  /** Gateway name of the owner. */
  readonly owner: string;
  /** HLC node id (peer ID) of the owner. */
  readonly ownerNode: string;
}

/** One resolved field: its value and the HLC of the write that produced it. */
export interface ResolvedField {
  readonly value: TwinValue;
  readonly hlc: Timestamp;
}

/** The merged view of a document. */
export interface ResolvedTwin {
  readonly assetId: string;
  readonly meta: Partial<TwinMeta>;
  readonly fields: Readonly<Record<string, ResolvedField>>;
  /** Highest HLC of any resolved field, or undefined for an empty twin. */
  readonly lastHlc: Timestamp | undefined;
  /** Stored values ignored because they fail the model (written by a buggy or hostile peer). */
  readonly invalidValues: number;
}

/** One entry of a twin's change log. */
export interface TwinHistoryEntry {
  readonly hlc: string;
  readonly origin: string;
  readonly hash: string;
  readonly actor: string;
}

/** Outcome of applying a batch of changes received by gossip. */
export interface ApplyResult {
  applied: number;
  duplicate: number;
  parked: number;
  /** Parked changes pushed out by newer ones (a sync session will refetch them). */
  evicted: number;
  malformed: number;
  invalid: number;
  /**
   * The highest HLC the applied changes were committed with (their commit
   * message; absent when none carries a valid one): what the receiver's
   * clock must move past, without resolving the twin.
   */
  newestHlc?: Timestamp;
}

const META_KEYS = {
  kind: "meta:kind",
  factory: "meta:factory",
  owner: "meta:owner",
  ownerNode: "meta:ownerNode",
} as const;

interface CommitMessage {
  h: string;
  o: string;
}

/** A gossip change waiting for its dependencies, with what applying it needs. */
interface ParkedChange {
  change: Uint8Array;
  deps: string[];
  /** Root keys it sets, or makes a slot map at. */
  keys: string[];
  /** Slot maps it creates: map id → key. */
  creates: [string, string][];
  /** Maps it writes a slot value into (that they are slot maps is checked when it applies). */
  writesInto: string[];
  /** Its commit message's HLC, if valid. */
  hlc: Timestamp | undefined;
}

/** See the module documentation. */
export class TwinDoc {
  readonly assetId: string;
  #doc: Automerge.Doc<unknown>;
  #handle: Handle;
  #pendingHlc: Timestamp | undefined;
  #pendingOrigin = "";
  #parked = new Map<string, ParkedChange>();
  #unpublished: Uint8Array[] = [];
  /**
   * Changes in the document not handed to storage yet, in the order they
   * entered: their bytes are what saveIncremental() returns, without asking
   * Automerge to encode them again (~25 µs a call, three calls per twin
   * write across a 3-gateway factory). Bounded; see #unsavedUnlisted.
   */
  #unsaved: Uint8Array[] = [];
  /**
   * Changes entered that #unsaved does not list (a sync message, one
   * Automerge had held back, a failed apply, or more than the bound): the
   * next saveIncremental() asks Automerge for everything since its own last
   * save instead, which repeats some stored changes (harmless on load).
   */
  #unsavedUnlisted = false;
  /**
   * Automerge may hold changes back, waiting for a dependency: only a sync
   * message or a load can leave it so (gossip parks its own changes until
   * they are ready). While it is, any apply may release them.
   */
  #mayHoldBack = false;
  /** resolve() of the current state; dropped by every change (reads poll far more often than writes land). */
  #resolved: ResolvedTwin | undefined;
  #meta: Partial<TwinMeta> | undefined;
  /**
   * Per-key results of resolving, kept until that key is written: reading a
   * slot out of Automerge (getAll + parse) is most of a resolve, and a change
   * touches a few keys of the ~30 a twin has.
   */
  #memo = new Map<string, KeyMemo>();
  /** Model kind the memo was built for (slot results depend on the model). */
  #memoKind: string | undefined;
  /**
   * The root map's keys, kept up to date by local puts and applied gossip
   * (which only sets keys, see changeOpsAreValid) so that resolving after a
   * change does not list the map (Automerge walks its history to do so);
   * undefined until first needed and after a sync message, which may do anything.
   */
  #keys: Set<string> | undefined;
  /**
   * Slot maps known to be in the document: map id → the key it was made at.
   * Automerge never removes an object (one overwritten at its key is hidden,
   * and writing into it is harmless), so an entry stays true.
   */
  #slotMaps = new Map<string, string>();
  /** Writers whose `n:` key is known to name them (checked once, not at every write). */
  #nodesNamed = new Set<string>();
  /**
   * What {@link TwinDoc.#deletedAdds} found in the changes up to `heads`.
   * Local writes and gossip (which refuses deletes) never delete, so for a
   * document made here that stays all there is until a load, or a sync
   * message that brings changes, makes it `stale`: then the changes after
   * `heads` are scanned at the next call.
   */
  #deleteScan: { heads: string[]; deleted: Set<string>; stale: boolean } = {
    heads: [],
    deleted: new Set(),
    stale: false,
  };

  private constructor(assetId: string, doc: Automerge.Doc<unknown>) {
    this.assetId = assetId;
    this.#doc = doc;
    this.#handle = Automerge.getBackend(doc);
    this.#stopPatchLog();
  }

  /**
   * Stops Automerge recording patches. Its JS layer turns the record on when
   * it loads a document or takes a sync message, to update the materialized
   * document it keeps; the twin is read through the handle instead. On,
   * every op applied afterwards is logged until the next sync message (memory
   * that grows with the writes) and applying costs more: a 100,000-write
   * reconcile took 7.3 s with it on, 4.0 s off (Automerge 2.2.9).
   */
  #stopPatchLog(): void {
    this.#handle.resetDiffCursor();
  }

  /** A new twin with its metadata, committed as the genesis change. */
  static create(assetId: string, meta: TwinMeta, hlc: Timestamp, origin: string): TwinDoc {
    const doc = new TwinDoc(assetId, Automerge.init());
    doc.writeMeta(meta, hlc, origin);
    return doc;
  }

  /** Writes the metadata and commits it. */
  writeMeta(meta: TwinMeta, hlc: Timestamp, origin: string): void {
    this.#changed();
    for (const [name, key] of Object.entries(META_KEYS)) {
      this.#put(key, meta[name as keyof TwinMeta]);
    }
    this.#notePending(hlc, origin);
    this.commit();
  }

  /** An empty twin, to be filled by sync or gossip. */
  static empty(assetId: string): TwinDoc {
    return new TwinDoc(assetId, Automerge.init());
  }

  /** A twin from stored chunks (a snapshot followed by incremental saves). */
  static load(assetId: string, chunks: readonly Uint8Array[]): TwinDoc {
    if (chunks.length === 0) return TwinDoc.empty(assetId);
    const doc = new TwinDoc(assetId, Automerge.load(concatBytes(chunks)));
    // Everything loaded is already stored: Automerge's next incremental save starts here.
    doc.#handle.saveIncremental();
    doc.#mayHoldBack = true;
    doc.#deleteScan.stale = true; // written by whatever version stored it
    return doc;
  }

  /** Uncommitted operations in the open batch. */
  get pendingOps(): number {
    return this.#handle.pendingOps();
  }

  /** Parked gossip changes waiting for dependencies. */
  get parkedChanges(): number {
    return this.#parked.size;
  }

  /** Metadata, as far as it has arrived. */
  meta(): Partial<TwinMeta> {
    if (this.#meta) return this.#meta;
    const out: Record<string, string> = {};
    for (const [name, key] of Object.entries(META_KEYS)) {
      const value = this.#handle.get("_root", key);
      if (typeof value === "string") out[name] = value;
    }
    this.#meta = Object.freeze(out);
    return this.#meta;
  }

  /** Drops the resolved view (called before every mutation; see also #forget). */
  #changed(): void {
    this.#resolved = undefined;
  }

  /** Drops what was derived from one key, which is being written. */
  #forget(key: string): void {
    this.#memo.delete(key);
    if (META_KEY_SET.has(key)) this.#meta = undefined;
    if (key.startsWith("n:")) this.#nodesNamed.clear();
  }

  /** Drops everything derived from the document's state. */
  #forgetAll(): void {
    this.#changed();
    this.#memo.clear();
    this.#meta = undefined;
    this.#keys = undefined;
    this.#nodesNamed.clear();
  }

  /** See {@link TwinDoc.#keys}. */
  #liveKeys(): ReadonlySet<string> {
    this.#keys ??= new Set(this.#handle.keys("_root"));
    return this.#keys;
  }

  /** Applies validated writes to the open batch, all stamped `hlc` (by node `hlc.node`). */
  write(writes: readonly TwinWrite[], hlc: Timestamp, origin = ""): void {
    this.#changed();
    const tag = writerTag(hlc.node);
    if (!this.#nodesNamed.has(hlc.node)) {
      if (this.#handle.get("_root", `n:${tag}`) !== hlc.node) this.#put(`n:${tag}`, hlc.node);
      this.#nodesNamed.add(hlc.node);
    }
    const stamp = shortStamp(hlc);
    for (const write of writes) {
      assert(isFieldName(write.field), "validated writes name a valid field");
      switch (write.op) {
        case "set":
          this.#putSlot(`f:${write.field}@${tag}`, `${stamp}|${JSON.stringify(write.value)}`);
          break;
        case "increment": {
          const key = `c:${write.field}@${tag}`;
          const total = this.#counterSlot(key, hlc.node)?.total ?? 0;
          this.#putSlot(key, `${stamp}|${total + write.delta}`);
          break;
        }
        case "add":
          this.#put(`s:${write.field}=${write.element}@${formatTimestamp(hlc)}`, 1);
          break;
        case "remove":
          for (const tag of this.setTags(write.field, write.element)) {
            this.#put(`r:${write.field}=${write.element}@${tag}`, 1);
          }
          break;
      }
    }
    this.#notePending(hlc, origin);
  }

  #put(key: string, value: string | number): void {
    this.#handle.put("_root", key, value);
    this.#forget(key);
    this.#keys?.add(key);
  }

  /** Writes a slot's value into its map, first making the map where the key holds none. */
  #putSlot(key: string, raw: string): void {
    const current = this.#handle.getWithType("_root", key);
    if (current?.[0] === "map") {
      this.#handle.put(current[1] as string, SLOT_VALUE_KEY, raw);
    } else {
      const map = this.#handle.putObject("_root", key, { [SLOT_VALUE_KEY]: raw });
      this.#slotMaps.set(map, key);
    }
    this.#forget(key);
    this.#keys?.add(key);
  }

  /** Writes a key's stored form as carried from another document (see #carried). */
  #putCarried(key: string, raw: string | number): void {
    if (isSlotKey(key)) this.#putSlot(key, String(raw));
    else this.#put(key, raw);
  }

  /**
   * The slot key `map` was made at, when it is a slot map in the document;
   * undefined otherwise. An unknown map has every slot listed.
   */
  #slotKeyOf(map: string): string | undefined {
    if (!this.#slotMaps.has(map)) {
      for (const key of this.#liveKeys()) {
        if (!isSlotKey(key)) continue;
        for (const [type, id] of this.#handle.getAll("_root", key)) {
          if (type === "map") this.#slotMaps.set(id as string, key);
        }
      }
    }
    return this.#slotMaps.get(map);
  }

  /**
   * Every stored value of a slot: `v` in each of its maps (two replicas
   * may have made one concurrently), or a flat string (older documents).
   */
  #slotValues(key: string): string[] {
    const values: string[] = [];
    for (const [type, value] of this.#handle.getAll("_root", key)) {
      if (type === "str") values.push(value as string);
      if (type !== "map") continue;
      this.#slotMaps.set(value as string, key);
      for (const [inner, raw] of this.#handle.getAll(value as string, SLOT_VALUE_KEY)) {
        if (inner === "str") values.push(raw as string);
      }
    }
    return values;
  }

  #notePending(hlc: Timestamp, origin: string): void {
    if (!this.#pendingHlc || compareTimestamps(hlc, this.#pendingHlc) > 0) this.#pendingHlc = hlc;
    if (origin) this.#pendingOrigin = origin;
  }

  /**
   * Local changes committed since the last call, oldest first: to gossip.
   * (Commits also happen implicitly before sync and remote changes, so this
   * is how the publisher finds all of them.)
   */
  takeUnpublished(): Uint8Array[] {
    const out = this.#unpublished;
    this.#unpublished = [];
    return out;
  }

  /** Tags of an or-set element currently present (one per add without a tombstone). */
  setTags(field: string, element: string): string[] {
    const prefix = `s:${field}=${element}@`;
    const keys = [...this.#liveKeys()];
    const removed = new Set(keys.filter((k) => k.startsWith(`r:${field}=${element}@`)));
    return keys.filter((k) => k.startsWith(prefix) && !removed.has(`r:${k.slice(2)}`)).map((k) =>
      k.slice(prefix.length)
    );
  }

  /**
   * Closes the open batch into one Automerge change; returns its bytes or
   * null when nothing was pending.
   */
  commit(): Uint8Array | null {
    const hlc = this.#pendingHlc;
    this.#pendingHlc = undefined;
    if (this.#handle.pendingOps() === 0 || !hlc) return null;
    const message: CommitMessage = { h: formatTimestamp(hlc), o: this.#pendingOrigin };
    // Change time stays 0: HLCs order twin writes, and a constant keeps changes byte-stable.
    const hash = this.#handle.commit(JSON.stringify(message), 0);
    assert(hash !== null, "a commit with pending ops produces a change");
    const change = this.#handle.getLastLocalChange();
    assert(change !== null, "the change just committed is retrievable");
    this.#unpublished.push(change);
    this.#noteUnsaved([change]);
    return change;
  }

  /** Current heads (hashes of the latest changes). */
  heads(): string[] {
    this.commit();
    return this.#handle.getHeads();
  }

  /**
   * Applies changes received by gossip. Malformed or model-violating changes
   * are dropped; changes whose dependencies are missing are parked (bounded)
   * until they arrive.
   */
  applyChanges(changes: readonly Uint8Array[]): ApplyResult {
    this.commit();
    const result: ApplyResult = {
      applied: 0,
      duplicate: 0,
      parked: 0,
      evicted: 0,
      malformed: 0,
      invalid: 0,
    };
    for (const change of changes) {
      let decoded: Automerge.DecodedChange;
      try {
        decoded = Automerge.decodeChange(change);
      } catch {
        result.malformed++;
        continue;
      }
      if (!changeOpsAreValid(decoded)) {
        result.invalid++;
        continue;
      }
      if (this.#has(decoded.hash) || this.#parked.has(decoded.hash)) {
        result.duplicate++;
        continue;
      }
      if (this.#parked.size >= MAX_PARKED_CHANGES_PER_DOC) {
        const oldest = this.#parked.keys().next().value as string;
        this.#parked.delete(oldest);
        result.evicted++;
      }
      const hlc = parseHlc(parseCommitMessage(decoded.message)?.h ?? "");
      this.#parked.set(decoded.hash, { change, deps: decoded.deps, ...opTargets(decoded), hlc });
      result.parked++;
    }
    const applied = this.#applyReadyParked();
    result.applied = applied.count;
    result.invalid += applied.invalid;
    if (applied.newestHlc) result.newestHlc = applied.newestHlc;
    result.parked = Math.max(0, result.parked - result.applied - applied.invalid);
    return result;
  }

  /**
   * Applies every parked change whose dependencies are all present; bounded
   * by the park size. One that writes into a map that is no slot map here is
   * dropped as invalid (Automerge panics on a write into a missing object).
   */
  #applyReadyParked(): { count: number; invalid: number; newestHlc?: Timestamp } {
    let count = 0;
    let invalid = 0;
    let newestHlc: Timestamp | undefined;
    for (let pass = 0; pass <= MAX_PARKED_CHANGES_PER_DOC && this.#parked.size > 0; pass++) {
      const ready: Uint8Array[] = [];
      const keys: string[] = [];
      // A gossiped change usually builds on the current heads; the other
      // dependencies of every parked change are looked up in one call.
      const heads = new Set(this.#handle.getHeads());
      const lacking = this.#lacking([
        ...new Set([...this.#parked.values()].flatMap((p) => p.deps.filter((d) => !heads.has(d)))),
      ]);
      const made: [string, string][] = [];
      for (const [hash, parked] of this.#parked) {
        if (!parked.deps.every((dep) => !lacking.has(dep))) continue;
        this.#parked.delete(hash);
        // An honest change writes into maps it makes or that its causal
        // past made, so all of them are here once its dependencies are.
        const own = new Map(parked.creates);
        const slots = parked.writesInto.map((map) => own.get(map) ?? this.#slotKeyOf(map));
        if (slots.includes(undefined)) {
          invalid++;
          continue;
        }
        made.push(...parked.creates);
        ready.push(parked.change);
        keys.push(...parked.keys, ...slots as string[]);
        if (parked.hlc && (!newestHlc || compareTimestamps(parked.hlc, newestHlc) > 0)) {
          newestHlc = parked.hlc;
        }
      }
      if (ready.length === 0) break;
      this.#changed();
      for (const key of keys) this.#forget(key);
      try {
        this.#handle.applyChanges(ready);
      } catch (error) {
        this.#keys = undefined; // whatever Automerge kept, the map is listed afresh
        this.#unsavedUnlisted = true; // and whatever it applied is found by Automerge
        this.#mayHoldBack = true;
        throw error;
      }
      this.#noteUnsaved(ready);
      if (this.#mayHoldBack) this.#unsavedUnlisted = true; // it may have released some
      for (const key of keys) this.#keys?.add(key);
      // Maps of changes Automerge held back are not in yet: listed when met.
      if (!this.#holdsBack()) {
        for (const [map, key] of made) this.#slotMaps.set(map, key);
      }
      count += ready.length;
    }
    return newestHlc ? { count, invalid, newestHlc } : { count, invalid };
  }

  /** True when every named change is in the document (parked ones are not). */
  hasChanges(hashes: readonly string[]): boolean {
    return this.#lacking(hashes).size === 0;
  }

  #has(hash: string): boolean {
    return this.#lacking([hash]).size === 0;
  }

  /**
   * Which of `hashes` the document lacks. `getMissingDeps` answers with
   * hashes only (~1 µs); reading a change's metadata to learn it is there
   * costs ~12 µs. But it counts changes Automerge holds back (waiting for a
   * dependency, as a sync message or stored chunks can leave them) as
   * present, and names their missing dependencies: it is used only when
   * nothing is held back, the usual case (gossip parks its own changes).
   */
  #lacking(hashes: readonly string[]): Set<string> {
    if (hashes.length === 0) return new Set();
    if (this.#holdsBack()) {
      return new Set(hashes.filter((hash) => this.#handle.getChangeByHash(hash) === null));
    }
    const missing = new Set(this.#handle.getMissingDeps([...hashes]));
    return new Set(hashes.filter((hash) => missing.has(hash)));
  }

  /** Changes after `heads` (known to hold no delete beyond the scan's) entered unchecked. */
  #deleteScanFrom(heads: string[]): void {
    if (!this.#deleteScan.stale) this.#deleteScan = { ...this.#deleteScan, heads, stale: true };
  }

  /** True when Automerge holds changes back, waiting for a dependency. */
  #holdsBack(): boolean {
    if (!this.#mayHoldBack) return false;
    this.#mayHoldBack = this.#handle.getMissingDeps([]).length > 0;
    return this.#mayHoldBack;
  }

  /** Automerge sync: the next message for a peer, or null when it has everything. */
  generateSyncMessage(state: TwinSyncState): [TwinSyncState, Uint8Array | null] {
    this.commit();
    return Automerge.generateSyncMessage(this.#doc, state);
  }

  /**
   * Automerge sync: applies a peer's message. Throws {@link TwinSyncMessageError}
   * when it does not decode (the document is unchanged then) or Automerge
   * refuses it (which it may do after applying part of it). Unlike gossip changes, the contents are not checked op by op before
   * applying (a sync message may carry a whole compressed document, and
   * decoding every change would halve reconcile speed): values and keys that
   * break the layout are ignored, deterministically on every replica, when the
   * twin is resolved, and counted as `invalidValues`.
   */
  receiveSyncMessage(state: TwinSyncState, message: Uint8Array): TwinSyncState {
    this.commit();
    try {
      Automerge.decodeSyncMessage(message);
    } catch (cause) {
      throw new TwinSyncMessageError(this.assetId, "does not decode", { cause });
    }
    const headsBefore = this.#handle.getHeads();
    const changesBefore = this.changeCount();
    let next: [Automerge.Doc<unknown>, TwinSyncState, null];
    try {
      // The JS-level call rebuilds its materialized document (never read
      // here) from the current state, as the patch log is off: a cost in the
      // twin's live keys, not in its history.
      next = Automerge.receiveSyncMessage(this.#doc, state, message);
    } catch (cause) {
      // Automerge may have applied part of the message before refusing the
      // rest: nothing derived from the old state is kept.
      this.#forgetAll();
      this.#deleteScanFrom(headsBefore);
      this.#unsavedUnlisted = true;
      this.#mayHoldBack = true;
      throw new TwinSyncMessageError(this.assetId, "was refused by Automerge", { cause });
    }
    this.#forgetAll(); // a sync message may touch any key
    this.#doc = next[0];
    this.#handle = Automerge.getBackend(this.#doc);
    this.#stopPatchLog();
    this.#mayHoldBack = true;
    const brought = this.changeCount() - changesBefore;
    const few = brought <= FEW_SYNC_CHANGES;
    if (brought > 0) {
      // Listed for the next save. Asking Automerge instead would repeat
      // every change since its own last save (the twin's last compaction).
      if (few) this.#noteUnsaved(this.#handle.getChanges(headsBefore));
      else this.#unsavedUnlisted = true;
    }
    // Its changes were not checked op by op: they may delete (an old
    // version's removes), and so may what Automerge holds back for later.
    if (brought > 0 || this.#holdsBack()) {
      const upToDate = !this.#deleteScan.stale;
      this.#deleteScanFrom(headsBefore);
      // A few changes cost little to scan now. Left stale, the scan would
      // decode every change after them later, gossip's too: 5-8 ms per twin
      // at its first compaction after the catch-up sync of every connection.
      if (upToDate && few && !this.#holdsBack()) this.#deletedAdds();
    }
    this.#applyReadyParked();
    return next[1];
  }

  /**
   * Bytes to append to storage: every change since the previous save, as
   * change chunks (loaded after the snapshot and earlier chunks).
   */
  saveIncremental(): Uint8Array {
    this.commit();
    const listed = this.#unsaved;
    this.#unsaved = [];
    if (this.#unsavedUnlisted) {
      this.#unsavedUnlisted = false;
      return this.#handle.saveIncremental();
    }
    return concatBytes(listed);
  }

  /** A compacted snapshot of the whole document; the next incremental save starts after it. */
  save(): Uint8Array {
    this.commit();
    this.#unsaved = [];
    this.#unsavedUnlisted = false;
    return this.#handle.save();
  }

  #noteUnsaved(changes: readonly Uint8Array[]): void {
    if (this.#unsavedUnlisted) return;
    if (this.#unsaved.length + changes.length > MAX_UNSAVED_LISTED) {
      this.#unsaved = [];
      this.#unsavedUnlisted = true;
      return;
    }
    this.#unsaved.push(...changes);
  }

  /**
   * Does now what the twin's next epoch start would otherwise do then:
   * decode the changes that entered unchecked (see #deletedAdds). Cheap when
   * there are none. Called at a time of the caller's choosing, so that twins
   * passing the epoch bound together do not all decode at once.
   */
  prepareEpoch(): void {
    this.#deletedAdds();
  }

  /** Automerge changes in the document. */
  changeCount(): number {
    return this.#handle.stats().numChanges;
  }

  /**
   * Operations in the document's history. Applying a peer's change costs
   * time that grows with them (Automerge walks the ops of the written key:
   * every slot's history and the root map's OR-set keys grow without
   * bound), which is why owners start a new epoch once this passes a bound.
   */
  opCount(): number {
    return this.#handle.stats().numOps;
  }

  /** Keys of the root map: the state's size (what a new epoch's genesis holds, about). */
  keyCount(): number {
    return this.#liveKeys().size;
  }

  /** The epoch this document's genesis names (0 when absent). */
  storedEpoch(): number {
    const value = this.#handle.get("_root", EPOCH_KEY);
    return typeof value === "number" && Number.isSafeInteger(value) && value > 0 ? value : 0;
  }

  /**
   * A new document for `epoch` holding `from`'s state (metadata and every
   * key's best valid value, see {@link TwinDoc.joinFrom}) committed as one
   * genesis change: the same twin with a one-change history. OR-set adds
   * removed by a key delete (how removes were written before tombstones, and
   * what a peer still doing so sends) get their tombstone here, or a replica
   * that never saw the delete would bring the element back.
   */
  static rebase(from: TwinDoc, epoch: number, hlc: Timestamp, origin: string): TwinDoc {
    assert(Number.isSafeInteger(epoch) && epoch > from.storedEpoch(), "epochs only grow");
    from.commit();
    const doc = new TwinDoc(from.assetId, Automerge.init());
    for (const key of from.#liveKeys()) {
      if (key === EPOCH_KEY) continue;
      const value = from.#carried(key);
      if (value !== undefined) doc.#putCarried(key, value.raw);
    }
    for (const key of from.#deletedAdds()) doc.#put(`r:${key.slice(2)}`, 1);
    doc.#put(EPOCH_KEY, epoch);
    doc.#notePending(hlc, origin);
    doc.commit();
    return doc;
  }

  /**
   * Carries `older`'s state into this document (left in the open batch):
   * every key of the layout whose best valid value there beats this
   * document's, or is missing here, is written (and adds `older` removed by
   * a key delete get a tombstone). Returns how many keys were written; 0 when
   * this document already holds everything `older` does. Idempotent, and
   * safe to run by any number of replicas: the state only merges upward.
   */
  joinFrom(older: TwinDoc, hlc: Timestamp, origin: string): number {
    older.commit();
    let written = 0;
    const write = (key: string, raw: string | number) => {
      if (written++ === 0) this.#changed();
      this.#putCarried(key, raw);
    };
    for (const key of older.#liveKeys()) {
      if (META_KEY_SET.has(key)) continue; // this epoch's genesis holds the metadata
      const theirs = older.#carried(key);
      if (theirs === undefined) continue;
      const ours = this.#carried(key);
      if (ours === undefined || outranks(theirs, ours)) write(key, theirs.raw);
    }
    for (const key of older.#deletedAdds()) {
      const tombstone = `r:${key.slice(2)}`;
      if (this.#handle.get("_root", tombstone) === undefined) write(tombstone, 1);
    }
    if (written > 0) this.#notePending(hlc, origin);
    return written;
  }

  /**
   * The value of a layout key to carry into another document, chosen by the
   * rules resolve() reads it with: LWW and counter slots by their writer's
   * stamp or total among the values that parse and pass the model; other
   * keys by Automerge's own pick. Undefined when no value is valid: garbage
   * is never carried, and never displaces a valid value.
   */
  #carried(key: string): Carried | undefined {
    const parsed = parseKey(key);
    if (!parsed) return undefined;
    if (parsed.kind !== "lww" && parsed.kind !== "counter") {
      const raw = this.#handle.get("_root", key);
      return typeof raw === "string" || typeof raw === "number" ? { raw } : undefined;
    }
    const node = this.#handle.get("_root", `n:${parsed.tag}`);
    if (typeof node !== "string" || writerTag(node) !== parsed.tag) return undefined;
    if (parsed.kind === "counter") {
      const slot = this.#counterSlot(key, node);
      return slot && { raw: slot.raw, total: slot.total };
    }
    const model = TWIN_MODELS.get(this.meta().kind ?? "");
    const spec = model && Object.hasOwn(model.fields, parsed.field)
      ? model.fields[parsed.field]
      : undefined;
    const slot = spec && this.#lwwSlot(key, node, parsed.field, spec);
    return slot && { raw: slot.raw, hlc: slot.hlc };
  }

  /**
   * OR-set add keys this document's history deleted (removes before
   * tombstones). Only epoch 0 can hold such deletes: later epochs are made by
   * this version, whose gossip refuses deletes and whose wire older versions
   * cannot speak. Finding them means decoding changes (~17 µs each, 34 ms for
   * 2,000 ops), so only those a load or sync may have brought are scanned,
   * each once (see #deleteScan and prepareEpoch()).
   */
  #deletedAdds(): ReadonlySet<string> {
    const scan = this.#deleteScan;
    if (!scan.stale) return scan.deleted;
    if (this.storedEpoch() !== 0) return NO_DELETES;
    // A change held back for a missing dependency is not in the scan; should
    // it enter later (by gossip completing it), the next call scans again.
    const complete = !this.#holdsBack();
    const heads = this.#handle.getHeads();
    const deleted = scan.deleted;
    for (const change of this.#handle.getChanges(scan.heads)) {
      let decoded: Automerge.DecodedChange;
      try {
        decoded = Automerge.decodeChange(change);
      } catch {
        continue;
      }
      for (const op of decoded.ops) {
        if (op.action !== "del" || typeof op.key !== "string") continue;
        if (parseKey(op.key)?.kind === "set") deleted.add(op.key);
      }
    }
    if (complete) this.#deleteScan = { heads, deleted, stale: false };
    return deleted;
  }

  /**
   * The merged state, with stored values that fail the model ignored (and
   * counted). Cached until the document changes: callers share the (frozen) object.
   */
  resolve(): ResolvedTwin {
    this.#resolved ??= this.#resolveNow();
    return this.#resolved;
  }

  #resolveNow(): ResolvedTwin {
    const meta = this.meta();
    const model = meta.kind ? TWIN_MODELS.get(meta.kind) : undefined;
    if (meta.kind !== this.#memoKind) {
      this.#memo.clear();
      this.#memoKind = meta.kind;
    }
    // Filled in place rather than rebuilt as a new map of every key per
    // resolve: entries exist only for live keys, and only a sync message,
    // which clears the memo, can delete one.
    const keys = this.#liveKeys();
    const memo = this.#memo;
    for (const key of keys) if (!memo.has(key)) memo.set(key, { parsed: parseKey(key) });
    assert(memo.size === keys.size, "the resolve memo holds exactly the live keys");
    const nodes = new Map<string, string>();
    for (const [key, entry] of memo) {
      if (entry.parsed?.kind !== "node") continue;
      if (!("node" in entry)) {
        const node = this.#handle.get("_root", key);
        entry.node = typeof node === "string" && writerTag(node) === key.slice(2)
          ? node
          : undefined;
      }
      if (entry.node !== undefined) nodes.set(key.slice(2), entry.node);
    }
    const fields: Record<string, ResolvedField> = {};
    const counters = new Map<string, { total: number; hlc: Timestamp }>();
    const sets = new Map<string, { elements: Set<string>; hlc: Timestamp }>();
    let invalidValues = 0;
    const tombstones = new Set<string>();
    for (const [key, entry] of memo) {
      if (entry.parsed?.kind === "tombstone") tombstones.add(key.slice(2));
    }
    for (const [key, entry] of memo) {
      const parsed = entry.parsed;
      if (!parsed || parsed.kind === "meta" || parsed.kind === "node") {
        if (!parsed) invalidValues++;
        continue;
      }
      const spec = model && Object.hasOwn(model.fields, parsed.field)
        ? model.fields[parsed.field]
        : undefined;
      if (!spec || spec.crdt !== CRDT_OF_KEY[parsed.kind]) {
        invalidValues++;
        continue;
      }
      if (parsed.kind === "tombstone") continue;
      if (parsed.kind === "set") {
        if (!(spec.elements ?? []).includes(parsed.element)) {
          invalidValues++;
          continue;
        }
        if (tombstones.has(key.slice(2))) continue; // removed
        const set = sets.get(parsed.field) ?? { elements: new Set(), hlc: parsed.hlc };
        set.elements.add(parsed.element);
        if (compareTimestamps(parsed.hlc, set.hlc) > 0) set.hlc = parsed.hlc;
        sets.set(parsed.field, set);
        continue;
      }
      const node = nodes.get(parsed.tag);
      if (node === undefined) {
        invalidValues++;
        continue;
      }
      if (entry.slotNode !== node) {
        entry.slotNode = node;
        // Kept without the stored form (`raw`): the memo feeds the resolved view.
        if (parsed.kind === "lww") {
          const slot = this.#lwwSlot(key, node, parsed.field, spec);
          entry.slot = slot && { value: slot.value, hlc: slot.hlc };
        } else {
          const slot = this.#counterSlot(key, node);
          entry.slot = slot && { total: slot.total, hlc: slot.hlc };
        }
      }
      const slot = entry.slot;
      if (!slot) {
        invalidValues++;
        continue;
      }
      if (parsed.kind === "lww") {
        const best = slot as ResolvedField;
        const current = fields[parsed.field];
        if (!current || compareTimestamps(best.hlc, current.hlc) > 0) fields[parsed.field] = best;
      } else {
        const { total, hlc } = slot as CounterSlot;
        const sum = counters.get(parsed.field);
        counters.set(parsed.field, {
          total: (sum?.total ?? 0) + total,
          hlc: sum && compareTimestamps(sum.hlc, hlc) > 0 ? sum.hlc : hlc,
        });
      }
    }
    for (const [field, { total, hlc }] of counters) fields[field] = { value: total, hlc };
    for (const [field, { elements, hlc }] of sets) {
      fields[field] = { value: [...elements].sort(), hlc };
    }
    let lastHlc: Timestamp | undefined;
    for (const { hlc } of Object.values(fields)) {
      if (!lastHlc || compareTimestamps(hlc, lastHlc) > 0) lastHlc = hlc;
    }
    for (const field of Object.values(fields)) {
      if (Array.isArray(field.value)) Object.freeze(field.value);
      Object.freeze(field);
    }
    return Object.freeze({
      assetId: this.assetId,
      meta,
      fields: Object.freeze(fields),
      lastHlc,
      invalidValues,
    });
  }

  /**
   * The highest-HLC valid value among Automerge's concurrent values of one
   * writer slot, with its stored form (`raw`). Resolving and carrying into a
   * new epoch both read slots here, so they agree on what is valid.
   */
  #lwwSlot(
    key: string,
    node: string,
    field: string,
    spec: FieldSpec,
  ): (ResolvedField & { raw: string }) | undefined {
    let best: (ResolvedField & { raw: string }) | undefined;
    for (const raw of this.#slotValues(key)) {
      const entry = parseStamped(raw, node);
      if (!entry) continue;
      let value: TwinValue;
      try {
        value = validateValue(field, spec, entry.json);
      } catch {
        continue;
      }
      if (!best || compareTimestamps(entry.hlc, best.hlc) > 0) {
        best = { value, hlc: entry.hlc, raw };
      }
    }
    return best;
  }

  /**
   * A writer's counter slot, with its stored form; concurrent totals (a
   * writer that lost its state, or two epochs' copies) merge by max.
   */
  #counterSlot(key: string, node: string): (CounterSlot & { raw: string }) | undefined {
    let best: (CounterSlot & { raw: string }) | undefined;
    for (const raw of this.#slotValues(key)) {
      const entry = parseStamped(raw, node);
      const total = entry?.json;
      if (!entry || typeof total !== "number" || !Number.isSafeInteger(total) || total < 0) {
        continue;
      }
      if (!best || total > best.total) best = { total, hlc: entry.hlc, raw };
    }
    return best;
  }

  /** The most recent `limit` changes by HLC, with their origin gateway. */
  history(limit: number): TwinHistoryEntry[] {
    this.commit();
    const bounded = Math.max(0, Math.min(Math.floor(limit), MAX_HISTORY_ENTRIES));
    const entries: TwinHistoryEntry[] = [];
    for (const change of this.#handle.getChanges([])) {
      const meta = readChangeHeader(change) ?? decodedOrUndefined(change);
      const message = parseCommitMessage(meta?.message ?? null);
      if (!meta || !message) continue;
      entries.push({ hlc: message.h, origin: message.o, hash: meta.hash, actor: meta.actor });
    }
    entries.sort((a, b) => (a.hlc < b.hlc ? -1 : a.hlc > b.hlc ? 1 : 0));
    return entries.slice(Math.max(0, entries.length - bounded));
  }
}

/** A sync message that cannot be applied; the session with that peer is abandoned. */
export class TwinSyncMessageError extends Error {
  override name = "TwinSyncMessageError";
  constructor(assetId: string, problem: string, options?: ErrorOptions) {
    super(`sync message for twin "${assetId}" ${problem}`, options);
  }
}

/** A key's value to carry into another epoch, with what orders it (slots only). */
interface Carried {
  readonly raw: string | number;
  /** LWW slots: the write's HLC. */
  readonly hlc?: Timestamp;
  /** Counter slots: the writer's running total. */
  readonly total?: number;
}

/** True when `a` wins over `b` for the same key: a later HLC, a larger total; never for other keys. */
function outranks(a: Carried, b: Carried): boolean {
  if (a.hlc && b.hlc) return compareTimestamps(a.hlc, b.hlc) > 0;
  if (a.total !== undefined && b.total !== undefined) return a.total > b.total;
  return false;
}

/** A writer's counter slot: its running total and the HLC of its last increment. */
interface CounterSlot {
  readonly total: number;
  readonly hlc: Timestamp;
}

/** What resolving learned about one key; dropped when the key is written. */
interface KeyMemo {
  readonly parsed: ParsedKey | undefined;
  /** Node keys: the node id stored (undefined when it does not match the tag). */
  node?: string | undefined;
  /** Slot keys: the slot read for this writer node (undefined = not read yet). */
  slotNode?: string;
  slot?: ResolvedField | CounterSlot | undefined;
}

type ParsedKey =
  | { kind: "meta" }
  | { kind: "node" }
  | { kind: "lww"; field: string; tag: string }
  | { kind: "counter"; field: string; tag: string }
  | { kind: "set"; field: string; element: string; hlc: Timestamp }
  | { kind: "tombstone"; field: string; element: string; hlc: Timestamp };

const CRDT_OF_KEY = {
  lww: "lww",
  counter: "g-counter",
  set: "or-set",
  tombstone: "or-set",
} as const;
/** The document's epoch; written by {@link TwinDoc.rebase} only (absent: epoch 0). */
const EPOCH_KEY = "meta:epoch";
/** The key of a slot map that holds the slot's value. */
const SLOT_VALUE_KEY = "v";
const META_KEY_SET: ReadonlySet<string> = new Set([...Object.values(META_KEYS), EPOCH_KEY]);
const TAG_PATTERN = /^[0-9a-z]{1,12}$/;

/**
 * A short, stable tag for a writer's node id (53-bit FNV-style hash, base 36,
 * ≤ 11 chars). Keys carry the tag instead of a 52-char peer ID: key length
 * is paid on every op. Two nodes colliding would share slots; at 2^-53 per
 * pair that is ignored.
 */
export function writerTag(node: string): string {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < node.length; i++) {
    const c = node.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

/** Length of `<wall>.<logical>` (fixed width, so stamps compare as strings). */
const STAMP_CHARS = 21;

/** `<wall>.<logical>` of a stamp; the node is implied by the slot's tag. */
function shortStamp(hlc: Timestamp): string {
  return formatTimestamp(hlc).slice(0, STAMP_CHARS);
}

/** Parses a document key of the layout; undefined for anything else. */
function parseKey(key: string): ParsedKey | undefined {
  if (META_KEY_SET.has(key)) return { kind: "meta" };
  if (key.startsWith("n:")) return TAG_PATTERN.test(key.slice(2)) ? { kind: "node" } : undefined;
  if (isSlotKey(key)) {
    const at = key.indexOf("@");
    const field = key.slice(2, at);
    const tag = key.slice(at + 1);
    if (at < 0 || !isFieldName(field) || !TAG_PATTERN.test(tag)) return undefined;
    return { kind: key.startsWith("f:") ? "lww" : "counter", field, tag };
  }
  if (key.startsWith("s:") || key.startsWith("r:")) {
    const eq = key.indexOf("=");
    const at = key.indexOf("@", eq);
    if (eq < 0 || at < 0) return undefined;
    const field = key.slice(2, eq);
    const element = key.slice(eq + 1, at);
    const hlc = parseHlc(key.slice(at + 1));
    if (!isFieldName(field) || element.length === 0 || !hlc) return undefined;
    return { kind: key.startsWith("s:") ? "set" : "tombstone", field, element, hlc };
  }
  return undefined;
}

function parseHlc(text: string): Timestamp | undefined {
  try {
    return parseTimestamp(text);
  } catch (error) {
    if (error instanceof InvalidTimestampError) return undefined;
    throw error;
  }
}

/** Parses `"<wall>.<logical>|<json>"` written by `node`; undefined when malformed. */
function parseStamped(raw: string, node: string): { hlc: Timestamp; json: unknown } | undefined {
  const bar = raw.indexOf("|");
  if (bar !== STAMP_CHARS) return undefined;
  const hlc = parseHlc(`${raw.slice(0, bar)}.${node}`);
  if (!hlc) return undefined;
  try {
    return { hlc, json: JSON.parse(raw.slice(bar + 1)) };
  } catch {
    return undefined;
  }
}

/** A change Automerge handed out that the header reader refused (none expected), decoded whole. */
function decodedOrUndefined(change: Uint8Array): Automerge.DecodedChange | undefined {
  try {
    return Automerge.decodeChange(change);
  } catch {
    return undefined;
  }
}

function parseCommitMessage(message: string | null): CommitMessage | undefined {
  if (!message) return undefined;
  try {
    const parsed = JSON.parse(message);
    if (typeof parsed?.h === "string" && typeof parsed?.o === "string") return parsed;
  } catch {
    // A foreign or corrupt message: the change still counts, it just has no history entry.
  }
  return undefined;
}

/**
 * A change may only set keys of the layout on the root map, make slot maps
 * at slot keys, and set a string `v` in a map (a slot map: checked when the
 * change applies): no other objects, lists, text or counters, and no
 * deletes (removes write tombstones; a delete would be lost at the next
 * epoch). Metadata, the epoch included, is written only by a document's
 * first change. Values are checked when resolved.
 */
function changeOpsAreValid(change: Automerge.DecodedChange): boolean {
  const first = change.deps.length === 0;
  for (const op of change.ops) {
    if (typeof op.key !== "string") return false;
    if (op.obj !== "_root") {
      if (op.action !== "set" || op.key !== SLOT_VALUE_KEY || typeof op.value !== "string") {
        return false;
      }
      continue;
    }
    const parsed = parseKey(op.key);
    if (!parsed || (parsed.kind === "meta" && !first)) return false;
    if (op.action !== (isSlotKey(op.key) ? "makeMap" : "set")) return false;
  }
  return true;
}

/** What a valid change writes: see {@link ParkedChange}. */
function opTargets(
  change: Automerge.DecodedChange,
): Pick<ParkedChange, "keys" | "creates" | "writesInto"> {
  const keys: string[] = [];
  const creates: [string, string][] = [];
  const writesInto = new Set<string>();
  change.ops.forEach((op, i) => {
    const key = op.key as string; // strings: changeOpsAreValid
    if (op.obj !== "_root") writesInto.add(op.obj);
    else keys.push(key);
    if (op.action === "makeMap") creates.push([`${change.startOp + i}@${change.actor}`, key]);
  });
  return { keys, creates, writesInto: [...writesInto] };
}

/** Keys of writer slots (LWW values and counter totals), each a map holding `v`. */
function isSlotKey(key: string): boolean {
  return key.startsWith("f:") || key.startsWith("c:");
}
