/**
 * The pieces that put the e-stop service on its own thread: the safety line
 * (shared stop state), the e-stop node's addresses, the identify announcement
 * and the move of old e-stop tables into `estop.db`. The thread itself runs
 * in every gateway test (tests/estop_gateway_test.ts).
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { SafetyLine } from "../node/safety_line.ts";
import { SimulatedArm } from "../node/assets/simulated_arm.ts";
import { estopAddresses, estopListen } from "../node/estop_thread.ts";
import { formatAgent, parseAgent } from "../node/mesh.ts";
import { createEstopStorage, moveEstopTables } from "../node/estop_storage.ts";

Deno.test("a stop set on the safety line by another thread stops the arm before its next step", async () => {
  const line = new SafetyLine(["g.arm-0", "g.arm-1"]);
  const arm = new SimulatedArm({
    id: "g.arm-0",
    cell: "g.cell",
    faultRatePerS: 0,
    safety: line.slot("g.arm-0"),
  });
  arm.tick(1_000);
  const before = arm.tick(1_100).joints;
  const worker = new Worker(new URL("./workers/shared_memory_worker.ts", import.meta.url), {
    type: "module",
  });
  await new Promise((resolve, reject) => {
    worker.onmessage = resolve;
    worker.onerror = (event) => {
      event.preventDefault();
      reject(new Error(event.message));
    };
    worker.postMessage({
      kind: "stop",
      buffer: line.buffer,
      assetIds: line.assetIds,
      assetId: "g.arm-0",
    });
  });
  worker.terminate();
  ok(arm.stopped, "the arm reads the stop from the line");
  equal(arm.mode, "stopped");
  deepStrictEqual(arm.tick(1_200).joints, before, "no motion after the stop");
  equal(line.state("g.arm-1"), "run", "the other asset is untouched");
});

Deno.test("the safety line: a hold never weakens a stop, and an adapter cannot release a stop", () => {
  const line = new SafetyLine(["a"]);
  const arm = new SimulatedArm({ id: "a", cell: "c", faultRatePerS: 0, safety: line.slot("a") });
  arm.hold("operator");
  equal(line.state("a"), "hold");
  line.stop("a"); // the e-stop thread
  arm.hold("late hold");
  equal(line.state("a"), "stop", "a hold after a stop leaves it stopped");
  arm.release(); // e.g. a twin command clearing "hold", decided before the stop landed
  equal(line.state("a"), "stop", "only the e-stop thread releases a stop");
  ok(line.release("a", "stop"), "the e-stop thread releases it after a valid reset");
  equal(line.state("a"), "run");
  ok(!line.release("a", "stop"), "a second release finds nothing to release");
});

Deno.test("an arm without a shared line releases its own stop", () => {
  const arm = new SimulatedArm({ id: "a", cell: "c", faultRatePerS: 0 });
  arm.stop("test");
  ok(arm.stopped);
  arm.release();
  ok(!arm.stopped);
});

Deno.test("e-stop node addresses: the peer's hosts on its announced port", () => {
  deepStrictEqual(
    estopAddresses([
      "/ip4/10.0.0.2/tcp/4001",
      "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWA",
      "/ip4/0.0.0.0/tcp/4001",
      "/ip6/::1/tcp/4001",
      "/ip4/10.0.0.3/udp/4001/quic-v1",
    ], 4100),
    ["/ip4/10.0.0.2/tcp/4100", "/ip6/::1/tcp/4100"],
  );
  deepStrictEqual(estopListen(["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"], 4100), [
    "/ip4/0.0.0.0/tcp/4100",
    "/ip6/::/tcp/4100",
  ]);
  // Port 0: one listener, since identify announces a single port.
  deepStrictEqual(estopListen(["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"], 0), [
    "/ip4/0.0.0.0/tcp/0",
  ]);
});

Deno.test("identify carries the e-stop port; an agent without it still parses", () => {
  const identity = { name: "g1", factory: "f", region: "r", estopPort: 40123 };
  deepStrictEqual(parseAgent(formatAgent(identity)), identity);
  deepStrictEqual(parseAgent("twinmesh/0.1.0 name=g1 factory=f region=r"), {
    name: "g1",
    factory: "f",
    region: "r",
  });
  deepStrictEqual(parseAgent("twinmesh/0.1.0 name=g1 factory=f region=r estop=99999"), {
    name: "g1",
    factory: "f",
    region: "r",
  });
});

Deno.test("e-stop records of an older data dir move into estop.db, once, with nothing lost", () => {
  const dir = Deno.makeTempDirSync({ prefix: "estop-move-" });
  try {
    const main = new DatabaseSync(join(dir, "twinmesh.db"));
    const old = createEstopStorage(main);
    const entry = {
      assetId: "g.arm-0",
      stopId: "0123456789abcdef0123456789abcdef",
      hlc: { wallMs: 1_700_000_000_000, logical: 0, node: "gw" },
      origin: "gw",
      reason: "test",
      sinceMs: 1_700_000_000_000,
    };
    old.commit({ added: [entry] });
    const estopPath = join(dir, "estop.db");
    ok(moveEstopTables(main, estopPath) >= 1, "rows moved");
    equal(
      main.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name LIKE 'estop_%'").get()?.n,
      0,
      "the old tables are gone",
    );
    equal(moveEstopTables(main, estopPath), 0, "nothing to move the second time");
    main.close();
    const moved = new DatabaseSync(estopPath);
    const snapshot = createEstopStorage(moved).load();
    moved.close();
    deepStrictEqual(snapshot.latch.map((l) => [l.assetId, l.stopId]), [[
      entry.assetId,
      entry.stopId,
    ]]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
