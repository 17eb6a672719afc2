/**
 * Twin persistence in the gateway's SQLite database (tables prefixed `twin_`).
 * A twin is a snapshot (Automerge `save()`) plus the incremental chunks
 * appended since; loading concatenates them. After
 * {@link COMPACT_AFTER_CHUNKS} chunks (and on shutdown) the service writes a
 * fresh snapshot and the chunks are deleted in the same transaction.
 *
 * @example
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { TwinStorage } from "./twin_storage.ts";
 * const storage = new TwinStorage(new DatabaseSync(":memory:"));
 * storage.appendChunks([{ assetId: "arm-1", bytes: new Uint8Array([1, 2]) }]);
 * console.assert(storage.loadAll().get("arm-1")?.length === 1);
 * ```
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";

/**
 * Chunks kept before a twin is compacted. One chunk per twin per publish
 * interval with writes (25 ms): ~5 s of continuous writing. Loading replays
 * chunks one by one, so this bounds restart cost; a snapshot costs one
 * `save()` (~1 ms per 10k changes).
 */
export const COMPACT_AFTER_CHUNKS = 200;

/** One incremental save to append. */
export interface TwinChunk {
  readonly assetId: string;
  readonly bytes: Uint8Array;
}

/** See the module documentation. */
export class TwinStorage {
  #db: DatabaseSync;
  #chunkCounts = new Map<string, number>();
  /** Per twin, the chunk count that makes it due this time (see appendChunks). */
  #limits = new Map<string, number>();
  #random: () => number;
  #insertChunk: StatementSync | undefined;

  /** `random`: draws each twin's compaction point (default `Math.random`). */
  constructor(db: DatabaseSync, options: { random?: () => number } = {}) {
    this.#db = db;
    this.#random = options.random ?? Math.random;
    db.exec(`
      CREATE TABLE IF NOT EXISTS twin_snapshots (
        asset_id TEXT PRIMARY KEY,
        data BLOB NOT NULL
      );
      CREATE TABLE IF NOT EXISTS twin_chunks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        asset_id TEXT NOT NULL,
        data BLOB NOT NULL
      );
      CREATE INDEX IF NOT EXISTS twin_chunks_by_asset ON twin_chunks (asset_id, seq);
      CREATE TABLE IF NOT EXISTS twin_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
      );
    `);
  }

  /** Every stored twin: its snapshot (if any) followed by its chunks in append order. */
  loadAll(): Map<string, Uint8Array[]> {
    const out = new Map<string, Uint8Array[]>();
    for (const row of this.#db.prepare("SELECT asset_id, data FROM twin_snapshots").all()) {
      out.set(String(row.asset_id), [toBytes(row.data)]);
    }
    this.#chunkCounts.clear();
    const chunks = this.#db.prepare("SELECT asset_id, data FROM twin_chunks ORDER BY seq").all();
    for (const row of chunks) {
      const assetId = String(row.asset_id);
      const list = out.get(assetId) ?? [];
      list.push(toBytes(row.data));
      out.set(assetId, list);
      this.#chunkCounts.set(assetId, (this.#chunkCounts.get(assetId) ?? 0) + 1);
    }
    return out;
  }

  /**
   * Appends chunks in one transaction; returns the ids of twins that came due
   * for compaction (compact them). A twin comes due at a point drawn anew
   * each time between half of `compactAfter` and all of it: twins written at
   * the same rate (all arms of a line, on every gateway) would otherwise
   * come due in the same tick, again and again, and their snapshots stall
   * every gateway at once.
   */
  appendChunks(chunks: readonly TwinChunk[], compactAfter = COMPACT_AFTER_CHUNKS): string[] {
    if (chunks.length === 0) return [];
    // Prepared once: this runs at every publish tick.
    const insert = this.#insertChunk ??= this.#db.prepare(
      "INSERT INTO twin_chunks (asset_id, data) VALUES (?, ?)",
    );
    const due: string[] = [];
    this.#transaction(() => {
      for (const { assetId, bytes } of chunks) {
        insert.run(assetId, bytes);
        const count = (this.#chunkCounts.get(assetId) ?? 0) + 1;
        this.#chunkCounts.set(assetId, count);
        if (count >= this.#limit(assetId, compactAfter)) {
          due.push(assetId);
          this.#limits.set(assetId, Infinity); // reported once, until compacted
        }
      }
    });
    return due;
  }

  /** Replaces a twin's snapshot and drops its chunks, atomically. */
  compact(assetId: string, snapshot: Uint8Array): void {
    this.#transaction(() => {
      this.#db.prepare(
        "INSERT INTO twin_snapshots (asset_id, data) VALUES (?, ?) " +
          "ON CONFLICT (asset_id) DO UPDATE SET data = excluded.data",
      ).run(assetId, snapshot);
      this.#db.prepare("DELETE FROM twin_chunks WHERE asset_id = ?").run(assetId);
    });
    this.#chunkCounts.set(assetId, 0);
    this.#limits.delete(assetId);
  }

  #limit(assetId: string, compactAfter: number): number {
    let limit = this.#limits.get(assetId);
    if (limit === undefined) {
      limit = Math.max(1, Math.ceil(compactAfter * (1 - this.#random() / 2)));
      this.#limits.set(assetId, limit);
    }
    return limit;
  }

  /** Chunks stored for a twin since its last snapshot. */
  chunkCount(assetId: string): number {
    return this.#chunkCounts.get(assetId) ?? 0;
  }

  /** The persisted HLC high-water mark (for `HybridLogicalClockInit.persistedWallMs`). */
  loadHlcMark(): number | undefined {
    const row = this.#db.prepare("SELECT value FROM twin_meta WHERE key = 'hlc_mark'").get();
    return row ? Number(row.value) : undefined;
  }

  /** Stores the HLC high-water mark (pass as `HybridLogicalClockInit.persist`). */
  saveHlcMark(wallMs: number): void {
    this.#db.prepare(
      "INSERT INTO twin_meta (key, value) VALUES ('hlc_mark', ?) " +
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ).run(String(wallMs));
  }

  #transaction(work: () => void): void {
    this.#db.exec("BEGIN");
    try {
      work();
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#db.exec("ROLLBACK");
      throw error;
    }
  }
}

function toBytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  throw new TypeError(`twin storage: expected a BLOB, got ${typeof value}`);
}
