/**
 * Twin epochs: an owner replaces a long history with a new document holding
 * the same state; peers switch to it and carry over what only they had.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import * as Automerge from "@automerge/automerge";
import { formatTimestamp, HybridLogicalClock, type Timestamp } from "../protocols/hlc.ts";
import { decodeGossip, encodeGossip, parseTwinDocId, twinDocId } from "../protocols/twin_codec.ts";
import { TwinDoc } from "../protocols/twin_doc.ts";
import type { FlushedChanges, TwinReplica } from "../protocols/twin_replica.ts";
import { FakeWallClock, makeReplica, syncDocs, syncInMemory } from "./twin_test_util.ts";

const META = { kind: "welding-arm", factory: "f1", owner: "gw-a", ownerNode: "gw-a" };

function armDoc(clock: HybridLogicalClock): TwinDoc {
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  for (let i = 1; i <= 50; i++) {
    doc.write([
      { op: "set", field: "setpoints.weldCurrentA", value: 100 + i },
      { op: "increment", field: "weldCount", delta: 1 },
    ], clock.now());
    doc.commit();
  }
  doc.write([{ op: "add", field: "modes", element: "auto" }], clock.now());
  doc.write([{ op: "add", field: "modes", element: "hold" }], clock.now());
  doc.commit();
  doc.write([{ op: "remove", field: "modes", element: "hold" }], clock.now());
  doc.commit();
  return doc;
}

Deno.test("twin document ids carry the epoch after the asset id, and only valid ones parse", () => {
  assertEquals(twinDocId("b0.arm-3", 0), "b0.arm-3");
  assertEquals(twinDocId("b0.arm-3", 7), "b0.arm-3~7");
  assertEquals(parseTwinDocId("b0.arm-3~7"), { assetId: "b0.arm-3", epoch: 7 });
  assertEquals(parseTwinDocId("b0.arm-3"), { assetId: "b0.arm-3", epoch: 0 });
  for (const bad of ["b0.arm-3~0", "b0.arm-3~07", "b0.arm-3~", "~3", "a~1~2", "a b~1"]) {
    assertEquals(parseTwinDocId(bad), undefined, bad);
  }
  // Gossip decoding refuses what does not parse.
  const good = encodeGossip({ factory: "f1", docs: [{ docId: "arm-1~2", changes: [] }] });
  assertEquals(decodeGossip(good).docs[0]?.docId, "arm-1~2");
  const bad = encodeGossip({ factory: "f1", docs: [{ docId: "arm-1~02", changes: [] }] });
  let refused = false;
  try {
    decodeGossip(bad);
  } catch {
    refused = true;
  }
  ok(refused, "a malformed document id is refused");
});

Deno.test("a rebased twin has the same state in a one-change history", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = armDoc(clock);
  const rebased = TwinDoc.rebase(doc, 1, clock.now(), "gw-a");
  assertEquals(rebased.resolve().fields, doc.resolve().fields);
  assertEquals(rebased.resolve().meta, doc.resolve().meta);
  assertEquals(rebased.storedEpoch(), 1);
  assertEquals(rebased.changeCount(), 1);
  ok(rebased.opCount() < 20, `${rebased.opCount()} ops`);
  ok(doc.opCount() > 100, `${doc.opCount()} ops before`);
  assertEquals(rebased.resolve().fields.modes?.value, ["auto"]);
  assertEquals(rebased.resolve().fields.weldCount?.value, 50);
  // Loaded from its bytes, it is the same twin in the same epoch.
  const loaded = TwinDoc.load("arm-1", [rebased.save()]);
  assertEquals(loaded.storedEpoch(), 1);
  assertEquals(loaded.resolve().fields, doc.resolve().fields);
});

Deno.test("joinFrom carries only what beats the newer epoch, idempotently, and keeps removals", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const older = armDoc(clock);
  const before = TwinDoc.load("arm-1", [older.save()]); // a copy from before the rebase
  const newer = TwinDoc.rebase(older, 1, clock.now(), "gw-a");
  // Nothing to carry from the state the epoch was built from, nor from an older copy of it.
  assertEquals(newer.joinFrom(older, clock.now(), "gw-a"), 0);
  assertEquals(newer.joinFrom(before, clock.now(), "gw-a"), 0);
  assertEquals(newer.resolve().fields.modes?.value, ["auto"], "the removed hold stays removed");

  // Writes that landed in the old epoch after the rebase (another writer's, unseen by the owner).
  const late = new HybridLogicalClock({ node: "gw-b" });
  late.update(clock.now());
  older.write([
    { op: "set", field: "setpoints.weldCurrentA", value: 222 },
    { op: "increment", field: "weldCount", delta: 5 },
    { op: "add", field: "modes", element: "manual" },
  ], late.now());
  older.commit();
  // And a later value in the new epoch that the old one must not overwrite.
  const lateStamp = late.now();
  older.write([{ op: "set", field: "setpoints.wireFeedMps", value: 0.1 }], lateStamp);
  older.commit();
  clock.update(lateStamp);
  newer.write([{ op: "set", field: "setpoints.wireFeedMps", value: 0.3 }], clock.now());
  newer.commit();

  const carried = newer.joinFrom(older, clock.now(), "gw-a");
  ok(carried >= 3, `${carried} keys carried`);
  newer.commit();
  const fields = newer.resolve().fields;
  assertEquals(fields["setpoints.weldCurrentA"]?.value, 222);
  assertEquals(fields.weldCount?.value, 55, "counter totals merge by writer, not summed twice");
  assertEquals(fields.modes?.value, ["auto", "manual"]);
  assertEquals(fields["setpoints.wireFeedMps"]?.value, 0.3, "the later write wins");
  assertEquals(newer.joinFrom(older, clock.now(), "gw-a"), 0, "a second join writes nothing");
});

/** `<wall>.<logical>` as stored in a slot value. */
function formatTimestampShort(hlc: Timestamp): string {
  return formatTimestamp(hlc).slice(0, 21);
}

function deliver(flushed: FlushedChanges[], to: TwinReplica): void {
  for (const { docId, factory, changes } of flushed) {
    to.ingestGossip(decodeGossip(encodeGossip({ factory, docs: [{ docId, changes }] })));
  }
}

Deno.test("a peer follows the owner into a new epoch by gossip and carries its own writes over", () => {
  const wall = new FakeWallClock();
  const owner = makeReplica("gw-a", { wall, rebaseAfterOps: 40 });
  const peer = makeReplica("gw-b", { wall, rebaseAfterOps: 40 });
  owner.create("arm-1", "welding-arm");
  syncInMemory(owner, peer);
  deliver(owner.flush(), peer);

  // The peer writes while cut off; the owner's history passes the bound meanwhile.
  peer.write("arm-1", [{ op: "set", field: "setpoints.travelSpeedMmps", value: 7 }], "any");
  const stale = peer.flush(); // gossip of the old epoch, delivered late
  for (let i = 0; i < 60; i++) {
    wall.nowMs += 10;
    owner.write("arm-1", [{ op: "increment", field: "runtimeMs", delta: 10 }], "owner");
    deliver(owner.flush(), peer);
  }
  ok(owner.epochOf("arm-1") >= 1, "the owner started an epoch");
  assertEquals(peer.epochOf("arm-1"), owner.epochOf("arm-1"), "the peer followed");
  ok(owner.doc("arm-1").opCount() <= 40 + 20, `${owner.doc("arm-1").opCount()} ops`);

  // The late old-epoch gossip is dropped (and counted) by the owner …
  deliver(stale, owner);
  ok(owner.stats.dropped_old_epoch > 0);
  assertEquals(owner.state("arm-1").fields["setpoints.travelSpeedMmps"], undefined);
  // … and the peer's switch already carried the write: its next flush brings it.
  ok(peer.stats.epoch_keys_carried > 0);
  deliver(peer.flush(), owner);
  assertEquals(owner.state("arm-1").fields["setpoints.travelSpeedMmps"]?.value, 7);
  assertEquals(owner.state("arm-1").fields.runtimeMs?.value, 600);
  assertEquals(peer.state("arm-1").fields, owner.state("arm-1").fields);
});

Deno.test("a replica far behind fetches the new epoch by sync (its genesis gossip was lost)", () => {
  const wall = new FakeWallClock();
  const owner = makeReplica("gw-a", { wall, rebaseAfterOps: 30 });
  const peer = makeReplica("gw-b", { wall, rebaseAfterOps: 30 });
  owner.create("arm-1", "welding-arm");
  syncInMemory(owner, peer);
  for (let i = 0; i < 100; i++) {
    wall.nowMs += 10;
    owner.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: i }], "owner");
    owner.flush(); // gossip lost
  }
  peer.write("arm-1", [{ op: "add", field: "modes", element: "hold" }], "any");
  ok(owner.epochOf("arm-1") >= 2);
  assertEquals(peer.epochOf("arm-1"), 0);
  syncInMemory(peer, owner);
  syncInMemory(owner, peer);
  assertEquals(peer.epochOf("arm-1"), owner.epochOf("arm-1"));
  assertEquals(owner.state("arm-1").fields.modes?.value, ["hold"]);
  assertEquals(owner.state("arm-1").fields["setpoints.weldCurrentA"]?.value, 99);
  assertEquals(peer.state("arm-1").fields, owner.state("arm-1").fields);
});

Deno.test("two sides of a partition that start the same epoch independently merge it", () => {
  const wall = new FakeWallClock();
  const owner = makeReplica("gw-a", { wall, rebaseAfterOps: 10 });
  const other = makeReplica("gw-b", { wall, rebaseAfterOps: 10 });
  owner.create("arm-1", "welding-arm");
  syncInMemory(owner, other);
  owner.flush();
  other.flush();
  // Partitioned: each side writes past its bound (the non-owner's is 4x the owner's).
  let weldCountA = 0;
  while (owner.epochOf("arm-1") === 0) {
    wall.nowMs += 5;
    owner.write("arm-1", [{ op: "increment", field: "weldCount", delta: 1 }], "owner");
    weldCountA++;
    owner.flush();
  }
  let speed = 0;
  while (other.epochOf("arm-1") === 0) {
    wall.nowMs += 5;
    other.write(
      "arm-1",
      [{ op: "set", field: "setpoints.travelSpeedMmps", value: ++speed }],
      "any",
    );
    other.flush();
  }
  assertEquals([owner.epochOf("arm-1"), other.epochOf("arm-1")], [1, 1]);
  ok(other.stats.epochs_started === 1 && owner.stats.epochs_started === 1);
  // Heal: both geneses of epoch 1 end up in one document holding both sides' state.
  syncInMemory(owner, other);
  syncInMemory(other, owner);
  const fields = owner.state("arm-1").fields;
  assertEquals(fields.weldCount?.value, weldCountA);
  assertEquals(fields["setpoints.travelSpeedMmps"]?.value, speed);
  assertEquals(other.state("arm-1").fields, fields);
  assertEquals(owner.doc("arm-1").heads(), other.doc("arm-1").heads());
});

Deno.test("an OR-set add removed by a key delete (before tombstones) stays removed across epochs", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  doc.write([{ op: "add", field: "modes", element: "hold" }], clock.now());
  doc.commit();
  const stale = TwinDoc.load("arm-1", [doc.save()]); // a replica that never saw the delete
  // The old way to remove: delete the add's key (still what a sync message may carry).
  const raw = Automerge.getBackend(Automerge.load(doc.save()));
  const key = raw.keys("_root").find((k) => k.startsWith("s:modes=hold@"))!;
  raw.delete("_root", key);
  raw.commit("", 0);
  const removed = TwinDoc.load("arm-1", [doc.save(), raw.getLastLocalChange()!]);
  assertEquals(removed.resolve().fields.modes, undefined);

  // The replica that removed it starts an epoch; the stale one carries its state over.
  const epoch = TwinDoc.rebase(removed, 1, clock.now(), "gw-a");
  epoch.joinFrom(stale, clock.now(), "gw-b");
  assertEquals(epoch.resolve().fields.modes, undefined, "the hold does not come back");
  // The other way round: the stale replica starts the epoch, the remover carries over.
  const other = TwinDoc.rebase(stale, 1, clock.now(), "gw-b");
  assertEquals(other.resolve().fields.modes?.value, ["hold"]);
  other.joinFrom(removed, clock.now(), "gw-a");
  assertEquals(other.resolve().fields.modes, undefined, "the delete is carried as a tombstone");
});

Deno.test("key deletes that arrive by sync, before and after a prepared epoch, become tombstones", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  doc.write([{ op: "add", field: "modes", element: "hold" }], clock.now());
  doc.write([{ op: "add", field: "modes", element: "auto" }], clock.now());
  doc.commit();
  const stale = TwinDoc.load("arm-1", [doc.save()]); // a replica that never saw the deletes
  // The old way to remove, one element after the other, on another replica.
  const raw = Automerge.getBackend(Automerge.load(doc.save()));
  const removals = ["hold", "auto"].map((element) => {
    raw.delete("_root", raw.keys("_root").find((k) => k.startsWith(`s:modes=${element}@`))!);
    raw.commit("", 0);
    return raw.getLastLocalChange()!;
  });
  const removedHold = TwinDoc.load("arm-1", [doc.save(), removals[0]!]);
  const removedBoth = TwinDoc.load("arm-1", [doc.save(), ...removals]);

  // Sync is not checked op by op: the first delete arrives, and the scan for
  // the next epoch is done ahead of it; then the second delete arrives.
  syncDocs(doc, removedHold);
  doc.prepareEpoch();
  assertEquals(doc.resolve().fields.modes?.value, ["auto"]);
  syncDocs(doc, removedBoth);
  assertEquals(doc.resolve().fields.modes, undefined, "the sync removed both");

  const epoch = TwinDoc.rebase(doc, 1, clock.now(), "gw-a");
  epoch.joinFrom(stale, clock.now(), "gw-b");
  assertEquals(epoch.resolve().fields.modes, undefined, "neither comes back");
});

Deno.test("a key delete in a sync that brings many changes is found when the epoch starts", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  doc.write([{ op: "add", field: "modes", element: "hold" }], clock.now());
  doc.commit();
  const stale = TwinDoc.load("arm-1", [doc.save()]);
  // An old version's replica: many changes (more than are scanned as they
  // arrive), then the delete.
  const raw = Automerge.getBackend(Automerge.load(doc.save()));
  for (let i = 0; i < 100; i++) {
    raw.put("_root", "pad", i);
    raw.commit("", 0);
  }
  raw.delete("_root", raw.keys("_root").find((k) => k.startsWith("s:modes=hold@"))!);
  raw.commit("", 0);
  syncDocs(doc, TwinDoc.load("arm-1", [raw.save()]));
  assertEquals(doc.resolve().fields.modes, undefined);

  const epoch = TwinDoc.rebase(doc, 1, clock.now(), "gw-a");
  epoch.joinFrom(stale, clock.now(), "gw-b");
  assertEquals(epoch.resolve().fields.modes, undefined, "the hold does not come back");
});

Deno.test("one flush starts at most one epoch; the twins passed over start at their next writes", () => {
  const owner = makeReplica("gw-a", { rebaseAfterOps: 30 });
  const arms = ["arm-1", "arm-2", "arm-3"];
  for (const arm of arms) owner.create(arm, "welding-arm");
  owner.flush();
  // Written alike, all three pass the bound in the same flush.
  let writes = 0;
  while (owner.stats.epochs_started === 0) {
    ok(writes++ < 100, "the bound is passed");
    for (const arm of arms) {
      owner.write(arm, [{ op: "set", field: "setpoints.weldCurrentA", value: writes }], "any");
    }
    owner.flush();
  }
  assertEquals(arms.map((arm) => owner.epochOf(arm)).sort(), [0, 0, 1]);
  for (const started of [2, 3]) {
    for (const arm of arms) {
      owner.write(arm, [{ op: "set", field: "setpoints.weldVoltageV", value: started }], "any");
    }
    owner.flush();
    assertEquals(owner.stats.epochs_started, started);
  }
  assertEquals(arms.map((arm) => owner.epochOf(arm)), [1, 1, 1]);
  for (const arm of arms) {
    assertEquals(owner.state(arm).fields["setpoints.weldCurrentA"]?.value, writes);
    assertEquals(owner.state(arm).fields["setpoints.weldVoltageV"]?.value, 3);
  }
});

Deno.test("a value that fails the model is never carried and never displaces a valid one", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  doc.write([{ op: "set", field: "setpoints.weldCurrentA", value: 180 }], clock.now());
  doc.commit();
  // Two concurrent values in one slot: a valid one, and a later-stamped one out of the model's range.
  const raw = Automerge.getBackend(Automerge.load(doc.save()));
  const slot = raw.keys("_root").find((k) => k.startsWith("f:setpoints.weldCurrentA@"))!;
  const map = raw.getAll("_root", slot)[0]![1] as string; // the slot's map
  const concurrent = Automerge.getBackend(Automerge.load(doc.save()));
  raw.put(map, "v", `${formatTimestampShort(clock.now())}|181`);
  raw.commit("", 0);
  concurrent.put(map, "v", `${formatTimestampShort(clock.now())}|9999`);
  concurrent.commit("", 0);
  raw.applyChanges([concurrent.getLastLocalChange()!]);
  assertEquals(raw.getAll(map, "v").length, 2, "a real conflict");
  const mixed = TwinDoc.load("arm-1", [raw.save()]);
  assertEquals(mixed.resolve().fields["setpoints.weldCurrentA"]?.value, 181);
  const rebased = TwinDoc.rebase(mixed, 1, clock.now(), "gw-a");
  assertEquals(rebased.resolve().fields["setpoints.weldCurrentA"]?.value, 181);
  assertEquals(rebased.joinFrom(mixed, clock.now(), "gw-a"), 0);
});

Deno.test("an epoch nobody can serve does not hold a twin back, and is not passed on in hellos", () => {
  const wall = new FakeWallClock();
  const owner = makeReplica("gw-a", { wall, rebaseAfterOps: 5 });
  const peer = makeReplica("gw-b", { wall, rebaseAfterOps: 5 });
  const third = makeReplica("gw-c", { wall, rebaseAfterOps: 5 });
  owner.create("arm-1", "welding-arm");
  syncInMemory(owner, peer);
  syncInMemory(owner, third);
  // A change that names epoch 7 and depends on something nobody has: parked, no genesis.
  const stranger = new HybridLogicalClock({ node: "gw-x" });
  const orphan = TwinDoc.create("arm-1", META, stranger.now(), "x");
  orphan.write([{ op: "set", field: "setpoints.weldCurrentA", value: 1 }], stranger.now());
  orphan.commit();
  const [, second] = Automerge.getAllChanges(Automerge.load(orphan.save()));
  peer.ingestGossip({ factory: "f1", docs: [{ docId: "arm-1~7", changes: [second!] }] });
  assertEquals(peer.parkedTwins(), new Set(["arm-1~7"]));
  syncInMemory(peer, third);
  ok(!third.listDocs().some((d) => d.docId === "arm-1~7"), "the pending epoch did not spread");

  // The owner's real epochs still reach the peer, which adopts them.
  for (let i = 0; i < 20 && owner.epochOf("arm-1") === 0; i++) {
    wall.nowMs += 10;
    owner.write("arm-1", [{ op: "increment", field: "runtimeMs", delta: 10 }], "owner");
    deliver(owner.flush(), peer);
  }
  ok(owner.epochOf("arm-1") >= 1);
  assertEquals(peer.epochOf("arm-1"), owner.epochOf("arm-1"));
  assertEquals(peer.state("arm-1").fields, owner.state("arm-1").fields);

  // A gateway that first hears of the twin through that epoch number still gets the real one.
  const newcomer = makeReplica("gw-d", { wall, rebaseAfterOps: 5 });
  newcomer.ingestGossip({ factory: "f1", docs: [{ docId: "arm-1~7", changes: [second!] }] });
  assertEquals(newcomer.epochOf("arm-1"), 0, "an epoch number alone is not adopted");
  syncInMemory(newcomer, owner);
  assertEquals(newcomer.epochOf("arm-1"), owner.epochOf("arm-1"));
  assertEquals(newcomer.state("arm-1").fields, owner.state("arm-1").fields);
});

Deno.test("gossip may not set metadata after a document's first change, nor delete keys", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  const raw = Automerge.getBackend(Automerge.load(doc.save()));
  raw.put("_root", "meta:epoch", 5);
  raw.commit("", 0);
  const setsEpoch = raw.getLastLocalChange()!;
  raw.delete("_root", "meta:owner");
  raw.commit("", 0);
  const deletes = raw.getLastLocalChange()!;
  const result = doc.applyChanges([setsEpoch, deletes]);
  assertEquals(result.invalid, 2);
  assertEquals(doc.storedEpoch(), 0);
});

Deno.test("many live keys (OR-set toggles) do not start an epoch at every write", () => {
  const owner = makeReplica("gw-a", { rebaseAfterOps: 50 });
  owner.create("arm-1", "welding-arm");
  for (let i = 0; i < 120; i++) {
    const op = i % 2 === 0 ? "add" as const : "remove" as const;
    owner.write("arm-1", [{ op, field: "modes", element: "hold" }], "any");
    owner.flush();
  }
  ok(owner.doc("arm-1").keyCount() > 100, "tombstones and adds are live keys");
  const before = owner.stats.epochs_started;
  for (let i = 0; i < 20; i++) {
    owner.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: 100 + i }], "any");
    owner.flush();
  }
  ok(owner.stats.epochs_started - before <= 1, `${owner.stats.epochs_started - before} epochs`);
});
