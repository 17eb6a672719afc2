import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { TwinStorage } from "../node/twin_storage.ts";
import { makeReplica } from "./twin_test_util.ts";

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
