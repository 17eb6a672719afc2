/**
 * Property: whatever the interleaving of writes, partitions, dropped,
 * duplicated and reordered gossip, replicas end equal after delivery plus a
 * final sync round, and each field obeys its CRDT's rule.
 * Replay a failure with `TWINMESH_SEED=<seed>` (printed at start).
 */
import fc from "fast-check";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { compareTimestamps, formatTimestamp, type Timestamp } from "../protocols/hlc.ts";
import { decodeGossip, encodeGossip } from "../protocols/twin_codec.ts";
import type { TwinReplica } from "../protocols/twin_replica.ts";
import { TwinDoc } from "../protocols/twin_doc.ts";
import { type TwinWrite, WELDING_ARM_AXES, WELDING_ARM_MODES } from "../protocols/twin_model.ts";
import { FakeWallClock, makeReplica, propertySeed, syncInMemory } from "./twin_test_util.ts";

const ASSETS = ["arm-1", "arm-2"] as const;
const SETPOINTS = ["setpoints.weldCurrentA", "setpoints.travelSpeedMmps"] as const;
const COUNTERS = ["weldCount", "runtimeMs"] as const;

type Op =
  | { t: "set"; r: number; a: number; field: string; value: number }
  | { t: "inc"; r: number; a: number; field: string; delta: number }
  | { t: "mode"; r: number; a: number; add: boolean; element: string }
  | { t: "flush"; r: number }
  | { t: "deliver"; pick: number }
  | { t: "drop"; pick: number }
  | { t: "dup"; pick: number }
  | { t: "partition"; groups: number[] }
  | { t: "sync"; r: number; s: number }
  | { t: "tick"; ms: number }
  | { t: "read"; r: number; a: number };

const replicaIndex = fc.nat({ max: 4 });
const assetIndex = fc.nat({ max: ASSETS.length - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant("set" as const),
      r: replicaIndex,
      a: assetIndex,
      field: fc.constantFrom(...WELDING_ARM_AXES.map((axis) => `joints.${axis}`), ...SETPOINTS),
      value: fc.integer({ min: 0, max: 6000 }).map((v) => v / 1000),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("inc" as const),
      r: replicaIndex,
      a: assetIndex,
      field: fc.constantFrom(...COUNTERS),
      delta: fc.integer({ min: 1, max: 1000 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("mode" as const),
      r: replicaIndex,
      a: assetIndex,
      add: fc.boolean(),
      element: fc.constantFrom(...WELDING_ARM_MODES.slice(0, 3)),
    }),
  },
  { weight: 4, arbitrary: fc.record({ t: fc.constant("flush" as const), r: replicaIndex }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant("deliver" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("drop" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("dup" as const), pick: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant("partition" as const),
      groups: fc.array(fc.nat({ max: 1 }), { minLength: 5, maxLength: 5 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ t: fc.constant("sync" as const), r: replicaIndex, s: replicaIndex }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("tick" as const), ms: fc.nat({ max: 50 }) }) },
  // Reads build the resolve caches mid-history; the end checks them against fresh loads.
  {
    weight: 2,
    arbitrary: fc.record({ t: fc.constant("read" as const), r: replicaIndex, a: assetIndex }),
  },
);

interface Oracle {
  lww: Map<string, { hlc: Timestamp; value: number }>;
  counters: Map<string, number>;
  /** Per asset+element: tags of all adds, and tags some remove observed. */
  adds: Map<string, Set<string>>;
  removed: Map<string, Set<string>>;
}

/** Epoch activity over all runs, so the epoch property can show it exercised epochs. */
const epochsSeen = { started: 0, adopted: 0, carried: 0 };

/**
 * `rebaseAfterOps`: owners start new epochs of their twins past this much
 * history (undefined: the default bound, which these short runs never reach;
 * 0: at nearly every write).
 */
function runScenario(
  replicaCount: number,
  skewsMs: number[],
  ops: Op[],
  rebaseAfterOps?: number,
): void {
  const wall = new FakeWallClock();
  const replicas: TwinReplica[] = [];
  for (let i = 0; i < replicaCount; i++) {
    replicas.push(makeReplica(`gw-${i}`, { wall, skewMs: skewsMs[i] ?? 0, rebaseAfterOps }));
  }
  replicas[0]!.create(ASSETS[0], "welding-arm");
  replicas[1]!.create(ASSETS[1], "welding-arm");
  // Everyone learns both twins (as on first connection), then the chaos starts.
  for (const r of replicas.slice(1)) syncInMemory(replicas[0]!, r);
  for (const r of replicas) if (r !== replicas[1]) syncInMemory(replicas[1]!, r);
  for (const r of replicas) r.flush();

  const oracle: Oracle = {
    lww: new Map(),
    counters: new Map(),
    adds: new Map(),
    removed: new Map(),
  };
  let queue: { to: number; from: number; bytes: Uint8Array }[] = [];
  let groups = replicas.map(() => 0);
  const reachable = (x: number, y: number) => groups[x] === groups[y];

  const write = (r: number, a: number, writes: TwinWrite[]) => {
    const hlc = replicas[r]!.write(ASSETS[a]!, writes, "owner");
    return hlc;
  };
  const publish = (r: number) => {
    for (const flushed of replicas[r]!.flush()) {
      const bytes = encodeGossip({
        factory: flushed.factory,
        docs: [{ docId: flushed.docId, changes: flushed.changes }],
      });
      for (let to = 0; to < replicas.length; to++) if (to !== r) queue.push({ to, from: r, bytes });
    }
  };

  for (const op of ops) {
    const r = "r" in op ? op.r % replicaCount : 0;
    switch (op.t) {
      case "set": {
        const hlc = write(r, op.a, [{ op: "set", field: op.field, value: op.value }]);
        const key = `${ASSETS[op.a]}/${op.field}`;
        const best = oracle.lww.get(key);
        if (!best || compareTimestamps(hlc, best.hlc) > 0) {
          oracle.lww.set(key, { hlc, value: op.value });
        }
        break;
      }
      case "inc": {
        write(r, op.a, [{ op: "increment", field: op.field, delta: op.delta }]);
        const key = `${ASSETS[op.a]}/${op.field}`;
        oracle.counters.set(key, (oracle.counters.get(key) ?? 0) + op.delta);
        break;
      }
      case "mode": {
        const key = `${ASSETS[op.a]}/${op.element}`;
        if (op.add) {
          const hlc = write(r, op.a, [{ op: "add", field: "modes", element: op.element }]);
          const tags = oracle.adds.get(key) ?? new Set();
          tags.add(formatTimestamp(hlc));
          oracle.adds.set(key, tags);
        } else {
          const observed = replicas[r]!.doc(ASSETS[op.a]!).setTags("modes", op.element);
          write(r, op.a, [{ op: "remove", field: "modes", element: op.element }]);
          const removed = oracle.removed.get(key) ?? new Set();
          for (const tag of observed) removed.add(tag);
          oracle.removed.set(key, removed);
        }
        break;
      }
      case "flush":
        publish(r);
        break;
      case "deliver":
      case "drop":
      case "dup": {
        if (queue.length === 0) break;
        const index = op.pick % queue.length;
        const message = queue[index]!;
        if (op.t === "dup") {
          queue.push(message);
          break;
        }
        queue.splice(index, 1);
        if (op.t === "deliver" && reachable(message.from, message.to)) {
          replicas[message.to]!.ingestGossip(decodeGossip(message.bytes));
        }
        break;
      }
      case "partition":
        groups = replicas.map((_, i) => op.groups[i] ?? 0);
        break;
      case "sync": {
        const s = op.s % replicaCount;
        if (s !== r && reachable(r, s)) syncInMemory(replicas[r]!, replicas[s]!);
        break;
      }
      case "tick":
        wall.nowMs += op.ms;
        break;
      case "read": {
        const replica = replicas[op.r % replicaCount]!;
        const asset = ASSETS[op.a]!;
        if (replica.has(asset)) assertFreshState(replica, asset);
        break;
      }
    }
  }

  // Heal: publish everything, deliver what is still in flight, then one sync round.
  groups = replicas.map(() => 0);
  replicas.forEach((_, r) => publish(r));
  for (const message of queue) replicas[message.to]!.ingestGossip(decodeGossip(message.bytes));
  queue = [];
  for (let pass = 0; pass < 2; pass++) {
    for (const r of replicas.slice(1)) syncInMemory(replicas[0]!, r);
  }

  for (const replica of replicas) {
    epochsSeen.started += replica.stats.epochs_started;
    epochsSeen.adopted += replica.stats.epochs_adopted;
    epochsSeen.carried += replica.stats.epoch_keys_carried;
  }

  // 1. All replicas are equal, and equal to a fresh load of their bytes (no stale cache).
  const reference = snapshot(replicas[0]!);
  for (const replica of replicas.slice(1)) assertEquals(snapshot(replica), reference);
  for (const replica of replicas) for (const asset of ASSETS) assertFreshState(replica, asset);

  // 2. Each field follows its CRDT rule.
  const merged = replicas[0]!;
  for (const [key, expected] of oracle.lww) {
    const [asset, field] = splitKey(key);
    const got = merged.state(asset).fields[field];
    assertEquals(got?.value, expected.value, `LWW ${key} picks the highest HLC`);
    assertEquals(got && formatTimestamp(got.hlc), formatTimestamp(expected.hlc));
  }
  for (const [key, sum] of oracle.counters) {
    const [asset, field] = splitKey(key);
    assertEquals(merged.state(asset).fields[field]?.value, sum, `counter ${key} is the exact sum`);
  }
  for (const asset of ASSETS) {
    const present = new Set((merged.state(asset).fields.modes?.value ?? []) as string[]);
    for (const element of WELDING_ARM_MODES) {
      const key = `${asset}/${element}`;
      const removed = oracle.removed.get(key) ?? new Set();
      const survivingAdd = [...(oracle.adds.get(key) ?? [])].some((tag) => !removed.has(tag));
      assertEquals(present.has(element), survivingAdd, `or-set ${key}: an unobserved add wins`);
    }
  }
}

/** The (cached) resolved state equals that of a document loaded fresh from the same bytes. */
function assertFreshState(replica: TwinReplica, asset: string): void {
  const fresh = TwinDoc.load(asset, [replica.doc(asset).save()]).resolve();
  assertEquals(replica.state(asset), fresh, `${asset}: cached state equals a fresh resolve`);
}

function splitKey(key: string): [string, string] {
  const slash = key.indexOf("/");
  return [key.slice(0, slash), key.slice(slash + 1)];
}

function snapshot(replica: TwinReplica): unknown {
  return ASSETS.map((asset) => {
    const state = replica.state(asset);
    return {
      heads: [...replica.doc(asset).heads()].sort(),
      meta: state.meta,
      fields: Object.fromEntries(
        Object.entries(state.fields).sort(([a], [b]) => (a < b ? -1 : 1)).map((
          [name, field],
        ) => [name, { value: field.value, hlc: formatTimestamp(field.hlc) }]),
      ),
    };
  });
}

Deno.test("replicas converge under partitions, drops, duplicates and reordering", () => {
  const seed = propertySeed("twin convergence");
  fc.assert(
    fc.property(
      fc.integer({ min: 3, max: 5 }),
      fc.array(fc.integer({ min: -100, max: 100 }), { minLength: 5, maxLength: 5 }),
      fc.array(opArb, { minLength: 30, maxLength: 120 }),
      (replicaCount, skewsMs, ops) => runScenario(replicaCount, skewsMs, ops),
    ),
    { seed, numRuns: 50 },
  );
});

Deno.test("replicas converge when owners start new epochs mid-run (short histories)", () => {
  const seed = propertySeed("twin convergence with epochs");
  fc.assert(
    fc.property(
      fc.integer({ min: 3, max: 5 }),
      fc.array(fc.integer({ min: -100, max: 100 }), { minLength: 5, maxLength: 5 }),
      fc.array(opArb, { minLength: 30, maxLength: 120 }),
      fc.integer({ min: 0, max: 4 }),
      (replicaCount, skewsMs, ops, rebaseAfterOps) =>
        runScenario(replicaCount, skewsMs, ops, rebaseAfterOps),
    ),
    { seed, numRuns: Number(Deno.env.get("TWINMESH_RUNS") ?? 60) },
  );
  console.log(`epochs over all runs: ${JSON.stringify(epochsSeen)}`);
  assertEquals(epochsSeen.started > 0 && epochsSeen.adopted > 0 && epochsSeen.carried > 0, true);
});

Deno.test("or-set: an add concurrent with a remove survives", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  a.write("arm-1", [{ op: "add", field: "modes", element: "hold" }], "any");
  syncInMemory(a, b);
  // Concurrently: a removes the hold it saw, b adds hold again.
  a.write("arm-1", [{ op: "remove", field: "modes", element: "hold" }], "any");
  b.write("arm-1", [{ op: "add", field: "modes", element: "hold" }], "any");
  syncInMemory(a, b);
  assertEquals(a.state("arm-1").fields.modes?.value, ["hold"]);
  assertEquals(b.state("arm-1").fields.modes?.value, ["hold"]);
});

Deno.test("lww: among concurrent values the highest HLC wins, not Automerge's actor order", () => {
  const wall = new FakeWallClock();
  const a = makeReplica("gw-a", { wall });
  const b = makeReplica("gw-b", { wall, skewMs: 30 }); // b's clock is ahead
  a.create("arm-1", "welding-arm");
  syncInMemory(a, b);
  const hlcB = b.write(
    "arm-1",
    [{ op: "set", field: "setpoints.weldCurrentA", value: 150 }],
    "any",
  );
  const hlcA = a.write(
    "arm-1",
    [{ op: "set", field: "setpoints.weldCurrentA", value: 200 }],
    "any",
  );
  syncInMemory(a, b);
  const winner = compareTimestamps(hlcA, hlcB) > 0 ? 200 : 150;
  assertEquals(winner, 150);
  assertEquals(a.state("arm-1").fields["setpoints.weldCurrentA"]?.value, winner);
  assertEquals(b.state("arm-1").fields["setpoints.weldCurrentA"]?.value, winner);
});

Deno.test("after gossip from a peer whose clock runs ahead, a local write outranks what it saw", () => {
  const wall = new FakeWallClock();
  const a = makeReplica("gw-a", { wall });
  const ahead = makeReplica("gw-b", { wall, skewMs: 300 }); // within the max offset
  const far = makeReplica("gw-c", { wall, skewMs: 5_000 }); // beyond it: refused
  a.create("arm-1", "welding-arm");
  syncInMemory(a, ahead);
  syncInMemory(a, far);
  const seen = ahead.write(
    "arm-1",
    [{ op: "set", field: "setpoints.weldCurrentA", value: 150 }],
    "any",
  );
  far.write("arm-1", [{ op: "set", field: "setpoints.weldVoltageV", value: 20 }], "any");
  for (const peer of [ahead, far]) {
    for (const { docId, changes } of peer.flush()) {
      a.ingestGossip({ factory: "f1", docs: [{ docId, changes }] });
    }
  }
  assertEquals(a.drainRemoteChanged(), ["arm-1"]);
  assertEquals(a.stats.hlc_remote_rejected, 1); // gw-c's stamp is not adopted…
  // …and does not hide gw-b's, which the clock moved past.
  const mine = a.write(
    "arm-1",
    [{ op: "set", field: "setpoints.weldCurrentA", value: 160 }],
    "any",
  );
  assertEquals(compareTimestamps(mine, seen) > 0, true);
  assertEquals(a.state("arm-1").fields["setpoints.weldCurrentA"]?.value, 160);
});

Deno.test("g-counter: increments from every gateway are summed once, even when re-delivered", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  syncInMemory(a, b);
  a.write("arm-1", [{ op: "increment", field: "weldCount", delta: 3 }], "owner");
  b.write("arm-1", [{ op: "increment", field: "weldCount", delta: 4 }], "owner");
  const fromA = a.flush();
  const batch = { factory: "f1", docs: [{ docId: "arm-1", changes: fromA[0]!.changes }] };
  b.ingestGossip(batch);
  b.ingestGossip(batch);
  syncInMemory(a, b);
  assertEquals(a.state("arm-1").fields.weldCount?.value, 7);
  assertEquals(b.state("arm-1").fields.weldCount?.value, 7);
});

Deno.test("a state read between two gossiped writes of one slot shows the second write", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  const gossip = () => {
    for (const { docId, changes } of a.flush()) {
      b.ingestGossip({ factory: "f1", docs: [{ docId, changes }] });
    }
  };
  for (const value of [100, 120, 140]) {
    a.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value }], "any");
    a.write("arm-1", [{ op: "increment", field: "weldCount", delta: 1 }], "owner");
    gossip();
    const fields = b.state("arm-1").fields;
    assertEquals([fields["setpoints.weldCurrentA"]?.value, fields.weldCount?.value], [
      value,
      (value - 80) / 20,
    ]);
  }
});
