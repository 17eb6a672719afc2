/**
 * Twins over real gateway processes: two factories linked by one bridge peer,
 * a partition (the bridge gateway is stopped) with thousands of concurrent
 * writes on both sides, the heal, bad input over HTTP, and a restart on the
 * same data dir.
 *
 * What "no update lost" means here. Setpoints are LWW registers: a write that
 * loses to a later one is overwritten by design, so "lost" cannot mean "its
 * value is still visible". It means two checkable things:
 * 1. The winner is right: on every replica, each written field holds exactly
 *    the acknowledged write with the highest HLC in the log (value and HLC),
 *    and no field holds a value nobody wrote.
 * 2. Every write arrived everywhere: every acknowledged write is carried by a
 *    change in the twin's history on every replica. A change is one publish
 *    interval of one gateway's writes to one twin and is listed under the
 *    batch's highest HLC, so a write with HLC h by gateway G is carried by G's
 *    first change with HLC >= h. All replicas must list the same changes (by
 *    hash); Automerge applies a writer's changes only in order, so the covering
 *    change being present means every earlier change of that writer is too.
 * Modes are an add-wins OR-set: an add concurrent with a remove survives; a
 * remove with no concurrent add removes the element everywhere.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  eventually,
  getJson,
  spawn,
  startGateway,
  stopAll,
  stopGateway,
  tempDir,
  uniqueFactory,
  waitReady,
} from "./gateway_test_util.ts";
import { freePort, type GatewayProcess, postJson } from "../scripts/mesh_processes.ts";
import type { PeerView } from "../node/mesh.ts";
import { DatabaseSync } from "node:sqlite";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import { encodeGossip } from "../protocols/twin_codec.ts";
import { TwinReplica } from "../protocols/twin_replica.ts";
import { createTwinService, type TwinService, twinTopic } from "../node/twin_service.ts";
import { makeTestNode, memoryLogger, type TestNode } from "./twin_test_util.ts";

/** Writes per side during the cut ("thousands of changes"). */
const WRITES_PER_SIDE = 1_500;
/** Concurrent HTTP requests per side. */
const WRITES_IN_FLIGHT = 10;
/** The bound from the heal (bridge restarted) to equal replicas. */
const CONVERGE_MS_MAX = 10_000;
/**
 * After convergence, changes that carry no winning value may trail: they
 * reach f1b by way of f1a's forwarding session. This check is about nothing
 * being lost, and the time it took is printed; on a host ~2.4x slower than
 * the one this bound was first set on (5 s), it took up to 10 s, so the old
 * code failed it there too.
 */
const CHANGES_SETTLE_MS_MAX = 15_000;
/** history() returns at most this many changes (MAX_HISTORY_ENTRIES). */
const HISTORY_LIMIT = 1_000;
/** Fewer telemetry samples than the default 100 Hz: the host's 2 cores are shared. */
const QUIET = ["--telemetry-hz", "10"];

/**
 * Setpoint fields with a step that keeps `seq * step` inside the field's range
 * for every seq of the test (at most 2 × WRITES_PER_SIDE): every write carries
 * a value no other write to that field has.
 */
const SETPOINT_STEPS: Readonly<Record<string, number>> = {
  weldCurrentA: 0.1,
  weldVoltageV: 0.01,
  wireFeedMps: 0.0001,
  travelSpeedMmps: 0.05,
};

interface TwinView {
  id: string;
  kind: string;
  owner: string;
  lastHlc: string | null;
  factory: string;
  fields: Record<string, { value: unknown; hlc: string }>;
}

interface HistoryEntry {
  hlc: string;
  origin: string;
  hash: string;
  actor: string;
}

/** One acknowledged write: what the log of the test keeps. */
interface AckedWrite {
  id: string;
  /** Twin field name, e.g. `setpoints.weldCurrentA`. */
  field: string;
  value: number;
  hlc: string;
  /** Gateway name that accepted it (the change's origin). */
  writer: string;
}

interface PlannedWrite {
  gateway: GatewayProcess;
  id: string;
  setpoint: string;
  value: number;
}

/** Small deterministic PRNG (mulberry32): the write plan replays from the printed seed. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T>(items: readonly T[], next: () => number): T {
  return items[Math.floor(next() * items.length)]!;
}

/** Writes `seq` in [first, first + count): round-robin over gateways, random twin and setpoint. */
function planWrites(
  gateways: readonly GatewayProcess[],
  twins: readonly string[],
  first: number,
  count: number,
  next: () => number,
): PlannedWrite[] {
  const setpoints = Object.keys(SETPOINT_STEPS);
  const plan: PlannedWrite[] = [];
  for (let seq = first; seq < first + count; seq++) {
    const setpoint = pick(setpoints, next);
    plan.push({
      gateway: gateways[seq % gateways.length]!,
      id: pick(twins, next),
      setpoint,
      value: seq * SETPOINT_STEPS[setpoint]!,
    });
  }
  return plan;
}

/** Posts the plan with `inFlight` requests at a time; every write must be acknowledged (202). */
async function writeAll(plan: readonly PlannedWrite[], inFlight: number): Promise<AckedWrite[]> {
  const acked: AckedWrite[] = [];
  let nextIndex = 0;
  const worker = async () => {
    while (nextIndex < plan.length) {
      const write = plan[nextIndex++]!;
      const { status, body } = await postJson<{ id: string; hlc: string }>(
        write.gateway,
        `/twins/${write.id}/commands`,
        { setpoints: { [write.setpoint]: write.value } },
      );
      assertEquals(status, 202, `write to ${write.id}: ${JSON.stringify(body)}`);
      acked.push({
        id: write.id,
        field: `setpoints.${write.setpoint}`,
        value: write.value,
        hlc: body.hlc,
        writer: write.gateway.spec.name,
      });
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return acked;
}

async function command(gateway: GatewayProcess, id: string, body: unknown): Promise<string> {
  const { status, body: reply } = await postJson<{ hlc: string }>(
    gateway,
    `/twins/${id}/commands`,
    body,
  );
  assertEquals(status, 202, JSON.stringify(reply));
  return reply.hlc;
}

/** The operator-written part of a twin (setpoints and modes); measured state keeps changing. */
function commandFields(view: TwinView): Record<string, { value: unknown; hlc: string }> {
  const out: Record<string, { value: unknown; hlc: string }> = {};
  for (const name of Object.keys(view.fields).sort()) {
    if (name.startsWith("setpoints.") || name === "modes") out[name] = view.fields[name]!;
  }
  return out;
}

/** Command fields of every twin, as one gateway sees them. */
async function commandState(
  gateway: GatewayProcess,
  twins: readonly string[],
): Promise<Record<string, Record<string, { value: unknown; hlc: string }>>> {
  const views = await Promise.all(twins.map((id) => getJson<TwinView>(gateway, `/twins/${id}`)));
  return Object.fromEntries(views.map((view) => [view.id, commandFields(view)]));
}

/** For each (twin, field): the acknowledged write with the highest HLC. */
function lwwWinners(log: readonly AckedWrite[]): Map<string, AckedWrite> {
  const winners = new Map<string, AckedWrite>();
  for (const write of log) {
    const key = `${write.id} ${write.field}`;
    const best = winners.get(key);
    if (!best || write.hlc > best.hlc) winners.set(key, write);
  }
  return winners;
}

function peers(gateway: GatewayProcess): Promise<PeerView[]> {
  return getJson<PeerView[]>(gateway, "/peers");
}

async function connectedTo(gateway: GatewayProcess, names: readonly string[]): Promise<boolean> {
  const seen = new Set((await peers(gateway)).map((p) => p.name));
  return names.every((name) => seen.has(name));
}

function armsOf(gateways: readonly GatewayProcess[]): string[] {
  return gateways.flatMap((g) => [`${g.spec.name}.arm-0`, `${g.spec.name}.arm-1`]);
}

Deno.test("two factories partitioned at their bridge take thousands of writes on both sides and converge within 10 s of the heal, losing none", async () => {
  const seed = Number(Deno.env.get("TWINMESH_SEED") ?? Date.now() % 1_000_000);
  console.log(`twin partition test seed: TWINMESH_SEED=${seed}`);
  const next = random(seed);
  const dir = tempDir("twin-partition");
  const f1 = uniqueFactory("tw1");
  const f2 = uniqueFactory("tw2");
  const f1aPort = freePort();
  const bridgePort = freePort();
  const bridgeHttpPort = freePort();
  const common = (factory: string, other: string) => ({
    factory,
    region: factory,
    dir,
    extraArgs: ["--replicate", other, ...QUIET],
  });
  const bridgeOptions = {
    name: "f2a",
    ...common(f2, f1),
    peers: [`/ip4/127.0.0.1/tcp/${f1aPort}`],
    listenPort: bridgePort,
    httpPort: bridgeHttpPort,
  };
  const f1a = spawn({ name: "f1a", ...common(f1, f2), listenPort: f1aPort });
  const f1b = spawn({ name: "f1b", ...common(f1, f2) });
  let bridge = spawn(bridgeOptions);
  const f2b = spawn({ name: "f2b", ...common(f2, f1) });
  const running = new Set([f1a, f1b, bridge, f2b]);
  try {
    await Promise.all([...running].map((g) => waitReady(g)));
    const all = () => [f1a, f1b, bridge, f2b];
    const twins = armsOf([f1a, f1b, bridge, f2b]);
    let seen = "";
    assert(
      await eventually(
        async () => {
          const views = await Promise.all(
            all().map(async (g) => ({
              name: g.spec.name,
              peers: (await peers(g)).map((p) => p.name).sort(),
              twins: (await getJson<unknown[]>(g, "/twins")).length,
            })),
          );
          seen = JSON.stringify(views);
          const linked = await Promise.all([
            connectedTo(f1a, ["f1b", "f2a"]),
            connectedTo(bridge, ["f1a", "f2b"]),
          ]);
          return linked.every(Boolean) && views.every((v) => v.twins === twins.length);
        },
        15_000,
        200,
      ),
      `the two factories never linked with every gateway holding all twins: ${seen}`,
    );

    // Before the cut: modes everyone has seen, to be removed/re-added on either side.
    const addWinsTwin = "f1a.arm-0";
    const removedTwin = "f2b.arm-1";
    await command(f1a, addWinsTwin, { modes: { add: ["maintenance"] } });
    await command(f2b, removedTwin, { modes: { add: ["manual"] } });
    assert(
      await eventually(async () => {
        const views = await Promise.all(
          all().flatMap((g) => [
            getJson<TwinView>(g, `/twins/${addWinsTwin}`),
            getJson<TwinView>(g, `/twins/${removedTwin}`),
          ]),
        );
        return views.every((v) => Array.isArray(v.fields.modes?.value));
      }, 5_000),
      "modes written before the cut did not reach every gateway",
    );

    // The cut: the bridge goes down (SIGTERM; its data dir stays).
    assert((await stopGateway(bridge)).success, "the bridge did not stop cleanly");
    running.delete(bridge);
    assert(
      await eventually(async () => {
        const [f1View, f2View] = await Promise.all([peers(f1a), peers(f2b)]);
        return f1View.every((p) => p.factory === f1) && f2View.every((p) => p.factory === f2);
      }, 5_000),
      "the factories still see each other after the bridge stopped",
    );

    // Both sides write, concurrently, to twins of both factories (including the bridge's own).
    const cutStarted = performance.now();
    const [sideOne, sideTwo] = await Promise.all([
      writeAll(planWrites([f1a, f1b], twins, 1, WRITES_PER_SIDE, next), WRITES_IN_FLIGHT),
      writeAll(
        planWrites([f2b], twins, WRITES_PER_SIDE + 1, WRITES_PER_SIDE, next),
        WRITES_IN_FLIGHT,
      ),
      // Add-wins: one side re-adds what the other side removes, concurrently.
      command(f1b, addWinsTwin, { modes: { add: ["maintenance"] } }),
      command(f2b, addWinsTwin, { modes: { remove: ["maintenance"] } }),
      // A remove nobody contradicts.
      command(f1a, removedTwin, { modes: { remove: ["manual"] } }),
    ]);
    const log = [...sideOne!, ...sideTwo!];
    const writeMs = performance.now() - cutStarted;
    assertEquals(log.length, 2 * WRITES_PER_SIDE);
    assert(
      (await peers(f2b)).every((p) => p.factory === f2),
      "the cut was not real: f2b reached f1 while the bridge was down",
    );

    // The heal: the bridge restarts on the same data dir and port.
    const healStarted = performance.now();
    bridge = spawn(bridgeOptions);
    running.add(bridge);
    await waitReady(bridge);
    const bridgeReadyMs = performance.now() - healStarted;
    // Converged (the definition): every gateway shows the same setpoints and modes,
    // values and HLCs, for every twin.
    let states: Awaited<ReturnType<typeof commandState>>[] = [];
    const converged = await eventually(
      async () => {
        states = await Promise.all(all().map((g) => commandState(g, twins)));
        const first = JSON.stringify(states[0]);
        return states.every((s) => JSON.stringify(s) === first);
      },
      CONVERGE_MS_MAX,
      200,
    );
    const convergeMs = performance.now() - healStarted;
    assert(
      converged,
      `replicas differ ${CONVERGE_MS_MAX} ms after the heal:\n${
        describeDifferences(states, all())
      }`,
    );
    // And every replica holds the same changes up to the last write (the owners keep writing
    // measured state at 1 Hz, so later changes may still be in flight). Changes that carry no
    // winning value may trail the fields by a moment: allow a short extra wait.
    const cutoff = log.reduce((max, w) => (w.hlc > max ? w.hlc : max), "");
    let histories = new Map<string, HistoryEntry[][]>();
    const sameEverywhere = await eventually(
      async () => {
        histories = await historiesOf(all(), twins);
        return [...histories.values()].every((perGateway) => sameChanges(perGateway, cutoff));
      },
      CHANGES_SETTLE_MS_MAX,
      200,
    );
    const changesMs = performance.now() - healStarted;
    console.log(
      `${log.length} writes in ${Math.round(writeMs)} ms during the cut; after the bridge ` +
        `restart: ready ${Math.round(bridgeReadyMs)} ms, converged ${Math.round(convergeMs)} ms, ` +
        `change sets equal ${Math.round(changesMs)} ms`,
    );
    assert(
      sameEverywhere,
      `replicas hold different changes:\n${describeHistories(histories, all(), cutoff)}`,
    );

    // 1. LWW: the winner of every field is the acknowledged write with the highest HLC.
    const state = states[0]!;
    const winners = lwwWinners(log);
    for (const [key, winner] of winners) {
      const field = state[winner.id]?.[winner.field];
      assertEquals(
        field,
        { value: winner.value, hlc: winner.hlc },
        `${key}: expected the highest-HLC write`,
      );
    }
    for (const [id, fields] of Object.entries(state)) {
      for (const name of Object.keys(fields)) {
        if (name === "modes") continue;
        assert(winners.has(`${id} ${name}`), `${id} ${name} holds a value nobody wrote`);
      }
    }
    // Modes: the concurrent add survived the remove; the uncontested remove held.
    assertEquals(state[addWinsTwin]?.modes?.value, ["maintenance"]);
    assertEquals(state[removedTwin]?.modes, undefined);

    // 2. Every acknowledged write is carried by a change every replica holds.
    assertEveryWriteInHistory(log, histories);
  } finally {
    await stopAll([...running]);
  }
});

/** Each twin's history (up to {@link HISTORY_LIMIT} changes) on each gateway. */
async function historiesOf(
  gateways: readonly GatewayProcess[],
  twins: readonly string[],
): Promise<Map<string, HistoryEntry[][]>> {
  const out = new Map<string, HistoryEntry[][]>();
  for (const id of twins) {
    const path = `/twins/${id}/history?limit=${HISTORY_LIMIT}`;
    const perGateway = await Promise.all(gateways.map((g) => getJson<HistoryEntry[]>(g, path)));
    for (const history of perGateway) {
      // The whole log fits: nothing older than the window can hide a missing change.
      assert(history.length < HISTORY_LIMIT, `${id}: ${history.length} changes; raise the limit`);
    }
    out.set(id, perGateway);
  }
  return out;
}

function settledHashes(history: readonly HistoryEntry[], cutoff: string): string {
  return history.filter((e) => e.hlc <= cutoff).map((e) => e.hash).sort().join(",");
}

/** True when every gateway holds the same changes with an HLC up to `cutoff`. */
function sameChanges(perGateway: readonly HistoryEntry[][], cutoff: string): boolean {
  const first = settledHashes(perGateway[0]!, cutoff);
  return perGateway.every((history) => settledHashes(history, cutoff) === first);
}

/** Checks point 2 of the module comment for every write of the log. */
function assertEveryWriteInHistory(
  log: readonly AckedWrite[],
  histories: ReadonlyMap<string, HistoryEntry[][]>,
): void {
  for (const write of log) {
    // All replicas hold the same changes (checked by convergence): the first one stands for all.
    const history = histories.get(write.id)?.[0] ?? [];
    const covering = history.find((e) => e.origin === write.writer && e.hlc >= write.hlc);
    assert(
      covering !== undefined,
      `${write.id}: no change from ${write.writer} carries the write ${JSON.stringify(write)}`,
    );
  }
}

/** Changes some gateway lacks (for the failure message). */
function describeHistories(
  histories: ReadonlyMap<string, HistoryEntry[][]>,
  gateways: readonly GatewayProcess[],
  cutoff: string,
): string {
  const lines: string[] = [];
  for (const [id, perGateway] of histories) {
    const everywhere = new Map<string, HistoryEntry>();
    for (const history of perGateway) {
      for (const entry of history) if (entry.hlc <= cutoff) everywhere.set(entry.hash, entry);
    }
    for (const [i, history] of perGateway.entries()) {
      const held = new Set(history.map((e) => e.hash));
      for (const entry of everywhere.values()) {
        if (!held.has(entry.hash)) {
          lines.push(
            `${gateways[i]!.spec.name} lacks ${id} change ${entry.hash.slice(0, 12)} ` +
              `from ${entry.origin} at ${entry.hlc.slice(0, 21)}`,
          );
        }
      }
    }
  }
  return lines.slice(0, 20).join("\n") + (lines.length > 20 ? `\n… ${lines.length} in all` : "");
}

/** Which gateway disagrees with the first on which field (for the failure message). */
function describeDifferences(
  states: readonly Record<string, Record<string, unknown>>[],
  gateways: readonly GatewayProcess[],
): string {
  const lines: string[] = [];
  const first = states[0] ?? {};
  for (const [i, state] of states.entries()) {
    for (const [id, fields] of Object.entries(state)) {
      for (const [name, field] of Object.entries(fields)) {
        const reference = first[id]?.[name];
        if (JSON.stringify(reference) !== JSON.stringify(field)) {
          lines.push(
            `${gateways[i]!.spec.name} ${id} ${name}: ${JSON.stringify(field)} vs ` +
              `${gateways[0]!.spec.name} ${JSON.stringify(reference)}`,
          );
        }
      }
    }
  }
  return lines.slice(0, 20).join("\n") + (lines.length > 20 ? `\n… ${lines.length} in all` : "");
}

Deno.test("a command with a bad field, type or unit gets a 400 naming the field, and the gateway keeps serving", async () => {
  const dir = tempDir("twin-input");
  const gateway = await startGateway({
    name: "input",
    factory: uniqueFactory("input"),
    dir,
    extraArgs: ["--no-mdns", ...QUIET],
  });
  try {
    const id = "input.arm-0";
    const cases: Array<[body: unknown, field: string]> = [
      [{ setpoints: { weldCurrentAmps: 180 } }, "setpoints.weldCurrentAmps"],
      [{ setpoints: { weldCurrentA: "180" } }, "setpoints.weldCurrentA"],
      [{ setpoints: { weldCurrentA: null } }, "setpoints.weldCurrentA"],
      [{ setpoints: { weldCurrentA: { value: 180, unit: "mA" } } }, "setpoints.weldCurrentA"],
      [{ setpoints: { weldCurrentA: 501 } }, "setpoints.weldCurrentA"],
      [{ setpoints: { wireFeedMps: -0.1 } }, "setpoints.wireFeedMps"],
      [{ setpoints: { "joints.a1": 0.5 } }, "setpoints.joints.a1"],
      [{ setpoints: [180] }, "setpoints"],
      [{ modes: { add: ["turbo"] } }, "modes"],
      [{ modes: { toggle: ["auto"] } }, "modes.toggle"],
      [{ joints: [0, 0, 0, 0, 0, 0] }, "joints"],
      [{}, "body"],
    ];
    for (const [body, field] of cases) {
      const { status, body: reply } = await postJson<{ error: string; field?: string }>(
        gateway,
        `/twins/${id}/commands`,
        body,
      );
      assertEquals(
        { status, field: reply.field },
        { status: 400, field },
        `${JSON.stringify(body)} → ${JSON.stringify(reply)}`,
      );
      assert(reply.error.includes(field), `the message names ${field}: ${reply.error}`);
    }
    const response = await fetch(`${gateway.http}/twins/${id}/commands`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{not json",
    });
    assertEquals(response.status, 400);
    await response.body?.cancel();
    // Nothing bad was written, and a good command still goes through.
    assertEquals(commandFields(await getJson<TwinView>(gateway, `/twins/${id}`)), {});
    const hlc = await command(gateway, id, {
      setpoints: { weldCurrentA: { value: 180, unit: "A" } },
    });
    const view = await getJson<TwinView>(gateway, `/twins/${id}`);
    assertEquals(view.fields["setpoints.weldCurrentA"], { value: 180, hlc });
    const unknown = await fetch(`${gateway.http}/twins/nobody.arm-9/commands`, {
      method: "POST",
      body: JSON.stringify({ setpoints: { weldCurrentA: 1 } }),
    });
    assertEquals(unknown.status, 404);
    await unknown.body?.cancel();
  } finally {
    await stopGateway(gateway);
  }
});

/** A gateway alone in its factory (no mDNS), restarted on its data dir and ports. */
function loneGateway(name: string) {
  const options = {
    name,
    factory: uniqueFactory(name),
    dir: tempDir(`twin-${name}`),
    extraArgs: ["--no-mdns", ...QUIET],
  };
  return {
    start: () => startGateway(options),
    // Same ports as before: a fresh free port could be the old listen port, just released.
    restart: (previous: GatewayProcess) =>
      startGateway({
        ...options,
        listenPort: previous.spec.listenPort,
        httpPort: previous.spec.httpPort,
      }),
  };
}

Deno.test("a gateway restarted on the same data dir loads its twins with every write made before the stop", async () => {
  const lone = loneGateway("durable");
  const first = await lone.start();
  let before: Record<string, Record<string, { value: unknown; hlc: string }>>;
  let historyBefore: HistoryEntry[];
  const twins = ["durable.arm-0", "durable.arm-1"];
  try {
    for (let i = 1; i <= 50; i++) {
      await command(first, twins[i % 2]!, { setpoints: { weldVoltageV: i * 0.5 } });
    }
    await command(first, twins[0]!, { modes: { add: ["maintenance", "manual"] } });
    // The last write is acknowledged right before the stop: a graceful stop must flush it.
    await command(first, twins[1]!, { setpoints: { travelSpeedMmps: 12.5 } });
    before = await commandState(first, twins);
    historyBefore = await getJson<HistoryEntry[]>(first, `/twins/${twins[1]}/history?limit=1000`);
  } finally {
    assert((await stopGateway(first)).success, "the gateway did not stop cleanly");
  }
  const again = await lone.restart(first);
  try {
    assertEquals(await commandState(again, twins), before);
    assertEquals(before[twins[1]!]?.["setpoints.travelSpeedMmps"]?.value, 12.5);
    assertEquals(before[twins[0]!]?.modes?.value, ["maintenance", "manual"]);
    const historyAfter = await getJson<HistoryEntry[]>(
      again,
      `/twins/${twins[1]}/history?limit=1000`,
    );
    const hashesAfter = new Set(historyAfter.map((e) => e.hash));
    assert(
      historyBefore.every((e) => hashesAfter.has(e.hash)),
      "changes from before the restart are missing from the history",
    );
  } finally {
    await stopGateway(again);
  }
});

Deno.test("a gateway killed (-9) right after acknowledging commands has them all after a restart", async () => {
  const lone = loneGateway("killed");
  const first = await lone.start();
  const twins = ["killed.arm-0", "killed.arm-1"];
  const acked: Array<{ id: string; value: number; hlc: string }> = [];
  try {
    // Alone in its factory: after the crash only its own disk can bring these back.
    for (let i = 1; i <= 6; i++) {
      const id = twins[i % 2]!;
      const value = 10 + i;
      acked.push({
        id,
        value,
        hlc: await command(first, id, { setpoints: { travelSpeedMmps: value } }),
      });
    }
  } finally {
    first.child.kill("SIGKILL");
    await first.status;
  }
  const again = await lone.restart(first);
  try {
    const after = await commandState(again, twins);
    for (const id of twins) {
      const last = acked.filter((w) => w.id === id).at(-1)!;
      assertEquals(after[id]?.["setpoints.travelSpeedMmps"], { value: last.value, hlc: last.hlc });
    }
  } finally {
    await stopGateway(again);
  }
});

// --- The twin service fixes these tests found, in process (no anti-entropy, so nothing else
// can hide a gap): a chain a – b – c of services, where a and c are not linked.

interface ChainLink {
  node: TestNode;
  service: TwinService;
  stop(): Promise<void>;
}

async function chainLink(name: string, owned: string[]): Promise<ChainLink> {
  const node = await makeTestNode();
  const db = new DatabaseSync(":memory:");
  const service = createTwinService({ antiEntropyIntervalMs: 0 }, {
    libp2p: node,
    db,
    clock: new HybridLogicalClock({ node: node.peerId.toString() }),
    logger: memoryLogger(),
    factory: "f1",
    gatewayName: name,
    ownedAssets: owned.map((id) => ({ id, kind: "welding-arm" })),
  });
  await service.start();
  return {
    node,
    service,
    async stop() {
      await service.stop();
      await node.stop();
      db.close();
    },
  };
}

const inProcess = { sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "twins a sync session brings in are passed on to peers not linked to their source",
  ...inProcess,
  fn: async () => {
    const [a, b, c] = await Promise.all([
      chainLink("a", ["a.arm-0"]),
      chainLink("b", []),
      chainLink("c", ["c.arm-0"]),
    ]);
    try {
      c.service.command("c.arm-0", { setpoints: { weldCurrentA: 42 } });
      await c.service.flushNow(); // published to nobody: only sync can carry it
      await a.node.dial(b.node.getMultiaddrs()[0]!);
      assert(await eventually(() => b.service.list().length === 1, 5_000), "a–b did not sync");
      await b.node.dial(c.node.getMultiaddrs()[0]!);
      assert(
        await eventually(
          () => a.service.list().some((t) => t.id === "c.arm-0") && c.service.list().length === 2,
          5_000,
        ),
        "c's twin did not reach a (or a's did not reach c) through b",
      );
      assertEquals(a.service.get("c.arm-0").fields["setpoints.weldCurrentA"]?.value, 42);
    } finally {
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    }
  },
});

Deno.test({
  name: "a gossip gap from a publisher that is not a neighbour is fetched from a neighbour",
  ...inProcess,
  fn: async () => {
    const [a, b] = await Promise.all([chainLink("a", []), chainLink("b", [])]);
    // A gateway beyond b: its genesis reaches b but not a, its next change reaches both.
    const far = peerIdFromPrivateKey(await generateKeyPair("Ed25519"));
    const farReplica = new TwinReplica({}, {
      clock: new HybridLogicalClock({ node: far.toString() }),
      gatewayName: "far",
      factory: "f1",
    });
    farReplica.create("far.arm-0", "welding-arm");
    const genesis = farReplica.flush()[0]!.changes;
    farReplica.write(
      "far.arm-0",
      [{ op: "set", field: "setpoints.weldCurrentA", value: 7 }],
      "any",
    );
    const update = farReplica.flush()[0]!.changes;
    const deliver = (to: ChainLink, changes: readonly Uint8Array[]) => {
      const data = encodeGossip({ factory: "f1", docs: [{ docId: "far.arm-0", changes }] });
      to.node.services.pubsub.dispatchEvent(
        new CustomEvent("message", {
          detail: { type: "signed", topic: twinTopic("f1"), data, from: far },
        }),
      );
    };
    try {
      await a.node.dial(b.node.getMultiaddrs()[0]!);
      // The session on connect must be over, or it would carry the twin to a itself.
      assert(
        await eventually(
          () => a.service.stats().sync_sessions >= 1 && b.service.stats().sync_sessions >= 1,
          5_000,
        ),
        "a and b did not sync on connect",
      );
      deliver(b, [...genesis, ...update]);
      assert(await eventually(() => b.service.list().length === 1, 2_000), "b lacks the twin");
      deliver(a, update);
      assert(
        await eventually(
          () => a.service.list().some((t) => t.id === "far.arm-0"),
          5_000,
        ),
        "a did not fetch the missing genesis from b",
      );
      assertEquals(a.service.get("far.arm-0").fields["setpoints.weldCurrentA"]?.value, 7);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  },
});
