/**
 * SQLite persistence of the e-stop service (tables prefixed `estop_`, on the
 * gateway's shared `DatabaseSync`). Three tables:
 *
 * - `estop_latch`: active stops per asset. Written (and committed) before the
 *   owner acks, so a latch survives a crash or restart.
 * - `estop_known`: command ids seen, with the reset that cleared a stop, so a
 *   duplicate or replay stays ignored across restarts.
 * - `estop_outbox`: the origin's undelivered (command, owner) pairs with the
 *   sealed frame, redelivered after a restart.
 *
 * Rows are checked when written and again when read back (paired assertions):
 * a row that fails the check on read is a bug or a corrupted file, and the
 * gateway must not start on a latch it cannot trust.
 *
 * @example
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { createEstopStorage } from "./estop_storage.ts";
 * const storage = createEstopStorage(new DatabaseSync(":memory:"));
 * console.assert(storage.load().latch.length === 0);
 * ```
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { assert } from "../protocols/assert.ts";
import { formatTimestamp, parseTimestamp } from "../protocols/hlc.ts";
import { isCommandId } from "../protocols/estop_codec.ts";
import type { KnownCommand, LatchEntry } from "../protocols/estop_latch.ts";
import type { AckStatus } from "../protocols/estop_codec.ts";

/** One undelivered (command, owner) pair kept by the origin. */
export interface OutboxRow {
  readonly commandId: string;
  readonly peer: string;
  readonly type: "stop" | "reset";
  /** The sealed frame, length prefix included. */
  readonly frame: Uint8Array;
  /** Wall time of the command's HLC (for expiry). */
  readonly hlcWallMs: number;
}

/** Everything persisted, read back at start. */
export interface EstopSnapshot {
  readonly latch: LatchEntry[];
  readonly known: KnownCommand[];
  readonly outbox: OutboxRow[];
}

/** The e-stop service's storage. All writes are synchronous and committed on return. */
export interface EstopStorage {
  load(): EstopSnapshot;
  /**
   * Adds latch rows and remembers command records, in one transaction,
   * synced to disk before it returns, unless `beforeAck` (and a `syncDb` was
   * given): then it is synced by {@link EstopStorage.durable}, which the
   * caller awaits before acking.
   */
  commit(
    change: {
      added?: readonly LatchEntry[];
      removed?: readonly LatchEntry[];
      known?: readonly KnownCommand[];
    },
    options?: { beforeAck?: boolean },
  ): void;
  /** Applies batched outbox inserts and deletes in one transaction. */
  updateOutbox(
    inserts: readonly OutboxRow[],
    deletes: readonly { commandId: string; peer: string }[],
  ): void;
  /** Forgets command records (replay window passed). */
  forget(ids: readonly string[]): void;
  /**
   * Resolves once every commit so far is on disk: at once without a
   * `syncDb`, else after it. Await it before acking.
   */
  durable(): Promise<void>;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS estop_latch (
  asset_id TEXT NOT NULL,
  stop_id TEXT NOT NULL,
  hlc TEXT NOT NULL,
  origin TEXT NOT NULL,
  reason TEXT NOT NULL,
  since_ms INTEGER NOT NULL,
  PRIMARY KEY (asset_id, stop_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS estop_known (
  id TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  hlc TEXT,
  status TEXT NOT NULL,
  cleared_by TEXT,
  cleared_hlc TEXT,
  seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS estop_outbox (
  command_id TEXT NOT NULL,
  peer TEXT NOT NULL,
  type TEXT NOT NULL,
  frame BLOB NOT NULL,
  hlc_wall_ms INTEGER NOT NULL,
  PRIMARY KEY (command_id, peer)
) WITHOUT ROWID;
`;

const ACK_STATUSES: readonly string[] = [
  "ok",
  "duplicate",
  "refused-not-operator",
  "refused-expired",
  "refused-clock",
];

/** A persisted row failed its read-back check. */
export class EstopStorageError extends Error {
  override name = "EstopStorageError";
}

/** Creates the `estop_` tables if needed and returns the storage. */
export function createEstopStorage(
  db: DatabaseSync,
  options: { syncDb?: (() => Promise<void>) | undefined } = {},
): EstopStorage {
  const syncDb = options.syncDb;
  db.exec(SCHEMA);
  const insertLatch = db.prepare(
    "INSERT OR REPLACE INTO estop_latch (asset_id, stop_id, hlc, origin, reason, since_ms) VALUES (?, ?, ?, ?, ?, ?)",
  );
  const deleteLatch = db.prepare("DELETE FROM estop_latch WHERE asset_id = ? AND stop_id = ?");
  const upsertKnown = db.prepare(
    "INSERT OR REPLACE INTO estop_known (id, type, hlc, status, cleared_by, cleared_hlc, seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
  );
  const deleteKnown = db.prepare("DELETE FROM estop_known WHERE id = ?");
  const insertOutbox = db.prepare(
    "INSERT OR REPLACE INTO estop_outbox (command_id, peer, type, frame, hlc_wall_ms) VALUES (?, ?, ?, ?, ?)",
  );
  const deleteOutbox = db.prepare("DELETE FROM estop_outbox WHERE command_id = ? AND peer = ?");
  const maxSeq = db.prepare("SELECT COALESCE(MAX(seq), 0) AS seq FROM estop_known").get() as {
    seq: number;
  };
  let seq = Number(maxSeq.seq);

  /**
   * E-stop records are committed with synchronous=FULL (fsync before the
   * commit returns), whatever the connection's default: a latch must survive
   * power loss, not only a crash. The one exception is a commit an ack waits
   * for (`deferred`, with a `syncDb`): it runs at NORMAL and is synced by
   * `syncDb` off the thread, so the thread goes on reading frames meanwhile.
   */
  function transaction(work: () => void, deferred = false): void {
    const previous =
      (db.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous;
    db.exec(`PRAGMA synchronous = ${deferred && syncDb ? "NORMAL" : "FULL"}`);
    try {
      inTransaction(work);
    } finally {
      db.exec(`PRAGMA synchronous = ${Number(previous)}`);
    }
  }

  function inTransaction(work: () => void): void {
    db.exec("BEGIN IMMEDIATE");
    try {
      work();
      db.exec("COMMIT");
    } catch (err) {
      db.exec("ROLLBACK");
      throw err;
    }
  }

  function run(statement: StatementSync, ...values: (string | number | null | Uint8Array)[]) {
    statement.run(...values);
  }

  return {
    durable: () => syncDb ? syncDb() : Promise.resolve(),
    load(): EstopSnapshot {
      const latch = db.prepare("SELECT * FROM estop_latch ORDER BY since_ms").all().map(readLatch);
      const known = db.prepare("SELECT * FROM estop_known ORDER BY seq").all().map(readKnown);
      const outbox = db.prepare("SELECT * FROM estop_outbox ORDER BY hlc_wall_ms").all().map(
        readOutbox,
      );
      return { latch, known, outbox };
    },

    commit(change, options): void {
      transaction(() => {
        for (const entry of change.added ?? []) {
          checkLatch(entry);
          run(
            insertLatch,
            entry.assetId,
            entry.stopId,
            formatTimestamp(entry.hlc),
            entry.origin,
            entry.reason,
            Math.round(entry.sinceMs),
          );
        }
        for (const entry of change.removed ?? []) run(deleteLatch, entry.assetId, entry.stopId);
        for (const command of change.known ?? []) {
          assert(isCommandId(command.id), "known command id is well-formed");
          run(
            upsertKnown,
            command.id,
            command.type,
            command.hlc ? formatTimestamp(command.hlc) : null,
            command.status,
            command.clearedBy?.resetId ?? null,
            command.clearedBy ? formatTimestamp(command.clearedBy.resetHlc) : null,
            ++seq,
          );
        }
      }, options?.beforeAck === true);
    },

    updateOutbox(inserts, deletes): void {
      if (inserts.length === 0 && deletes.length === 0) return;
      transaction(() => {
        for (const row of inserts) {
          assert(isCommandId(row.commandId), "outbox command id is well-formed");
          run(insertOutbox, row.commandId, row.peer, row.type, row.frame, row.hlcWallMs);
        }
        for (const row of deletes) run(deleteOutbox, row.commandId, row.peer);
      });
    },

    forget(ids): void {
      if (ids.length === 0) return;
      transaction(() => {
        for (const id of ids) run(deleteKnown, id);
      });
    },
  };
}

function checkLatch(entry: LatchEntry): void {
  assert(entry.assetId.length > 0, "latched asset id is not empty");
  assert(isCommandId(entry.stopId), "latched stop id is well-formed");
  assert(entry.hlc.node === entry.origin, "latched stop's HLC node is its origin");
}

type Row = Record<string, unknown>;

function text(row: Row, column: string): string {
  const value = row[column];
  if (typeof value !== "string") {
    throw new EstopStorageError(`estop row column ${column}: expected text, got ${typeof value}`);
  }
  return value;
}

function integer(row: Row, column: string): number {
  const value = row[column];
  if (typeof value !== "number" && typeof value !== "bigint") {
    throw new EstopStorageError(`estop row column ${column}: expected an integer`);
  }
  return Number(value);
}

function readLatch(row: Row): LatchEntry {
  const entry: LatchEntry = {
    assetId: text(row, "asset_id"),
    stopId: text(row, "stop_id"),
    hlc: parseTimestamp(text(row, "hlc")),
    origin: text(row, "origin"),
    reason: text(row, "reason"),
    sinceMs: integer(row, "since_ms"),
  };
  checkLatch(entry);
  return entry;
}

function readKnown(row: Row): KnownCommand {
  const type = text(row, "type");
  const status = text(row, "status");
  const id = text(row, "id");
  if ((type !== "stop" && type !== "reset") || !ACK_STATUSES.includes(status) || !isCommandId(id)) {
    throw new EstopStorageError(`estop_known row ${id}: type ${type} status ${status} invalid`);
  }
  const hlc = row.hlc === null ? undefined : parseTimestamp(text(row, "hlc"));
  const clearedBy = row.cleared_by === null ? undefined : {
    resetId: text(row, "cleared_by"),
    resetHlc: parseTimestamp(text(row, "cleared_hlc")),
  };
  const base = { id, type, hlc, status: status as AckStatus } as const;
  return clearedBy ? { ...base, clearedBy } : base;
}

function readOutbox(row: Row): OutboxRow {
  const type = text(row, "type");
  const frame = row.frame;
  if ((type !== "stop" && type !== "reset") || !(frame instanceof Uint8Array)) {
    throw new EstopStorageError(`estop_outbox row: type ${type} or frame invalid`);
  }
  const commandId = text(row, "command_id");
  assert(isCommandId(commandId), "outbox command id read back is well-formed");
  return {
    commandId,
    peer: text(row, "peer"),
    type,
    frame: new Uint8Array(frame),
    hlcWallMs: integer(row, "hlc_wall_ms"),
  };
}

const ESTOP_TABLES = ["estop_latch", "estop_known", "estop_outbox"] as const;

/**
 * Moves the e-stop tables a gateway kept in its main database before the
 * e-stop thread had its own file into `estopPath` (once: a latch must survive
 * the upgrade). Rows are copied before the old tables are dropped, so a crash
 * in between copies again on the next start. Returns the number of rows moved.
 */
export function moveEstopTables(db: DatabaseSync, estopPath: string): number {
  const present = ESTOP_TABLES.filter((table) =>
    db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(table)
  );
  if (present.length === 0) return 0;
  const target = new DatabaseSync(estopPath);
  try {
    createEstopStorage(target); // the schema
  } finally {
    target.close();
  }
  let moved = 0;
  db.prepare("ATTACH DATABASE ? AS moved_estop").run(estopPath);
  try {
    db.exec("BEGIN IMMEDIATE");
    try {
      for (const table of present) {
        moved += Number(
          db.prepare(`INSERT OR IGNORE INTO moved_estop.${table} SELECT * FROM main.${table}`).run()
            .changes,
        );
        db.exec(`DROP TABLE main.${table}`);
      }
      db.exec("COMMIT");
    } catch (err) {
      db.exec("ROLLBACK");
      throw err;
    }
  } finally {
    db.exec("DETACH DATABASE moved_estop");
  }
  return moved;
}

/**
 * Makes a WAL-mode database's commits durable without blocking the thread:
 * an fdatasync of its `-wal` file through Deno's async file API (which runs
 * on a blocking-pool thread). At synchronous=NORMAL SQLite has written each
 * commit's frames to the WAL (the OS's page cache) when COMMIT returns and
 * syncs only at checkpoints (which always sync); syncing the WAL after the
 * commit gives what FULL gives. The file stays the same from the first write
 * until the database closes, so one handle is kept: a write-back error is
 * reported to it once, and a handle opened later might never see it. The
 * first failure is final: every later call rejects (the latch's durability
 * can no longer be known). Calls made while a sync runs share the next one.
 */
export function walSync(databasePath: string): () => Promise<void> {
  let file: Promise<Deno.FsFile> | undefined;
  let failed: Error | undefined;
  let running: Promise<void> | undefined;
  let next: Promise<void> | undefined;
  const syncOnce = async (): Promise<void> => {
    if (failed) throw failed;
    file ??= Deno.open(`${databasePath}-wal`, { read: true });
    try {
      await (await file).syncData();
    } catch (error) {
      failed = new Error(`sync of ${databasePath}-wal failed: ${(error as Error).message}`);
      throw failed;
    }
  };
  const start = (): Promise<void> => {
    const sync = syncOnce().finally(() => {
      if (running === sync) running = undefined;
    });
    running = sync;
    return sync;
  };
  return () => {
    if (!running) return start();
    // A sync already running may have begun before this caller's commit.
    next ??= running.catch(() => {}).then(() => {
      next = undefined;
      return start();
    });
    return next;
  };
}
