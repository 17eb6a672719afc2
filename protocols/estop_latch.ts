/**
 * The owner's e-stop latch: a pure state machine (no I/O, no clock of its own).
 *
 * Per asset it holds the set of active stop ids with their HLCs. A stop adds
 * its id to every covered asset; only a reset can remove one, and only when
 * the reset (a) comes from an operator, (b) names that stop id and (c) carries
 * an HLC strictly after the stop's. A reset issued concurrently with a stop
 * cannot name it, so it never clears it: a stop always wins.
 *
 * It also remembers command ids (bounded) so that duplicates are idempotent
 * and replays are refused; commands older than the replay window are refused
 * as expired, because their ids may already have been forgotten.
 *
 * Invariant (asserted on every change): a latched stop stays latched unless a
 * valid reset naming it with a later HLC arrives.
 *
 * @example
 * ```ts
 * import { EstopLatch } from "./estop_latch.ts";
 * const latch = new EstopLatch();
 * const hlc = { wallMs: 1_000, logical: 0, node: "gw-a" };
 * latch.applyStop({ id: "a".repeat(32), hlc, origin: "gw-a", reason: "test" }, ["arm-1"], 1_000);
 * console.assert(latch.isLatched("arm-1"));
 * ```
 */
import { assert } from "./assert.ts";
import { compareTimestamps, type Timestamp } from "./hlc.ts";
import { DEFAULT_COMMAND_MAX_AGE_MS, MAX_KNOWN_COMMANDS } from "./estop_constants.ts";
import type { AckStatus } from "./estop_codec.ts";

/** One active stop on one asset. */
export interface LatchEntry {
  readonly assetId: string;
  readonly stopId: string;
  readonly hlc: Timestamp;
  readonly origin: string;
  readonly reason: string;
  /** Local wall time the latch was set (for display only; ordering uses `hlc`). */
  readonly sinceMs: number;
}

/** A command id the latch has seen, kept for idempotence and replay rejection. */
export interface KnownCommand {
  readonly id: string;
  readonly type: "stop" | "reset";
  /**
   * The command's HLC, or for a stop pre-cleared by a reset that arrived first,
   * undefined (its HLC is not known yet).
   */
  readonly hlc: Timestamp | undefined;
  /** The status acked for it (repeated for duplicates of refused commands). */
  readonly status: AckStatus;
  /** For stops: the reset that cleared it, once cleared. */
  readonly clearedBy?: { readonly resetId: string; readonly resetHlc: Timestamp };
}

/** Options; all optional. */
export interface EstopLatchInit {
  /** Replay window; see {@link DEFAULT_COMMAND_MAX_AGE_MS}. */
  commandMaxAgeMs?: number;
  /** See {@link MAX_KNOWN_COMMANDS}. */
  maxKnownCommands?: number;
}

/** The subset of a stop the latch needs. */
export interface StopInput {
  readonly id: string;
  readonly hlc: Timestamp;
  readonly origin: string;
  readonly reason: string;
}

/** The subset of a reset the latch needs. */
export interface ResetInput extends StopInput {
  readonly stopIds: readonly string[];
}

/** What applying a stop changed; the caller persists it before acking. */
export interface StopDecision {
  readonly status: AckStatus;
  /** `latched` acted; `precleared` = an operator's reset that saw it arrived first. */
  readonly outcome: "latched" | "duplicate" | "precleared" | "expired";
  /** Rows added to the latch (one per covered asset). */
  readonly added: readonly LatchEntry[];
  /** The record to persist for this id (absent when nothing changed). */
  readonly known?: KnownCommand;
}

/** What applying a reset changed; the caller persists it before acking. */
export interface ResetDecision {
  readonly status: AckStatus;
  readonly outcome: "applied" | "duplicate" | "refused-not-operator" | "expired";
  /** Latch rows removed. */
  readonly cleared: readonly LatchEntry[];
  /** Assets with no active stop left after this reset (safe to resume). */
  readonly released: readonly string[];
  /** Named stops left latched because their HLC is not before the reset's. */
  readonly keptConcurrent: readonly string[];
  /** Named stop ids not seen here yet: remembered as cleared by this reset. */
  readonly precleared: readonly string[];
  /** Records to persist (the reset itself and the stops it cleared). */
  readonly known: readonly KnownCommand[];
}

/** The latch of one owning gateway. */
export class EstopLatch {
  readonly commandMaxAgeMs: number;
  readonly maxKnownCommands: number;
  /** assetId → stopId → entry. */
  #byAsset = new Map<string, Map<string, LatchEntry>>();
  /** Insertion-ordered so eviction drops the oldest first. */
  #known = new Map<string, KnownCommand>();
  /** Commands with HLC wall time at or below this may have been forgotten. */
  #forgottenUpToWallMs = -1;

  constructor(init: EstopLatchInit = {}) {
    this.commandMaxAgeMs = init.commandMaxAgeMs ?? DEFAULT_COMMAND_MAX_AGE_MS;
    this.maxKnownCommands = init.maxKnownCommands ?? MAX_KNOWN_COMMANDS;
    assert(this.commandMaxAgeMs > 0, "command max age is positive");
    assert(this.maxKnownCommands > 0, "known-command bound is positive");
  }

  /** Restores state read back from storage (at start, before any command). */
  load(entries: readonly LatchEntry[], known: readonly KnownCommand[]): void {
    assert(this.#byAsset.size === 0 && this.#known.size === 0, "latch loads into empty state");
    for (const command of known) this.#remember(command);
    for (const entry of entries) {
      const knownStop = this.#known.get(entry.stopId);
      assert(
        knownStop === undefined || knownStop.clearedBy === undefined,
        "a persisted latch row is not for a cleared stop",
      );
      this.#assetMap(entry.assetId).set(entry.stopId, entry);
    }
  }

  /** True while any stop is latched on `assetId`: motion commands must be refused. */
  isLatched(assetId: string): boolean {
    return (this.#byAsset.get(assetId)?.size ?? 0) > 0;
  }

  /** Active stops on one asset. */
  entriesFor(assetId: string): LatchEntry[] {
    return [...(this.#byAsset.get(assetId)?.values() ?? [])];
  }

  /** Every latched asset with its active stops, sorted by asset id. */
  latched(): { assetId: string; entries: LatchEntry[] }[] {
    return [...this.#byAsset.entries()]
      .filter(([, stops]) => stops.size > 0)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([assetId, stops]) => ({ assetId, entries: [...stops.values()] }));
  }

  /** Number of assets with at least one active stop. */
  get latchedAssetCount(): number {
    let count = 0;
    for (const stops of this.#byAsset.values()) if (stops.size > 0) count++;
    return count;
  }

  /** The record of a command id, if remembered. */
  known(id: string): KnownCommand | undefined {
    return this.#known.get(id);
  }

  /**
   * Applies a verified stop covering `assetIds` (the local assets its target
   * covers, possibly none). Duplicates change nothing.
   */
  applyStop(stop: StopInput, assetIds: readonly string[], nowMs: number): StopDecision {
    const previous = this.#known.get(stop.id);
    if (previous !== undefined) {
      if (previous.type === "stop" && previous.hlc === undefined && previous.clearedBy) {
        return this.#arrivalAfterPreclear(stop, assetIds, previous, nowMs);
      }
      return { status: "duplicate", outcome: "duplicate", added: [] };
    }
    if (this.#isExpired(stop.hlc, nowMs)) {
      return { status: "refused-expired", outcome: "expired", added: [] };
    }
    return this.#latch(stop, assetIds, nowMs);
  }

  #arrivalAfterPreclear(
    stop: StopInput,
    assetIds: readonly string[],
    tombstone: KnownCommand,
    nowMs: number,
  ): StopDecision {
    const clearedBy = tombstone.clearedBy;
    assert(clearedBy !== undefined, "a pre-clear tombstone names its reset");
    if (compareTimestamps(stop.hlc, clearedBy.resetHlc) < 0) {
      // The operator's reset saw this stop (it names it with a later HLC): honoured.
      const known: KnownCommand = {
        id: stop.id,
        type: "stop",
        hlc: stop.hlc,
        status: "ok",
        clearedBy,
      };
      this.#remember(known);
      return { status: "ok", outcome: "precleared", added: [], known };
    }
    // A reset cannot clear a stop that is not strictly before it: the stop wins.
    this.#known.delete(stop.id);
    return this.#latch(stop, assetIds, nowMs);
  }

  #latch(stop: StopInput, assetIds: readonly string[], nowMs: number): StopDecision {
    const before = this.#entryCount();
    const added: LatchEntry[] = [];
    for (const assetId of new Set(assetIds)) {
      const entry: LatchEntry = {
        assetId,
        stopId: stop.id,
        hlc: stop.hlc,
        origin: stop.origin,
        reason: stop.reason,
        sinceMs: nowMs,
      };
      this.#assetMap(assetId).set(stop.id, entry);
      added.push(entry);
    }
    const known: KnownCommand = { id: stop.id, type: "stop", hlc: stop.hlc, status: "ok" };
    this.#remember(known);
    assert(this.#entryCount() === before + added.length, "a stop only ever adds latch entries");
    return { status: "ok", outcome: "latched", added, known };
  }

  /**
   * Applies a verified reset. `fromOperator` is whether its origin holds the
   * operator role; a refused reset changes nothing but is remembered so its
   * retries are answered the same way.
   */
  applyReset(reset: ResetInput, fromOperator: boolean, nowMs: number): ResetDecision {
    const nothing = { cleared: [], released: [], keptConcurrent: [], precleared: [] };
    const previous = this.#known.get(reset.id);
    if (previous !== undefined) {
      const status = previous.status === "ok" ? "duplicate" : previous.status;
      return { status, outcome: "duplicate", ...nothing, known: [] };
    }
    if (this.#isExpired(reset.hlc, nowMs)) {
      return { status: "refused-expired", outcome: "expired", ...nothing, known: [] };
    }
    if (!fromOperator) {
      const known: KnownCommand = {
        id: reset.id,
        type: "reset",
        hlc: reset.hlc,
        status: "refused-not-operator",
      };
      this.#remember(known);
      return {
        status: "refused-not-operator",
        outcome: "refused-not-operator",
        ...nothing,
        known: [known],
      };
    }
    return this.#clear(reset, nowMs);
  }

  #clear(reset: ResetInput, _nowMs: number): ResetDecision {
    const before = this.#entryCount();
    const named = new Set(reset.stopIds);
    const cleared: LatchEntry[] = [];
    const keptConcurrent = new Set<string>();
    const touched = new Set<string>();
    for (const [assetId, stops] of this.#byAsset) {
      for (const stopId of named) {
        const entry = stops.get(stopId);
        if (entry === undefined) continue;
        if (compareTimestamps(entry.hlc, reset.hlc) >= 0) {
          keptConcurrent.add(stopId);
          continue;
        }
        this.#assertClearable(entry, reset, true);
        stops.delete(stopId);
        cleared.push(entry);
        touched.add(assetId);
      }
    }
    const clearedBy = { resetId: reset.id, resetHlc: reset.hlc };
    const known: KnownCommand[] = [];
    const precleared: string[] = [];
    for (const stopId of named) {
      if (keptConcurrent.has(stopId)) continue;
      const stop = this.#known.get(stopId);
      if (stop !== undefined && stop.type !== "stop") continue;
      if (stop?.hlc !== undefined && compareTimestamps(stop.hlc, reset.hlc) >= 0) continue;
      if (stop === undefined) precleared.push(stopId);
      const record: KnownCommand = {
        id: stopId,
        type: "stop",
        hlc: stop?.hlc,
        status: stop?.status ?? "ok",
        clearedBy,
      };
      this.#remember(record);
      known.push(record);
    }
    const resetRecord: KnownCommand = { id: reset.id, type: "reset", hlc: reset.hlc, status: "ok" };
    this.#remember(resetRecord);
    known.push(resetRecord);
    const released = [...touched].filter((assetId) => !this.isLatched(assetId)).sort();
    for (const assetId of released) this.#byAsset.delete(assetId);
    assert(this.#entryCount() === before - cleared.length, "a reset removes only what it cleared");
    return {
      status: "ok",
      outcome: "applied",
      cleared,
      released,
      keptConcurrent: [...keptConcurrent],
      precleared,
      known,
    };
  }

  /** The latch invariant, checked for every entry a reset removes. */
  #assertClearable(entry: LatchEntry, reset: ResetInput, fromOperator: boolean): void {
    assert(fromOperator, "only an operator's reset clears a latched stop");
    assert(reset.stopIds.includes(entry.stopId), "a reset clears only stops it names");
    assert(
      compareTimestamps(entry.hlc, reset.hlc) < 0,
      "a reset clears only stops whose HLC precedes its own",
    );
  }

  /** Forgets command ids older than the replay window, except latched stops. */
  prune(nowMs: number): string[] {
    const floorWallMs = nowMs - this.commandMaxAgeMs;
    const forgotten: string[] = [];
    for (const [id, command] of this.#known) {
      const wallMs = command.hlc?.wallMs ?? command.clearedBy?.resetHlc.wallMs ?? 0;
      if (wallMs >= floorWallMs) continue;
      this.#known.delete(id);
      forgotten.push(id);
    }
    return forgotten;
  }

  #isExpired(hlc: Timestamp, nowMs: number): boolean {
    return hlc.wallMs < nowMs - this.commandMaxAgeMs || hlc.wallMs <= this.#forgottenUpToWallMs;
  }

  #remember(command: KnownCommand): void {
    this.#known.delete(command.id);
    this.#known.set(command.id, command);
    // Bounded: evicts at most the overflow (one entry per insertion).
    while (this.#known.size > this.maxKnownCommands) {
      const oldest = this.#known.keys().next().value as string;
      const evicted = this.#known.get(oldest)!;
      this.#known.delete(oldest);
      const wallMs = evicted.hlc?.wallMs ?? evicted.clearedBy?.resetHlc.wallMs ?? 0;
      // Anything as old as what we forgot can no longer be de-duplicated: refuse it.
      this.#forgottenUpToWallMs = Math.max(this.#forgottenUpToWallMs, wallMs);
    }
  }

  #assetMap(assetId: string): Map<string, LatchEntry> {
    let stops = this.#byAsset.get(assetId);
    if (stops === undefined) {
      stops = new Map();
      this.#byAsset.set(assetId, stops);
    }
    return stops;
  }

  #entryCount(): number {
    let count = 0;
    for (const stops of this.#byAsset.values()) count += stops.size;
    return count;
  }
}
