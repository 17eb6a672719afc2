/**
 * The slot-map layout of twin documents: each writer's LWW and counter slot
 * is a map of its own, documents stored flat still read, and gossip cannot
 * write outside a slot map.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import * as Automerge from "@automerge/automerge";
import { formatTimestamp, HybridLogicalClock } from "../protocols/hlc.ts";
import { TwinDoc, writerTag } from "../protocols/twin_doc.ts";

const META = { kind: "welding-arm", factory: "f1", owner: "gw-a", ownerNode: "gw-a" };
const CURRENT = "setpoints.weldCurrentA";

/** The raw Automerge view of a twin's saved state. */
function rawOf(doc: TwinDoc) {
  return Automerge.getBackend(Automerge.load(doc.save()));
}

function decodedOps(change: Uint8Array) {
  return Automerge.decodeChange(change).ops;
}

Deno.test("a writer's slot is a map: the first write makes it, later writes only set its value", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  doc.write([{ op: "set", field: CURRENT, value: 170 }], clock.now());
  const first = decodedOps(doc.commit()!);
  doc.write([{ op: "set", field: CURRENT, value: 175 }], clock.now());
  const second = decodedOps(doc.commit()!);
  const slot = `f:${CURRENT}@${writerTag("gw-a")}`;
  ok(first.some((op) => op.action === "makeMap" && op.obj === "_root" && op.key === slot));
  assertEquals(second.length, 1);
  assertEquals(second[0]!.action, "set");
  ok(second[0]!.obj !== "_root", "the second write goes into the slot's map");
  assertEquals(rawOf(doc).getAll("_root", slot).map(([type]) => type), ["map"]);
  assertEquals(doc.resolve().fields[CURRENT]?.value, 175);
});

Deno.test("a document stored with flat slot values still resolves, and a write moves the slot into a map", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const genesis = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  const raw = rawOf(genesis);
  const tag = writerTag("gw-a");
  const stamp = () => formatTimestamp(clock.now()).slice(0, 21);
  raw.put("_root", `n:${tag}`, "gw-a");
  raw.put("_root", `f:${CURRENT}@${tag}`, `${stamp()}|170`);
  raw.put("_root", `c:weldCount@${tag}`, `${stamp()}|5`);
  raw.commit("", 0);
  const doc = TwinDoc.load("arm-1", [raw.save()]);
  assertEquals(doc.resolve().fields[CURRENT]?.value, 170);
  assertEquals(doc.resolve().fields.weldCount?.value, 5);
  doc.write([{ op: "increment", field: "weldCount", delta: 2 }], clock.now());
  doc.commit();
  assertEquals(
    doc.resolve().fields.weldCount?.value,
    7,
    "the flat total is where the count goes on",
  );
  assertEquals(doc.resolve().fields[CURRENT]?.value, 170);
  assertEquals(rawOf(doc).getAll("_root", `c:weldCount@${tag}`).map(([type]) => type), ["map"]);
  doc.write([{ op: "set", field: CURRENT, value: 180 }], clock.now());
  doc.commit();
  assertEquals(TwinDoc.load("arm-1", [doc.save()]).resolve().fields[CURRENT]?.value, 180);
});

Deno.test("two replicas that make one slot's map concurrently keep both; the highest HLC wins, before and after", () => {
  const writer = new HybridLogicalClock({ node: "gw-b" });
  const owner = new HybridLogicalClock({ node: "gw-a" });
  const one = TwinDoc.create("arm-1", META, owner.now(), "gw-a");
  const two = TwinDoc.empty("arm-1");
  two.applyChanges(one.takeUnpublished());
  // The same writer's slot made on both sides (a writer that lost its state).
  const early = writer.now();
  const late = writer.now();
  two.write([{ op: "set", field: CURRENT, value: 150 }], late);
  one.write([{ op: "set", field: CURRENT, value: 140 }], early);
  one.commit();
  two.commit();
  const fromOne = one.takeUnpublished();
  const fromTwo = two.takeUnpublished();
  assertEquals(one.applyChanges(fromTwo).applied, 1);
  assertEquals(two.applyChanges(fromOne).applied, 1);
  const slot = `f:${CURRENT}@${writerTag("gw-b")}`;
  assertEquals(rawOf(one).getAll("_root", slot).length, 2, "two maps at one key");
  assertEquals(one.resolve().fields[CURRENT]?.value, 150);
  assertEquals(two.resolve().fields[CURRENT]?.value, 150);
  // Later writes land in Automerge's pick of the two; both sides still agree.
  for (const [doc, other, value] of [[one, two, 160], [two, one, 165]] as const) {
    doc.write([{ op: "set", field: CURRENT, value }], writer.now());
    doc.commit();
    assertEquals(other.applyChanges(doc.takeUnpublished()).applied, 1);
    assertEquals(one.resolve().fields[CURRENT]?.value, value);
    assertEquals(two.resolve().fields[CURRENT]?.value, value);
  }
  // A new epoch carries the slot's best value into one map.
  const rebased = TwinDoc.rebase(one, 1, owner.now(), "gw-a");
  assertEquals(rebased.resolve().fields[CURRENT]?.value, 165);
  assertEquals(rawOf(rebased).getAll("_root", slot).length, 1);
});

Deno.test("gossip that writes outside slot maps is dropped as invalid, and the twin keeps working", () => {
  const clock = new HybridLogicalClock({ node: "gw-a" });
  const doc = TwinDoc.create("arm-1", META, clock.now(), "gw-a");
  doc.write([{ op: "set", field: CURRENT, value: 170 }], clock.now());
  doc.commit();
  const writer = new HybridLogicalClock({ node: "gw-x" });
  writer.update(doc.resolve().lastHlc!); // its write comes after gw-a's
  const forger = TwinDoc.load("arm-1", [doc.save()]);
  forger.write([{ op: "set", field: CURRENT, value: 171 }], writer.now());
  const honest = forger.commit()!;
  const made = Automerge.decodeChange(honest);
  const intoMap = made.ops.find((op) => op.obj !== "_root")!;
  // The same write aimed at a map nobody made (Automerge itself would panic on it).
  const missingMap = Automerge.encodeChange({
    ...made,
    ops: [{ ...intoMap, obj: `999@${made.actor}` }],
    hash: undefined,
  } as unknown as Automerge.DecodedChange);
  const raw = rawOf(doc);
  const tag = writerTag("gw-x");
  raw.put("_root", `f:${CURRENT}@${tag}`, `${formatTimestamp(writer.now()).slice(0, 21)}|172`);
  raw.commit("", 0);
  const flatSlot = raw.getLastLocalChange()!;
  raw.putObject("_root", "s:modes=auto@x", []);
  raw.commit("", 0);
  const list = raw.getLastLocalChange()!;
  const result = doc.applyChanges([missingMap, flatSlot, list]);
  assertEquals(result.invalid, 3);
  assertEquals(result.applied, 0);
  const applied = doc.applyChanges([honest]);
  assertEquals(applied.applied, 1);
  assertEquals(doc.resolve().fields[CURRENT]?.value, 171);
  clock.update(applied.newestHlc!);
  doc.write([{ op: "set", field: CURRENT, value: 173 }], clock.now());
  doc.commit();
  assertEquals(doc.resolve().fields[CURRENT]?.value, 173);
});
