/**
 * The gateway's SQLite database (`node:sqlite`, WAL) in the data directory.
 * Services create their own tables (prefixed by service) on the shared
 * handle. The database is opened in exclusive locking mode: the lock is
 * taken at open and held by the OS for the life of the process (released
 * even on kill -9), so two gateways can never share one data directory.
 */
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";

export const DATABASE_FILE = "twinmesh.db";
const PID_FILE = "gateway.pid";
/**
 * WAL pages after which SQLite checkpoints by itself, inside whichever
 * commit crosses the mark, when the caller checkpoints
 * (`walCheckpointedByCaller`): a backstop (~40 MB of WAL) should its
 * checkpoints stop. SQLite's default is 1,000 pages.
 */
export const WAL_BACKSTOP_PAGES = 10_000;

/** The data directory is unusable (locked by another gateway, unwritable …). */
export class DataDirError extends Error {
  override name = "DataDirError";
}

export interface GatewayStore {
  db: DatabaseSync;
  dataDir: string;
  /** Reads a small value from the `meta` table. */
  getMeta(key: string): string | undefined;
  /** Writes a small value to the `meta` table (synchronously durable). */
  setMeta(key: string, value: string): void;
  close(): void;
}

export interface StoreOptions {
  /** File in the data dir; default {@link DATABASE_FILE}, which also gets the pid file. */
  file?: string;
  /**
   * NORMAL (default) in WAL mode: a commit survives a crash of this process
   * (kill -9) but may be lost on power failure, and commits do not fsync on
   * the event loop. Twins tolerate that (peers hold them too). FULL: every
   * commit is synced (the e-stop thread's own database).
   */
  synchronous?: "NORMAL" | "FULL";
  /**
   * The caller runs {@link checkpointWal} at moments of its choosing (the
   * twin service does, after its ticks): SQLite's own checkpoint, which
   * copies the WAL into the database inside a commit and so holds that
   * commit up, then waits for {@link WAL_BACKSTOP_PAGES}.
   */
  walCheckpointedByCaller?: boolean;
}

/**
 * Copies what the WAL holds into the database without waiting for anything
 * (PASSIVE; the next commit then starts the WAL over). Returns the frames
 * copied (0 for a database not in WAL mode).
 */
export function checkpointWal(db: DatabaseSync): number {
  const row = db.prepare("PRAGMA wal_checkpoint(PASSIVE)").get() as { checkpointed: number };
  return Math.max(0, row.checkpointed);
}

/** Creates `dataDir` if needed, opens and locks the database. */
export function openStore(dataDir: string, options: StoreOptions = {}): GatewayStore {
  const file = options.file ?? DATABASE_FILE;
  const ownsPidFile = file === DATABASE_FILE;
  try {
    Deno.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new DataDirError(`data dir ${dataDir}: cannot create (${(err as Error).message})`);
  }
  const path = join(dataDir, file);
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path);
  } catch (err) {
    throw new DataDirError(`data dir ${dataDir}: cannot open ${path} (${(err as Error).message})`);
  }
  try {
    db.exec("PRAGMA busy_timeout = 0");
    db.exec("PRAGMA locking_mode = EXCLUSIVE");
    db.exec("PRAGMA journal_mode = WAL");
    db.exec(`PRAGMA synchronous = ${options.synchronous ?? "NORMAL"}`);
    if (options.walCheckpointedByCaller) {
      db.exec(`PRAGMA wal_autocheckpoint = ${WAL_BACKSTOP_PAGES}`);
    }
    // Taking a write lock now makes exclusive mode hold it from here on.
    db.exec(
      "BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); COMMIT",
    );
  } catch (err) {
    db.close();
    const message = (err as Error).message;
    if (/locked|busy/i.test(message)) {
      throw new DataDirError(
        `data dir ${dataDir} is in use by another gateway${describeHolder(dataDir)}; ` +
          `give each gateway its own --data-dir`,
      );
    }
    throw new DataDirError(`data dir ${dataDir}: cannot initialise ${path} (${message})`);
  }
  if (ownsPidFile) Deno.writeTextFileSync(join(dataDir, PID_FILE), `${Deno.pid}\n`);

  const get = db.prepare("SELECT value FROM meta WHERE key = ?");
  const put = db.prepare(
    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
  );
  let closed = false;
  return {
    db,
    dataDir,
    getMeta: (key) => (get.get(key) as { value: string } | undefined)?.value,
    setMeta: (key, value) => void put.run(key, value),
    close() {
      if (closed) return;
      closed = true;
      db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      db.close();
      if (!ownsPidFile) return;
      try {
        Deno.removeSync(join(dataDir, PID_FILE));
      } catch { /* already gone */ }
    },
  };
}

function describeHolder(dataDir: string): string {
  try {
    const pid = Deno.readTextFileSync(join(dataDir, PID_FILE)).trim();
    return pid ? ` (pid ${pid})` : "";
  } catch {
    return "";
  }
}
