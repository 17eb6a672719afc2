import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import * as Automerge from "@automerge/automerge";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import { TwinDoc } from "../protocols/twin_doc.ts";
import { MAX_LOG_ROWS_FACTOR, TwinStorage } from "../node/twin_storage.ts";
import { makeReplica, syncDocs } from "./twin_test_util.ts";

const META = { kind: "welding-arm", factory: "f1", owner: "gw-a", ownerNode: "gw-a" };

function openDb(path: string): DatabaseSync {
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode = WAL");
  return db;
}

function persistDirty(
  replica: ReturnType<typeof makeReplica>,
  storage: TwinStorage,
  compactAfter: number,
) {
  replica.flush();
  const chunks = replica.drainDirty().map((assetId) => ({
    assetId,
    bytes: replica.doc(assetId).saveIncremental(),
  })).filter((c) => c.bytes.length > 0);
  for (const assetId of storage.appendChunks(chunks, compactAfter)) {
    storage.compact(assetId, replica.doc(assetId).save());
  }
}

Deno.test("twins persisted incrementally load back equal after reopening the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "twin_storage_" });
  try {
    const path = `${dir}/gateway.db`;
    let db = openDb(path);
    let storage = new TwinStorage(db);
    const replica = makeReplica("gw-a");
    replica.create("arm-1", "welding-arm");
    for (let i = 0; i < 30; i++) {
      replica.write("arm-1", [
        { op: "set", field: "joints.a1", value: i / 10 },
        { op: "increment", field: "weldCount", delta: 1 },
      ], "owner");
      if (i % 3 === 0) {
        replica.write("arm-1", [{ op: "add", field: "modes", element: "auto" }], "any");
      }
      persistDirty(replica, storage, 1_000);
    }
    ok(storage.chunkCount("arm-1") >= 30, "one chunk per persisted batch");
    db.close();

    db = openDb(path);
    storage = new TwinStorage(db);
    const restarted = makeReplica("gw-a");
    for (const [assetId, chunks] of storage.loadAll()) restarted.load(assetId, chunks);
    deepStrictEqual(restarted.state("arm-1"), replica.state("arm-1"));
    deepStrictEqual(restarted.doc("arm-1").heads(), replica.doc("arm-1").heads());
    equal(restarted.state("arm-1").fields.weldCount?.value, 30);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compaction replaces chunks by a snapshot and keeps the state", async () => {
  const dir = await Deno.makeTempDir({ prefix: "twin_storage_" });
  try {
    const path = `${dir}/gateway.db`;
    let db = openDb(path);
    let storage = new TwinStorage(db);
    const replica = makeReplica("gw-a");
    replica.create("arm-1", "welding-arm");
    for (let i = 0; i < 25; i++) {
      replica.write("arm-1", [{ op: "increment", field: "runtimeMs", delta: 100 }], "owner");
      persistDirty(replica, storage, 10);
    }
    ok(storage.chunkCount("arm-1") < 10, "compacted every 10 chunks");
    db.close();

    db = openDb(path);
    storage = new TwinStorage(db);
    const loaded = storage.loadAll().get("arm-1")!;
    ok(loaded.length <= 10, "a snapshot plus the chunks since");
    const restarted = makeReplica("gw-a");
    restarted.load("arm-1", loaded);
    equal(restarted.state("arm-1").fields.runtimeMs?.value, 2_500);
    deepStrictEqual(restarted.doc("arm-1").heads(), replica.doc("arm-1").heads());
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the HLC high-water mark survives a reopen", async () => {
  const dir = await Deno.makeTempDir({ prefix: "twin_storage_" });
  try {
    const path = `${dir}/gateway.db`;
    let db = openDb(path);
    new TwinStorage(db).saveHlcMark(1_700_000_001_000);
    db.close();
    db = openDb(path);
    equal(new TwinStorage(db).loadHlcMark(), 1_700_000_001_000);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("twins appended in lockstep come due for compaction at spread-out points, each within its limit", () => {
  const storage = new TwinStorage(new DatabaseSync(":memory:"));
  const ids = Array.from({ length: 40 }, (_, i) => `arm-${i}`);
  const compactAfter = 100;
  const dueAt = new Map<string, number[]>();
  for (let round = 1; round <= 400; round++) {
    const chunks = ids.map((assetId) => ({ assetId, bytes: new Uint8Array([round % 256]) }));
    for (const assetId of storage.appendChunks(chunks, compactAfter)) {
      dueAt.set(assetId, [...(dueAt.get(assetId) ?? []), storage.chunkCount(assetId)]);
      storage.compact(assetId, new Uint8Array([0]));
    }
  }
  const counts = [...dueAt.values()].flat();
  ok(counts.every((n) => n >= compactAfter / 2 && n <= compactAfter), `due at ${counts}`);
  ok(
    ids.every((id) => (dueAt.get(id)?.length ?? 0) >= 4),
    "every twin is compacted again and again",
  );
  // Lockstep twins with one fixed limit would all be due at the same count.
  ok(new Set(counts).size > 10, `due points spread: ${[...new Set(counts)].sort()}`);
});

Deno.test("a twin loaded with more chunks than its limit comes due at the next append", () => {
  const db = new DatabaseSync(":memory:");
  let storage = new TwinStorage(db);
  storage.appendChunks(
    Array.from({ length: 30 }, () => ({ assetId: "arm-1", bytes: new Uint8Array([1]) })),
    1_000,
  );
  storage = new TwinStorage(db, { random: () => 1 }); // limit: half of 40
  storage.loadAll();
  deepStrictEqual(storage.appendChunks([{ assetId: "arm-1", bytes: new Uint8Array([2]) }], 40), [
    "arm-1",
  ]);
  // Reported once until compacted.
  deepStrictEqual(storage.appendChunks([{ assetId: "arm-1", bytes: new Uint8Array([3]) }], 40), []);
});

const bytes = (...values: number[]) => new Uint8Array(values);
const logRowsInTable = (db: DatabaseSync) =>
  Number((db.prepare("SELECT count(*) AS n FROM twin_log").get() as { n: number }).n);

Deno.test("a log row is deleted once every twin in it has a newer snapshot, and reloads skip what snapshots cover", () => {
  const db = new DatabaseSync(":memory:");
  let storage = new TwinStorage(db);
  storage.loadAll();
  storage.appendChunks([{ assetId: "a", bytes: bytes(1) }, { assetId: "b", bytes: bytes(2) }]);
  storage.appendChunks([{ assetId: "a", bytes: bytes(3) }]);
  storage.compact("a", bytes(9));
  equal(logRowsInTable(db), 1, "the row b still needs stays; a's own row goes");
  storage.appendChunks([{ assetId: "a", bytes: bytes(4) }]);

  storage = new TwinStorage(db);
  const loaded = storage.loadAll();
  deepStrictEqual(loaded.get("a"), [bytes(9), bytes(4)], "a: snapshot, then only the later chunk");
  deepStrictEqual(loaded.get("b"), [bytes(2)]);
  equal(storage.chunkCount("a"), 1);

  storage.compact("b", bytes(8));
  equal(logRowsInTable(db), 1, "only the row after a's snapshot is left");
  storage.compact("a", bytes(7));
  equal(logRowsInTable(db), 0);
  equal(storage.logRows(), 0);

  // Rows appended after everything was compacted are never taken for covered ones.
  storage.appendChunks([{ assetId: "b", bytes: bytes(5) }]);
  storage = new TwinStorage(db);
  deepStrictEqual(storage.loadAll().get("b"), [bytes(8), bytes(5)]);
  deepStrictEqual(storage.loadAll().get("a"), [bytes(7)]);
});

Deno.test("at its bound the log carries the oldest row's live chunks forward, and a reload still has every chunk", () => {
  const db = new DatabaseSync(":memory:");
  let storage = new TwinStorage(db, { random: () => 0 });
  storage.loadAll();
  const compactAfter = 10;
  const bound = MAX_LOG_ROWS_FACTOR * compactAfter;
  // 40 twins in turn, one chunk per row: none comes due by count (10 chunks
  // each would take 400 rows), so every row stays needed.
  const twins = Array.from({ length: 40 }, (_, i) => `arm-${i}`);
  const written = new Map<string, Uint8Array[]>();
  for (let row = 1; row <= 300; row++) {
    const assetId = twins[row % twins.length]!;
    const chunk = bytes(row % 256, row >> 8);
    written.set(assetId, [...(written.get(assetId) ?? []), chunk]);
    deepStrictEqual(storage.appendChunks([{ assetId, bytes: chunk }], compactAfter), []);
    ok(storage.logRows() <= bound, `log rows ${storage.logRows()} at append ${row}`);
  }
  equal(logRowsInTable(db), bound);
  storage = new TwinStorage(db);
  const loaded = storage.loadAll();
  for (const assetId of twins) {
    const key = (chunks: Uint8Array[]) => chunks.map((c) => c.join(",")).sort();
    deepStrictEqual(key(loaded.get(assetId)!), key(written.get(assetId)!), assetId);
    equal(storage.chunkCount(assetId), written.get(assetId)!.length);
  }
});

Deno.test("a compaction whose transaction fails keeps every chunk, and the twin comes due again", () => {
  const db = new DatabaseSync(":memory:");
  const storage = new TwinStorage(db, { random: () => 0 });
  storage.loadAll();
  storage.appendChunks([{ assetId: "a", bytes: bytes(1) }, { assetId: "b", bytes: bytes(2) }], 2);
  deepStrictEqual(storage.appendChunks([{ assetId: "a", bytes: bytes(3) }], 2), ["a"]);
  db.exec(
    "CREATE TRIGGER no_snapshots BEFORE INSERT ON twin_snapshots BEGIN SELECT RAISE(ABORT, 'disk full'); END",
  );
  throws(() => storage.compact("a", bytes(9)), /disk full/);
  db.exec("DROP TRIGGER no_snapshots");
  storage.compact("b", bytes(8));
  equal(logRowsInTable(db), 2, "the row a still needs stays");
  deepStrictEqual(new TwinStorage(db).loadAll().get("a"), [bytes(1), bytes(3)]);
  deepStrictEqual(storage.appendChunks([{ assetId: "a", bytes: bytes(4) }], 2), ["a"]);
  storage.compact("a", bytes(7));
  equal(logRowsInTable(db), 0);
  deepStrictEqual(new TwinStorage(db).loadAll().get("a"), [bytes(7)]);
});

Deno.test("a data directory from before the log loads the same chunks", () => {
  const db = new DatabaseSync(":memory:");
  db.exec(`
    CREATE TABLE twin_snapshots (asset_id TEXT PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE twin_chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT, asset_id TEXT NOT NULL, data BLOB NOT NULL);
    CREATE INDEX twin_chunks_by_asset ON twin_chunks (asset_id, seq);
  `);
  db.prepare("INSERT INTO twin_snapshots VALUES (?, ?)").run("a", bytes(9));
  const insert = db.prepare("INSERT INTO twin_chunks (asset_id, data) VALUES (?, ?)");
  insert.run("a", bytes(1));
  insert.run("b", bytes(2));
  insert.run("a", bytes(3));
  const storage = new TwinStorage(db);
  const loaded = storage.loadAll();
  deepStrictEqual(loaded.get("a"), [bytes(9), bytes(1), bytes(3)]);
  deepStrictEqual(loaded.get("b"), [bytes(2)]);
  equal(
    db.prepare("SELECT name FROM sqlite_master WHERE name = 'twin_chunks'").get(),
    undefined,
    "the old table is gone",
  );
  storage.compact("a", bytes(7));
  deepStrictEqual(new TwinStorage(db).loadAll().get("a"), [bytes(7)]);
});

/** A database where twin "a" has a snapshot with log_seq 2 (chunks 1 and 2) and the log is empty. */
function compactedWithEmptyLog(): DatabaseSync {
  const db = new DatabaseSync(":memory:");
  const storage = new TwinStorage(db);
  storage.loadAll();
  storage.appendChunks([{ assetId: "a", bytes: bytes(1) }]);
  storage.appendChunks([{ assetId: "a", bytes: bytes(2) }]);
  storage.compact("a", bytes(9));
  return db;
}

Deno.test("chunks migrated after a downgrade are numbered after every snapshot's log_seq", () => {
  const db = compactedWithEmptyLog();
  // An older gateway wrote chunks to its own table meanwhile.
  db.exec(
    `CREATE TABLE twin_chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT, asset_id TEXT NOT NULL, data BLOB NOT NULL)`,
  );
  db.prepare("INSERT INTO twin_chunks (asset_id, data) VALUES (?, ?)").run("a", bytes(3));
  deepStrictEqual(new TwinStorage(db).loadAll().get("a"), [bytes(9), bytes(3)]);
});

Deno.test("a twin loads the same from its chunks in any order (the log may carry old chunks forward)", () => {
  const replica = makeReplica("gw-a");
  replica.create("arm-1", "welding-arm");
  replica.flush();
  const chunks = [replica.doc("arm-1").save()];
  for (let i = 0; i < 20; i++) {
    replica.write("arm-1", [{ op: "increment", field: "weldCount", delta: 1 }], "owner");
    replica.flush();
    chunks.push(replica.doc("arm-1").saveIncremental());
  }
  const reloaded = makeReplica("gw-a");
  reloaded.load("arm-1", [chunks[0]!, ...chunks.slice(1).reverse()]);
  deepStrictEqual(reloaded.doc("arm-1").heads(), replica.doc("arm-1").heads());
  equal(reloaded.state("arm-1").fields.weldCount?.value, 20);
});

Deno.test("an append right after opening numbers its row after every snapshot, even with the log empty", () => {
  const db = compactedWithEmptyLog();
  new TwinStorage(db).appendChunks([{ assetId: "a", bytes: bytes(3) }]); // no loadAll first
  deepStrictEqual(new TwinStorage(db).loadAll().get("a"), [bytes(9), bytes(3)]);
});

Deno.test("incremental saves of every way a change enters a twin load back to the same twin", () => {
  const clockA = new HybridLogicalClock({ node: "gw-a" });
  const clockB = new HybridLogicalClock({ node: "gw-b" });
  const writer = TwinDoc.create("arm-1", META, clockA.now(), "gw-a");
  const write = (value: number) => {
    writer.write([{ op: "set", field: "setpoints.weldCurrentA", value }], clockA.now());
    writer.commit();
    return writer.takeUnpublished();
  };
  const replica = TwinDoc.empty("arm-1");
  const chunks: Uint8Array[] = [];
  // After each store, the stored chunks alone make the same document.
  const store = () => {
    const bytes = replica.saveIncremental();
    if (bytes.length > 0) chunks.push(bytes);
    deepStrictEqual(TwinDoc.load("arm-1", chunks).heads().sort(), replica.heads().sort());
  };

  replica.applyChanges(writer.takeUnpublished()); // gossip, in order
  store();
  const [first, second] = [write(101), write(102)];
  replica.applyChanges(second!); // parked until its dependency comes
  store();
  replica.applyChanges(first!);
  store();
  replica.write([{ op: "set", field: "setpoints.wireFeedMps", value: 0.05 }], clockB.now());
  replica.commit(); // its own write
  store();
  write(103); // gossip lost: a sync brings it
  syncDocs(replica, writer);
  store();
  for (let i = 0; i < 70; i++) write(200 + i); // more than a sync's changes are listed
  syncDocs(replica, writer);
  store();
  // A sync message with a change whose dependency is missing: Automerge
  // holds it back, and the gossip that brings the dependency releases it.
  const [missing, held] = [write(104), write(105)];
  replica.receiveSyncMessage(
    Automerge.initSyncState(),
    Automerge.encodeSyncMessage({ heads: writer.heads(), need: [], have: [], changes: held! }),
  );
  store();
  replica.applyChanges(missing!);
  store();
  for (let i = 0; i < 3; i++) { // and again the usual way
    replica.applyChanges(write(110 + i));
    store();
  }

  const loaded = TwinDoc.load("arm-1", chunks);
  deepStrictEqual(loaded.heads().sort(), replica.heads().sort());
  equal(loaded.resolve().fields["setpoints.weldCurrentA"]?.value, 112);
  equal(loaded.resolve().fields["setpoints.wireFeedMps"]?.value, 0.05);
  equal(loaded.changeCount(), replica.changeCount());
});

Deno.test("a twin with more unsaved changes than it lists still saves them all", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const writer = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  for (let i = 0; i < 1_100; i++) {
    writer.write([{ op: "increment", field: "weldCount", delta: 1 }], clock.now());
    writer.commit();
  }
  const replica = TwinDoc.empty("arm-1");
  const changes = writer.takeUnpublished();
  for (let i = 0; i < changes.length; i += 100) replica.applyChanges(changes.slice(i, i + 100));
  for (const doc of [writer, replica]) {
    const loaded = TwinDoc.load("arm-1", [doc.saveIncremental()]);
    equal(loaded.changeCount(), 1_101);
    equal(loaded.resolve().fields.weldCount?.value, 1_100);
  }
});
