/**
 * Twin persistence in the gateway's SQLite database (tables prefixed `twin_`).
 * A twin is a snapshot (Automerge `save()`) plus the incremental chunks
 * appended since; loading concatenates them. After
 * {@link COMPACT_AFTER_CHUNKS} chunks (and on shutdown) the service writes a
 * fresh snapshot in place of them.
 *
 * Chunks go to a log: one row per append (a publish tick), holding that
 * tick's chunk of every twin written in it. One row per tick touches the
 * table's last page or two; a row per twin with an index by twin, as before,
 * wrote 9-13 pages per tick and scattered deletes at every compaction, some
 * 8 MB/s of WAL per gateway under `bench twins` (flash wear, and stalls of
 * the event loop on the disk). A snapshot records the last log row it
 * covers (`log_seq`); a log row is deleted once every twin in it has a newer
 * snapshot, mostly in log order. A twin that stops being written would keep
 * old rows alive: once the log holds
 * {@link MAX_LOG_ROWS_FACTOR} × the compaction point rows, each append
 * carries the oldest row's chunks that are still needed into its own row.
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
import { assert } from "../protocols/assert.ts";

/**
 * Chunks kept before a twin is compacted. A chunk is one store's changes of
 * one twin; under `bench twins` (10 writes/s per twin, stored by all three
 * gateways) a twin gains ~10 a second. Loading replays the chunks, so this
 * bounds restart cost: 11.5 ms per twin at 600 chunks, 5.5 ms at 200
 * (Automerge 2.2.9, one small change each). A snapshot is one `save()`,
 * 5-8 ms at 1,000-2,000 changes, run in a task of its own that holds the
 * event loop for that long: at 200 a gateway under that load compacted
 * ~3 times a second, 3% of its busy time (CPU profile, twenty-first
 * session).
 */
export const COMPACT_AFTER_CHUNKS = 600;
/**
 * Log rows kept at most, as a multiple of the compaction point (see the
 * module doc). A row lives until every twin in it has compacted, about
 * compactAfter / f appends for twins that are in a share f of them; under
 * `bench twins` f is about 0.1. With a factor of 4 an append carried chunks
 * forward nearly every time there (3.5 MB/s of disk writes per gateway,
 * 2.1-2.2 with 16; 8.3 with the row-per-twin table this log replaced).
 */
export const MAX_LOG_ROWS_FACTOR = 16;

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
  /** Statements of the per-tick paths, prepared once. */
  #prepared = new Map<string, StatementSync>();
  /** Per log row still needed, the twins whose chunks in it no snapshot covers yet. */
  #rows = new Map<number, Set<string>>();
  /** Per twin, the log rows holding its chunks since its snapshot. */
  #rowsOf = new Map<string, Set<number>>();
  /** The next log row's seq: above every row and every snapshot's `log_seq`. */
  #nextSeq = 1;

  /** `random`: draws each twin's compaction point (default `Math.random`). */
  constructor(db: DatabaseSync, options: { random?: () => number } = {}) {
    this.#db = db;
    this.#random = options.random ?? Math.random;
    db.exec(`
      CREATE TABLE IF NOT EXISTS twin_snapshots (
        asset_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        log_seq INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE IF NOT EXISTS twin_log (
        seq INTEGER PRIMARY KEY,
        data BLOB NOT NULL
      );
      CREATE TABLE IF NOT EXISTS twin_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
      );
    `);
    this.#migrate();
    this.#nextSeq = this.#highestSeq() + 1;
  }

  /** The highest log row seq or snapshot `log_seq` stored (0 when none). */
  #highestSeq(): number {
    const row = this.#db.prepare(
      "SELECT max(ifnull((SELECT max(seq) FROM twin_log), 0), " +
        "ifnull((SELECT max(log_seq) FROM twin_snapshots), 0)) AS seq",
    ).get();
    return Number(row?.seq ?? 0);
  }

  /**
   * Data directories written before the log: snapshots gain `log_seq` (0,
   * before every row) and each stored chunk becomes a log row of its own,
   * in order.
   */
  #migrate(): void {
    const columns = this.#db.prepare("PRAGMA table_info(twin_snapshots)").all();
    const legacy = this.#db.prepare(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'twin_chunks'",
    ).get();
    if (columns.some((c) => c.name === "log_seq") && !legacy) return;
    this.#transaction(() => {
      if (!columns.some((c) => c.name === "log_seq")) {
        this.#db.exec("ALTER TABLE twin_snapshots ADD COLUMN log_seq INTEGER NOT NULL DEFAULT 0");
      }
      if (!legacy) return;
      // After every row and every snapshot's log_seq: a chunk numbered at or
      // below its twin's log_seq would be taken for one the snapshot covers.
      let seq = this.#highestSeq();
      const insert = this.#db.prepare("INSERT INTO twin_log (seq, data) VALUES (?, ?)");
      const chunks = this.#db.prepare("SELECT asset_id, data FROM twin_chunks ORDER BY seq");
      for (const row of chunks.iterate()) {
        insert.run(++seq, encodeRow([{ assetId: String(row.asset_id), bytes: toBytes(row.data) }]));
      }
      this.#db.exec("DROP TABLE twin_chunks");
    });
  }

  /**
   * Every stored twin: its snapshot (if any) followed by its chunks in append
   * order. Call it before appending: it also learns which rows each twin
   * holds, without which rows stored earlier are never carried forward or
   * deleted.
   */
  loadAll(): Map<string, Uint8Array[]> {
    const out = new Map<string, Uint8Array[]>();
    const covered = new Map<string, number>();
    this.#chunkCounts.clear();
    this.#limits.clear();
    this.#rows.clear();
    this.#rowsOf.clear();
    const snapshots = this.#db.prepare("SELECT asset_id, data, log_seq FROM twin_snapshots");
    for (const row of snapshots.all()) {
      const assetId = String(row.asset_id);
      out.set(assetId, [toBytes(row.data)]);
      covered.set(assetId, Number(row.log_seq));
    }
    const spent: number[] = [];
    for (const row of this.#db.prepare("SELECT seq, data FROM twin_log ORDER BY seq").all()) {
      const seq = Number(row.seq);
      let live = false;
      for (const { assetId, bytes } of decodeRow(toBytes(row.data))) {
        if (seq <= (covered.get(assetId) ?? 0)) continue; // in the twin's snapshot
        live = true;
        const list = out.get(assetId) ?? [];
        list.push(bytes);
        out.set(assetId, list);
        this.#addChunk(seq, assetId);
      }
      if (!live) spent.push(seq);
    }
    if (spent.length > 0) this.#transaction(() => this.#deleteRows(spent));
    this.#nextSeq = this.#highestSeq() + 1;
    return out;
  }

  /**
   * Appends chunks as one log row; returns the ids of twins that came due
   * for compaction (compact them). A twin comes due at a point drawn anew
   * each time between half of `compactAfter` and all of it: twins written at
   * the same rate (all arms of a line, on every gateway) would otherwise
   * come due in the same tick, again and again, and their snapshots stall
   * every gateway at once.
   */
  appendChunks(chunks: readonly TwinChunk[], compactAfter = COMPACT_AFTER_CHUNKS): string[] {
    if (chunks.length === 0) return [];
    const insert = this.#prepare("INSERT INTO twin_log (seq, data) VALUES (?, ?)");
    const seq = this.#nextSeq;
    // At the bound, the chunks of the oldest row that twins still need move
    // into this one: rarely written twins cannot hold rows (and the chunks
    // of every other twin in them) without end.
    const oldest = this.#rows.size >= MAX_LOG_ROWS_FACTOR * compactAfter
      ? this.#oldestRow()
      : undefined;
    if (oldest) {
      this.#transaction(() => {
        insert.run(seq, encodeRow([...oldest.chunks, ...chunks]));
        this.#deleteRows([oldest.seq]);
      });
    } else {
      insert.run(seq, encodeRow(chunks));
    }
    this.#nextSeq++;
    if (oldest) {
      this.#rows.delete(oldest.seq);
      for (const { assetId } of oldest.chunks) {
        this.#rowsOf.get(assetId)?.delete(oldest.seq);
        this.#place(seq, assetId);
      }
    }
    const due: string[] = [];
    for (const { assetId } of chunks) {
      if (this.#addChunk(seq, assetId) >= this.#limit(assetId, compactAfter)) {
        due.push(assetId);
        this.#limits.set(assetId, Infinity); // reported once, until compacted
      }
    }
    return due;
  }

  /** The oldest log row's seq and the chunks in it that no snapshot covers yet. */
  #oldestRow(): { seq: number; chunks: TwinChunk[] } {
    const [seq, live] = this.#rows.entries().next().value!;
    const row = this.#prepare("SELECT data FROM twin_log WHERE seq = ?").get(seq);
    assert(row !== undefined, "a log row still needed is in the table");
    return { seq, chunks: decodeRow(toBytes(row.data)).filter((c) => live.has(c.assetId)) };
  }

  /**
   * Replaces a twin's snapshot; its chunks' log rows go once no other twin
   * needs them. Nothing in memory changes unless the transaction commits.
   */
  compact(assetId: string, snapshot: Uint8Array): void {
    // Covers every row so far, including ones this twin has no chunk in.
    const logSeq = this.#nextSeq - 1;
    const rows = [...(this.#rowsOf.get(assetId) ?? [])];
    const spent = rows.filter((seq) => {
      const live = this.#rows.get(seq);
      assert(live !== undefined && live.has(assetId), "a twin's rows list it as live");
      return live.size === 1;
    });
    try {
      this.#transaction(() => {
        this.#prepare(
          "INSERT INTO twin_snapshots (asset_id, data, log_seq) VALUES (?, ?, ?) " +
            "ON CONFLICT (asset_id) DO UPDATE SET data = excluded.data, log_seq = excluded.log_seq",
        ).run(assetId, snapshot, logSeq);
        this.#deleteRows(spent);
      });
    } catch (error) {
      this.#limits.delete(assetId); // comes due again at the next append
      throw error;
    }
    for (const seq of rows) {
      const live = this.#rows.get(seq)!;
      live.delete(assetId);
      if (live.size === 0) this.#rows.delete(seq);
    }
    this.#rowsOf.delete(assetId);
    this.#chunkCounts.set(assetId, 0);
    this.#limits.delete(assetId);
  }

  /** Records a new chunk of `assetId` in row `seq`; returns the twin's chunk count. */
  #addChunk(seq: number, assetId: string): number {
    this.#place(seq, assetId);
    const count = (this.#chunkCounts.get(assetId) ?? 0) + 1;
    this.#chunkCounts.set(assetId, count);
    return count;
  }

  /** Records that row `seq` holds a chunk of `assetId` no snapshot covers. */
  #place(seq: number, assetId: string): void {
    let live = this.#rows.get(seq);
    if (!live) this.#rows.set(seq, live = new Set());
    live.add(assetId);
    let rows = this.#rowsOf.get(assetId);
    if (!rows) this.#rowsOf.set(assetId, rows = new Set());
    rows.add(seq);
  }

  #prepare(sql: string): StatementSync {
    let statement = this.#prepared.get(sql);
    if (!statement) this.#prepared.set(sql, statement = this.#db.prepare(sql));
    return statement;
  }

  #deleteRows(seqs: readonly number[]): void {
    const remove = this.#prepare("DELETE FROM twin_log WHERE seq = ?");
    for (const seq of seqs) remove.run(seq);
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

  /** Log rows still needed by some twin. */
  logRows(): number {
    return this.#rows.size;
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
      // SQLite rolls back by itself after some errors (a full disk, I/O):
      // a ROLLBACK then would throw instead of the error that matters.
      if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
      throw error;
    }
  }
}

/**
 * A log row: per chunk, the twin id (u16 length + UTF-8) and the bytes (u32
 * length + bytes).
 */
function encodeRow(chunks: readonly TwinChunk[]): Uint8Array {
  const ids = chunks.map((c) => textEncoder.encode(c.assetId));
  const size = chunks.reduce((n, c, i) => n + 6 + ids[i]!.length + c.bytes.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let offset = 0;
  chunks.forEach((chunk, i) => {
    const id = ids[i]!;
    assert(id.length <= 0xffff, "twin ids are short");
    view.setUint16(offset, id.length);
    out.set(id, offset + 2);
    offset += 2 + id.length;
    view.setUint32(offset, chunk.bytes.length);
    out.set(chunk.bytes, offset + 4);
    offset += 4 + chunk.bytes.length;
  });
  return out;
}

function decodeRow(data: Uint8Array): TwinChunk[] {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: TwinChunk[] = [];
  let offset = 0;
  while (offset < data.length) {
    if (offset + 2 > data.length) throw new TypeError("twin storage: truncated log row");
    const idLength = view.getUint16(offset);
    const idEnd = offset + 2 + idLength;
    if (idEnd + 4 > data.length) throw new TypeError("twin storage: truncated log row");
    const assetId = textDecoder.decode(data.subarray(offset + 2, idEnd));
    const length = view.getUint32(idEnd);
    const end = idEnd + 4 + length;
    if (end > data.length) throw new TypeError("twin storage: truncated log row");
    out.push({ assetId, bytes: data.slice(idEnd + 4, end) });
    offset = end;
  }
  return out;
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

function toBytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  throw new TypeError(`twin storage: expected a BLOB, got ${typeof value}`);
}
