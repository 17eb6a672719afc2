/**
 * E-stop over real gateway processes (issue 4): HTTP trigger, libp2p e-stop
 * streams, SQLite latch, simulated arms. Every wait is bounded.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import {
  eventually,
  spawn,
  startGateway,
  stopAll,
  stopGateway,
  tempDir,
  uniqueFactory,
  waitReady,
} from "./gateway_test_util.ts";
import {
  delay,
  freePort,
  type GatewayProcess,
  getJson,
  postJson,
} from "../scripts/mesh_processes.ts";
import { DatabaseSync } from "node:sqlite";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import type { EstopComponents } from "../node/estop_service.ts";
import { createEstopService } from "../node/estop_service.ts";
import { HybridLogicalClock } from "../protocols/hlc.ts";

interface AckView {
  peer: string;
  latencyMs: number;
  status: string;
}

interface RecordView {
  id: string;
  kind: "stop" | "reset" | "watchdog" | "refusal";
  direction: "issued" | "received";
  origin: string;
  reason: string;
  stopIds?: string[];
  acks: AckView[];
  missing: string[];
  late: boolean;
  atMs: number;
  actedAtMs?: number;
  assets?: string[];
  status?: string;
}

interface EstopView {
  latched: { assetId: string; stopIds: string[]; since: string }[];
  recent: RecordView[];
  watchdogTripped: boolean;
}

interface AssetView {
  id: string;
  stopped: boolean;
  latched: boolean;
}

const estopOf = (g: GatewayProcess) => getJson<EstopView>(g, "/estop");
const peerIdOf = async (g: GatewayProcess) =>
  (await getJson<{ peerId: string }>(g, "/health")).peerId;
const addrOf = (port: number) => `/ip4/127.0.0.1/tcp/${port}`;

async function assetOf(g: GatewayProcess, id: string): Promise<AssetView> {
  const asset = (await getJson<AssetView[]>(g, "/assets")).find((a) => a.id === id);
  assert(asset, `${g.spec.name} does not own ${id}`);
  return asset;
}

async function twinModes(g: GatewayProcess, id: string): Promise<string[]> {
  const twin = await getJson<{ fields: Record<string, { value: unknown }> }>(g, `/twins/${id}`);
  const modes = twin.fields.modes?.value;
  return Array.isArray(modes) ? modes.map(String) : [];
}

/** POST /estop; returns the stop id (asserts 202). */
async function issueStop(
  g: GatewayProcess,
  target: unknown,
  reason = "test stop",
): Promise<string> {
  const response = await postJson<{ id: string; hlc: string }>(g, "/estop", { target, reason });
  assertEquals(response.status, 202, `POST /estop at ${g.spec.name}`);
  return response.body.id;
}

async function issueReset(g: GatewayProcess, stopIds: string[]): Promise<string> {
  const response = await postJson<{ id: string }>(g, "/estop/reset", { stopIds, reason: "test" });
  assertEquals(response.status, 202, `POST /estop/reset at ${g.spec.name}`);
  return response.body.id;
}

/** True once `g` has `stopId` latched on `assetId`. */
async function latches(g: GatewayProcess, assetId: string, stopId: string): Promise<boolean> {
  const view = await estopOf(g);
  return view.latched.some((l) => l.assetId === assetId && l.stopIds.includes(stopId));
}

/** True once the origin's record of `id` holds an ack from `owner`. */
async function ackedBy(origin: GatewayProcess, id: string, owner: string): Promise<boolean> {
  const record = (await estopOf(origin)).recent.find((r) => r.id === id && r.kind !== "refusal");
  return record?.acks.some((a) => a.peer === owner) ?? false;
}

/**
 * Options of an origin gateway "org" and of an owner "own" that links to it
 * by configured peer (no mDNS), in a factory of their own. The owner's
 * options start it again on the same data dir (and ports).
 */
function originAndOwner(label: string) {
  const dir = tempDir(`estop-${label}`);
  const factory = uniqueFactory(label);
  const originPort = freePort();
  const originOptions = {
    name: "org",
    factory,
    dir,
    listenPort: originPort,
    extraArgs: ["--no-mdns"],
  };
  const ownerOptions = {
    name: "own",
    factory,
    dir,
    listenPort: freePort(),
    peers: [addrOf(originPort)],
    extraArgs: ["--no-mdns"],
  };
  return { dir, originOptions, ownerOptions };
}

/** Waits until every gateway has a live e-stop link to `count` others. */
async function linked(gateways: GatewayProcess[], count: number, timeoutMs: number) {
  return await eventually(
    async () => {
      const views = await Promise.all(
        gateways.map((g) => getJson<{ stats: { estopLivePeers: number } }>(g, "/status")),
      );
      return views.every((v) => v.stats.estopLivePeers >= count);
    },
    timeoutMs,
    100,
  );
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Gateway processes in the mesh test. Issue 4 names ten; on this 2-core host shared with
 * other gateway runs, ten processes took 8–10 s to link at load ≈ 6 and missed 30 s at
 * load ≈ 15 (processes starved of CPU for seconds), so the default is five (≈ 15–30 s).
 * `TWINMESH_ESTOP_TEST_GATEWAYS=10` runs the full ten on a quiet host; the benchmark
 * (`deno task bench estop`) always runs ten processes with 1,000 stops.
 */
const MESH_SIZE = Math.max(2, Number(Deno.env.get("TWINMESH_ESTOP_TEST_GATEWAYS") ?? 5));

Deno.test(`a stop among ${MESH_SIZE} gateway processes latches at the owner, and 100 random stops across them are all acked`, async () => {
  const dir = tempDir("estop-ten");
  const factory = uniqueFactory("estop10");
  const n = MESH_SIZE;
  const gateways = Array.from(
    { length: n },
    (_, i) =>
      spawn({
        name: `g${i}`,
        factory,
        dir,
        extraArgs: ["--telemetry-hz", "10", "--fault-rate", "0"],
      }),
  );
  try {
    await Promise.all(gateways.map((g) => waitReady(g, 30_000)));
    assert(await linked(gateways, n - 1, 30_000), `e-stop links among ${n} not up within 30 s`);
    const peerIds = await Promise.all(gateways.map(peerIdOf));

    // One stop, seen end to end: origin g0, owner the last gateway.
    const last = gateways[n - 1]!;
    const first = await issueStop(gateways[0]!, { asset: `g${n - 1}.arm-1` }, "fence open");
    assert(
      await eventually(() => latches(last, `g${n - 1}.arm-1`, first), 3_000),
      "the owner never latched the stop",
    );
    assert(
      await eventually(() => ackedBy(gateways[0]!, first, peerIds[n - 1]!), 3_000),
      "g0 saw no ack",
    );
    const arm = await assetOf(last, `g${n - 1}.arm-1`);
    assert(arm.stopped && arm.latched, `arm not stopped: ${JSON.stringify(arm)}`);
    assert(
      await eventually(
        async () => (await twinModes(last, `g${n - 1}.arm-1`)).includes("estop"),
        3_000,
      ),
      "the twin does not show the estop mode",
    );

    // 100 random stops from random origins to random assets, paced 10 ms apart.
    const random = mulberry32(4);
    const issued: { id: string; origin: number; owner: number; assetId: string }[] = [];
    for (let i = 0; i < 100; i++) {
      const origin = Math.floor(random() * n);
      const owner = Math.floor(random() * n);
      const assetId = `g${owner}.arm-${Math.floor(random() * 2)}`;
      const id = await issueStop(gateways[origin]!, { asset: assetId }, `random-${i}`);
      issued.push({ id, origin, owner, assetId });
      await delay(10);
    }
    let unacked: string[] = [];
    await eventually(
      async () => {
        const views = await Promise.all(gateways.map(estopOf));
        unacked = issued.flatMap(({ id, origin, owner, assetId }) => {
          const record = views[origin]!.recent.find((r) => r.id === id);
          const ack = record?.acks.find((a) => a.peer === peerIds[owner]);
          const acked = record?.missing.length === 0 &&
            (ack?.status === "ok" || ack?.status === "duplicate");
          const latched = views[owner]!.latched.some((l) =>
            l.assetId === assetId && l.stopIds.includes(id)
          );
          return acked && latched ? [] : [
            `g${origin}→${assetId} ${id.slice(0, 8)}: ${record ? "" : "no record, "}ack ${
              ack?.status ?? "none"
            }, missing ${record?.missing.length ?? "?"}, ${latched ? "" : "not "}latched`,
          ];
        });
        return unacked.length === 0;
      },
      15_000,
      200,
    );
    assertEquals(unacked, [], `stops not acked or not latched (logs in ${dir})`);
  } finally {
    await stopAll(gateways);
  }
});

Deno.test("a reset racing a new stop leaves the arm stopped; an operator reset releases it; a non-operator reset is refused", async () => {
  const dir = tempDir("estop-reset");
  const factory = uniqueFactory("reset");
  // The operator's peer ID is known once it has started; the owner is configured with it.
  const [operator, other] = await Promise.all([
    startGateway({ name: "op", factory, dir }),
    startGateway({ name: "oth", factory, dir }),
  ]);
  const operatorId = await peerIdOf(operator);
  const owner = await startGateway({
    name: "own",
    factory,
    dir,
    extraArgs: ["--operator", operatorId],
  });
  const gateways = [operator, owner, other];
  const asset = "own.arm-0";
  try {
    assert(await linked(gateways, 2, 10_000), "e-stop links not up");
    const first = await issueStop(operator, { asset }, "first");
    assert(await eventually(() => latches(owner, asset, first), 3_000), "first stop not latched");

    // Concurrent: the operator resets the first stop while another gateway stops again.
    const [, second] = await Promise.all([
      issueReset(operator, [first]),
      issueStop(other, { asset }, "second"),
    ]);
    assert(await eventually(() => latches(owner, asset, second), 3_000), "second not latched");
    assert(
      await eventually(async () => !(await latches(owner, asset, first)), 3_000),
      "the first stop was not cleared by its reset",
    );
    await delay(300); // let any straggling frame land
    let arm = await assetOf(owner, asset);
    assert(
      arm.stopped && arm.latched,
      `reset racing a stop released the arm: ${JSON.stringify(arm)}`,
    );

    // A non-operator's reset is refused and shows as a refusal at the owner.
    const refused = await issueReset(other, [second]);
    assert(
      await eventually(
        async () =>
          (await estopOf(owner)).recent.some((r) => r.id === refused && r.kind === "refusal"),
        3_000,
      ),
      "no refusal record at the owner",
    );
    arm = await assetOf(owner, asset);
    assert(arm.stopped && arm.latched, "a non-operator reset released the arm");
    assertMatch(Deno.readTextFileSync(owner.spec.logFile), /e-stop reset refused/);

    // The operator resets after seeing the second stop: released.
    await issueReset(operator, [second]);
    assert(
      await eventually(async () => {
        const a = await assetOf(owner, asset);
        return !a.stopped && !a.latched;
      }, 3_000),
      "the operator's reset did not release the arm",
    );
    assertEquals((await estopOf(owner)).latched.filter((l) => l.assetId === asset), []);
    assert(
      await eventually(async () => !(await twinModes(owner, asset)).includes("estop"), 3_000),
      "the twin still shows the estop mode",
    );
  } finally {
    await stopAll(gateways);
  }
});

Deno.test("an owner killed with SIGKILL right after acking restarts latched, with the arm stopped", async () => {
  const { originOptions, ownerOptions } = originAndOwner("kill");
  const [origin, owner] = await Promise.all([
    startGateway(originOptions),
    startGateway(ownerOptions),
  ]);
  let again: GatewayProcess | undefined;
  try {
    assert(await linked([origin, owner], 1, 10_000), "e-stop link not up");
    const ownerId = await peerIdOf(owner);
    const id = await issueStop(origin, { asset: "own.arm-1" }, "kill -9 test");
    assert(await eventually(() => ackedBy(origin, id, ownerId), 3_000), "never acked");
    owner.child.kill("SIGKILL");
    await owner.status;

    again = await startGateway(ownerOptions);
    const view = await estopOf(again);
    assert(
      view.latched.some((l) => l.assetId === "own.arm-1" && l.stopIds.includes(id)),
      `not latched after restart: ${JSON.stringify(view.latched)}`,
    );
    const arm = await assetOf(again, "own.arm-1");
    assert(arm.latched && arm.stopped, `arm after restart: ${JSON.stringify(arm)}`);
    assert(!(await assetOf(again, "own.arm-0")).stopped, "the other arm must not be stopped");
  } finally {
    await stopAll([origin, owner, ...(again ? [again] : [])]);
  }
});

Deno.test("the watchdog puts the assets in the safe state when the only supervisor vanishes", async () => {
  const dir = tempDir("estop-watchdog");
  const factory = uniqueFactory("wd");
  const supervisor = await startGateway({ name: "sup", factory, dir, extraArgs: ["--no-mdns"] });
  const supervisorId = await peerIdOf(supervisor);
  const guarded = await startGateway({
    name: "grd",
    factory,
    dir,
    peers: [addrOf(supervisor.spec.listenPort)],
    extraArgs: ["--no-mdns", "--supervisor", supervisorId, "--watchdog-ms", "1000"],
  });
  try {
    assert(await linked([guarded], 1, 10_000), "no e-stop link to the supervisor");
    await delay(1_500);
    const before = await estopOf(guarded);
    const earlierTrips = new Set(
      before.recent.filter((r) => r.kind === "watchdog").map((r) => r.id),
    );
    assert(!before.watchdogTripped, "tripped while the supervisor was alive");

    supervisor.child.kill("SIGKILL");
    await supervisor.status;
    let trip: RecordView | undefined;
    assert(
      await eventually(async () => {
        const view = await estopOf(guarded);
        trip = view.recent.find((r) => r.kind === "watchdog" && !earlierTrips.has(r.id));
        return view.watchdogTripped && trip !== undefined;
      }, 5_000),
      "the watchdog did not trip within 5 s of the supervisor's death",
    );
    const silentMs = Number(/heard for (\d+) ms/.exec(trip!.reason)?.[1]);
    assert(silentMs >= 1_000, `tripped after ${silentMs} ms of silence: ${trip!.reason}`);
    assertEquals([...trip!.assets!].sort(), ["grd.arm-0", "grd.arm-1"]);
    for (const arm of await getJson<AssetView[]>(guarded, "/assets")) {
      assert(arm.stopped && arm.latched, `${arm.id} not in the safe state`);
    }
    assertMatch(Deno.readTextFileSync(guarded.spec.logFile), /e-stop watchdog tripped/);
  } finally {
    await stopAll([supervisor, guarded]);
  }
});

Deno.test("a stop crosses regions between two factories linked only by configured peers", async () => {
  const dir = tempDir("estop-regions");
  const eastPort = freePort();
  const [east, west] = await Promise.all([
    startGateway({
      name: "east",
      factory: uniqueFactory("east"),
      region: "east",
      dir,
      listenPort: eastPort,
      extraArgs: ["--no-mdns"],
    }),
    startGateway({
      name: "west",
      factory: uniqueFactory("west"),
      region: "west",
      dir,
      peers: [addrOf(eastPort)],
      extraArgs: ["--no-mdns"],
    }),
  ]);
  try {
    assert(await linked([east, west], 1, 10_000), "no e-stop link across the regions");
    const [eastId, westId] = [await peerIdOf(east), await peerIdOf(west)];
    const eastward = await issueStop(west, { asset: "east.arm-0" }, "west → east");
    const westward = await issueStop(east, { asset: "west.arm-1" }, "east → west");
    assert(
      await eventually(() => latches(east, "east.arm-0", eastward), 3_000),
      "east not latched",
    );
    assert(
      await eventually(() => latches(west, "west.arm-1", westward), 3_000),
      "west not latched",
    );
    assert(await eventually(() => ackedBy(west, eastward, eastId), 3_000), "east's ack missing");
    assert(await eventually(() => ackedBy(east, westward, westId), 3_000), "west's ack missing");
    assert((await assetOf(east, "east.arm-0")).stopped, "east.arm-0 not stopped");
  } finally {
    await stopAll([east, west]);
  }
});

Deno.test("a stop issued while the owner is down is delivered when it is back, flagged late", async () => {
  const { originOptions, ownerOptions } = originAndOwner("late");
  const [origin, owner] = await Promise.all([
    startGateway(originOptions),
    startGateway(ownerOptions),
  ]);
  let again: GatewayProcess | undefined;
  try {
    assert(await linked([origin, owner], 1, 10_000), "e-stop link not up");
    const ownerId = await peerIdOf(owner);
    await stopGateway(owner);
    const id = await issueStop(origin, { asset: "own.arm-0" }, "while away");
    // Past the ack deadline (2 s): the origin reports the owner missing.
    assert(
      await eventually(async () => {
        const record = (await estopOf(origin)).recent.find((r) => r.id === id);
        return record?.missing.includes(ownerId) ?? false;
      }, 5_000),
      "the origin does not report the owner as missing",
    );

    again = await startGateway(ownerOptions);
    assert(await eventually(() => latches(again!, "own.arm-0", id), 8_000), "never delivered");
    const received = (await estopOf(again)).recent.find((r) => r.id === id);
    assert(received?.direction === "received" && received.late, "not flagged late at the owner");
    assert((await assetOf(again, "own.arm-0")).stopped, "own.arm-0 not stopped");
    assert(
      await eventually(() => ackedBy(origin, id, ownerId), 3_000),
      "no late ack at the origin",
    );
    const record = (await estopOf(origin)).recent.find((r) => r.id === id)!;
    assert(record.late && record.missing.length === 0, `origin record: ${JSON.stringify(record)}`);
  } finally {
    await stopAll([origin, owner, ...(again ? [again] : [])]);
  }
});

Deno.test("a stop for a gateway replaced under its name (new data dir, new key) goes to the replacement", async () => {
  const { dir, originOptions, ownerOptions } = originAndOwner("replaced");
  const [origin, first] = await Promise.all([
    startGateway(originOptions),
    startGateway({ ...ownerOptions, dir: `${dir}/first` }),
  ]);
  let replacement: GatewayProcess | undefined;
  try {
    assert(await linked([origin, first], 1, 10_000), "e-stop link not up");
    const firstId = await peerIdOf(first);
    await stopGateway(first);
    replacement = await startGateway({ ...ownerOptions, dir: `${dir}/replacement` });
    const replacementId = await peerIdOf(replacement);
    assert(replacementId !== firstId, "the replacement has a key of its own");
    assert(await linked([origin, replacement], 1, 10_000), "e-stop link to the replacement");

    const id = await issueStop(origin, { asset: "own.arm-0" }, "after replacement");
    assert(await eventually(() => latches(replacement!, "own.arm-0", id), 5_000), "not latched");
    assert(await eventually(() => ackedBy(origin, id, replacementId), 3_000), "no ack");
    const record = (await estopOf(origin)).recent.find((r) => r.id === id)!;
    assertEquals(record.missing, [], "the stop waits for the replaced gateway's old peer ID");
  } finally {
    await stopAll([origin, first, ...(replacement ? [replacement] : [])]);
  }
});

// Regression (found by the ten-gateway test: two of ten processes died): when two gateways
// dial each other at once, libp2p closes one connection, and an e-stop stream could be
// opened on a connection that is gone by the time the dial resolves. The service asserted
// there was a connection, inside a promise callback: an unhandled rejection ended the
// gateway. Now it is a failed open, retried like any other.
Deno.test("an e-stop stream whose connection closed during the dial is a failed open, not a crash", async () => {
  const selfKey = await generateKeyPair("Ed25519");
  const self = peerIdFromPrivateKey(selfKey);
  const remote = peerIdFromPrivateKey(await generateKeyPair("Ed25519"));
  let connectionOpen = true;
  let aborted = 0;
  let dials = 0;
  const connection = { remotePeer: remote, streams: [] as unknown[] };
  const libp2p = {
    peerId: self,
    handle: () => Promise.resolve(),
    unhandle: () => Promise.resolve(),
    addEventListener: () => {},
    removeEventListener: () => {},
    getConnections: () => (connectionOpen ? [connection] : []),
    dialProtocol: () => {
      dials++;
      connectionOpen = false; // the duplicate connection is closed while the stream opens
      return Promise.resolve({ abort: () => void aborted++, direction: "outbound" });
    },
  } as unknown as EstopComponents["libp2p"];
  const db = new DatabaseSync(":memory:");
  const service = createEstopService({}, {
    libp2p,
    db,
    clock: new HybridLogicalClock({ node: self.toString() }),
    privateKey: selfKey,
    logger: { debug() {}, info() {}, warn() {}, error() {} },
    ownersOf: () => [],
    gatewaysIn: () => [],
    localAssets: () => [],
    linkPeers: () => [remote.toString()],
    stopAssets: () => {},
  });
  await service.start();
  try {
    await delay(50);
    assertEquals(dials, 1);
    assertEquals(aborted, 1, "the orphaned stream is aborted");
    assertEquals(service.stats().stream_open_failures, 1);
    assertEquals(service.livePeers(), []);
  } finally {
    await service.stop();
    db.close();
  }
});

/** Scheduling of each thread of a process: name, nice value, policy (0 = SCHED_OTHER). */
function threadScheduling(pid: number): { name: string; nice: number; policy: number }[] {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].flatMap(({ name: tid }) => {
    let stat: string;
    try {
      stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
    } catch {
      return []; // the thread ended meanwhile
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 19 (nice) and 41 (policy) of proc(5), counted from the state (field 3).
    return [{ name, nice: Number(fields[16]), policy: Number(fields[38]) }];
  });
}

Deno.test({
  name:
    "the e-stop thread alone runs at nice -20, in the normal scheduling class; opt-out keeps it at 0",
  ignore: Deno.build.os !== "linux" || Deno.uid() !== 0,
  fn: async () => {
    const dir = tempDir("estop-priority");
    const [raised, plain] = await Promise.all([
      startGateway({ name: "raised", factory: uniqueFactory("prio"), dir }),
      startGateway({
        name: "plain",
        factory: uniqueFactory("prio"),
        dir,
        extraArgs: ["--no-estop-realtime"],
      }),
    ]);
    try {
      const threads = threadScheduling(raised.child.pid);
      const high = threads.filter((t) => t.nice === -20);
      assertEquals(high.length, 1, JSON.stringify(threads));
      assertMatch(high[0]!.name, /^worker/, "the raised thread is the e-stop worker");
      // No real-time thread: one that spins waiting for V8's helpers would keep them off its core.
      assertEquals(threads.filter((t) => t.policy !== 0), [], "a thread left SCHED_OTHER");
      const plainThreads = threadScheduling(plain.child.pid);
      assertEquals(plainThreads.filter((t) => t.nice !== 0), [], JSON.stringify(plainThreads));
    } finally {
      await stopAll([raised, plain]);
    }
  },
});
