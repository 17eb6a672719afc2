/**
 * Scenarios against real twinmesh gateways on the testbed, runnable by name; each prints a
 * verdict and its figures, and as its LAST stdout line one JSON object
 * `{"scenario","verdict","figures",...}`.
 *
 * - `partition`: continuous twin writes and e-stops on every gateway; the last region is cut
 *   off for 30 s (5 s with `--short`); both sides must keep acknowledging writes; after the
 *   heal (writers stop at the heal) all twins must become equal within 10 s, no acknowledged
 *   write may be missing, every stop must be latched at its owner (stops delayed by the cut
 *   are flagged late).
 * - `crash`: writes and stops while a random gateway is killed -9 and restarted, 20 times (4
 *   with `--short`); after each restart the victim must still hold its last acknowledged writes
 *   and every latch it had; at the end, the same convergence and write/stop checks.
 * - `wan`: 40 ms one-way delay and 1 % loss between regions: cross-region twin update latency,
 *   and e-stop latency inside a region, which must stay as fast as with a clean WAN.
 *
 * Run: `scripts/deno.sh run -A scripts/testbed/scenarios.ts partition|crash|wan [--short]
 * [--seed n] [--regions n] [--hosts n]`. It sets the testbed up, runs the scenario's driver in
 * the management namespace (the only one that reaches every gateway's API, untouched by cuts),
 * and tears everything down, also on failure.
 *
 * "Every write present" for last-writer-wins setpoints: each write carries a unique value, and
 * the 202 gives its HLC. After convergence, each field must hold an acknowledged write (found
 * by its value in the writers' logs) and no acknowledged write to that field may have a higher
 * HLC than the one shown; one that does was lost. Superseded writes are invisible by design of
 * LWW and not counted either way.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { assert, TestbedBusyError, TestbedUnavailableError } from "./errors.ts";
import { sleep } from "./exec.ts";
import {
  api,
  assetId,
  fieldsOf,
  type FieldView,
  gatewayUnavailableReason,
  inMgmtNamespace,
  killGateway,
  latchedOf,
  receivedStopsOf,
  restartGateway,
  startGateways,
} from "./gateways.ts";
import { acquireTestbedLock, type TestbedLock } from "./lock.ts";
import { type Random, seededRandom } from "./prng.ts";
import { checkPrerequisites, setupTestbed } from "./setup.ts";
import { type StatePaths, statePaths } from "./state.ts";
import { teardownTestbed } from "./teardown.ts";
import { allHosts, type HostSpec, type Topology } from "./topology.ts";
import { cutRegion, healRegion, loadTopology, setWanConditions } from "./wan.ts";
import { CLEAN_CONDITIONS } from "./wan_relay.ts";

/** Scenario names. */
export const SCENARIOS = ["partition", "crash", "wan"] as const;
/** One scenario name. */
export type ScenarioName = typeof SCENARIOS[number];

/** Options of {@link runScenario}. */
export interface ScenarioOptions {
  /** The CI-sized version: 2 regions × 2 hosts, short cut, few crashes. */
  short?: boolean;
  /** Seed of every random choice (targets, victims, WAN loss). */
  seed?: number;
  regions?: number;
  hostsPerRegion?: number;
  /**
   * How long to wait for another run to release the machine-wide testbed (`lock.ts`) before
   * giving a SKIP result; default {@link LOCK_WAIT_MS_DEFAULT}.
   */
  lockWaitMs?: number;
}

/** Default wait for the testbed lock: longer than a full scenario run by someone else. */
export const LOCK_WAIT_MS_DEFAULT = 25 * 60_000;

/** What a scenario found. */
export interface ScenarioResult {
  scenario: ScenarioName;
  verdict: "PASS" | "FAIL" | "SKIP";
  /** Why SKIP or FAIL, in words. */
  reasons: string[];
  figures: Record<string, number | string | boolean | null>;
}

/** Converge bound after a heal (issue target: ≤ 10 s after the heal of a 30 s cut). */
export const CONVERGE_TARGET_S = 10;
/** How long to wait for convergence before declaring it failed. */
const CONVERGE_WAIT_MS_MAX = 60_000;
/** A stop delivered later than this after it was issued is flagged late. */
export const STOP_LATE_MS = 1_000;
/** Bounds each writer's loop: far above what a scenario issues at 5 writes/s. */
const WRITES_PER_WRITER_MAX = 100_000;
/** Bounds the stop issuer's loop. */
const STOPS_MAX = 10_000;
/** Whole-scenario timeouts, so CI never hangs on a stuck gateway. */
const SCENARIO_TIMEOUT_MS = { short: 3 * 60_000, full: 20 * 60_000 };
/** Largest difference (setpoint value units) treated as equal: values are exact decimals. */
const VALUE_EPSILON = 1e-9;
/** Setpoint fields the writers alternate between. */
const WRITE_FIELDS = ["weldCurrentA", "travelSpeedMmps"] as const;
/**
 * Base of each field's written values: `base + writerIndex + seq / 1e6` stays inside the
 * simulated arm's own range (weldCurrentA 80..350, travelSpeedMmps 1..50) for up to nine
 * writers, so the owner's adapter applies every write instead of refusing it.
 */
const WRITE_BASE: Record<typeof WRITE_FIELDS[number], number> = {
  weldCurrentA: 100,
  travelSpeedMmps: 10,
};

// ---------------------------------------------------------------------------------------------
// Load generators
// ---------------------------------------------------------------------------------------------

/** One acknowledged twin write, as its writer logged it. */
export interface WriteEntry {
  writer: string;
  twin: string;
  field: string;
  value: number;
  hlc: string | undefined;
  ackAtMs: number;
  phase: string;
}

/**
 * Continuous twin writes from every gateway: each writes every `intervalMs` to the arm-0 twin
 * of a random gateway, a unique value `base + writerIndex + seq / 1e6`.
 */
class WriteLoad {
  readonly acked: WriteEntry[] = [];
  failed = 0;
  refused = 0;
  phase = "warmup";
  readonly refusals: string[] = [];
  #stopped = false;
  #loops: Promise<void>[] = [];

  constructor(
    readonly hosts: HostSpec[],
    readonly random: Random,
    readonly intervalMs: number,
  ) {}

  start(): void {
    this.#loops = this.hosts.map((host, index) => this.#loop(host, index));
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#loops);
  }

  async #loop(writer: HostSpec, writerIndex: number): Promise<void> {
    await sleep(this.random() * this.intervalMs);
    for (let seq = 1; seq <= WRITES_PER_WRITER_MAX && !this.#stopped; seq++) {
      const target = this.hosts[Math.floor(this.random() * this.hosts.length)];
      assert(target !== undefined, "a target host");
      const twin = assetId(target, 0);
      const field = WRITE_FIELDS[seq % WRITE_FIELDS.length] ?? "weldCurrentA";
      const value = WRITE_BASE[field] + writerIndex + seq / 1e6;
      const phase = this.phase;
      try {
        const response = await api(writer, "POST", `/twins/${twin}/commands`, {
          setpoints: { [field]: value },
        });
        if (response.status === 202 || response.status === 200) {
          const hlc = (response.body as { hlc?: unknown } | undefined)?.hlc;
          this.acked.push({
            writer: writer.gatewayName,
            twin,
            field: `setpoints.${field}`,
            value,
            hlc: typeof hlc === "string" ? hlc : undefined,
            ackAtMs: Date.now(),
            phase,
          });
        } else {
          this.refused++;
          if (this.refusals.length < 5) {
            this.refusals.push(`${phase}: ${response.status} ${JSON.stringify(response.body)}`);
          }
        }
      } catch {
        this.failed++; // Gateway down (crash scenario) or timed out: not acknowledged.
      }
      await sleep(this.intervalMs);
    }
  }

  /** Acked writes in `phase` by writers for which `predicate` holds. */
  count(phase: string, predicate: (writer: string) => boolean = () => true): number {
    return this.acked.filter((w) => w.phase === phase && predicate(w.writer)).length;
  }
}

/** One acknowledged e-stop. */
export interface StopEntry {
  id: string;
  issuer: string;
  asset: string;
  owner: string;
  issuedAtMs: number;
  phase: string;
  /** Issuer and owner were on different sides of a cut when it was issued. */
  acrossCut: boolean;
}

/** E-stops issued every `intervalMs` from a random gateway to a random gateway's arm-1. */
class StopLoad {
  readonly acked: StopEntry[] = [];
  failed = 0;
  phase = "warmup";
  /** Region cut right now, if any (for flagging stops that cross it). */
  cutRegion: number | undefined;
  #stopped = false;
  #loop: Promise<void> = Promise.resolve();

  constructor(
    readonly hosts: HostSpec[],
    readonly random: Random,
    readonly intervalMs: number,
  ) {}

  start(): void {
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
  }

  async #run(): Promise<void> {
    for (let seq = 1; seq <= STOPS_MAX && !this.#stopped; seq++) {
      await sleep(this.intervalMs);
      if (this.#stopped) break;
      const issuer = this.hosts[Math.floor(this.random() * this.hosts.length)];
      const owner = this.hosts[Math.floor(this.random() * this.hosts.length)];
      assert(issuer !== undefined && owner !== undefined, "hosts to pick from");
      await this.issue(issuer, owner, `#${seq}`);
    }
  }

  /**
   * Issues one stop from `issuer` to `owner`'s arm-1 and logs it when acknowledged; true when
   * it was (a down or refusing issuer counts as failed, not as a stop to check).
   */
  async issue(issuer: HostSpec, owner: HostSpec, tag: string): Promise<boolean> {
    const asset = assetId(owner, 1);
    const issuedAtMs = Date.now();
    const phase = this.phase;
    const cut = this.cutRegion;
    try {
      const response = await api(issuer, "POST", "/estop", {
        target: { asset },
        reason: `testbed ${phase} ${tag}`,
      });
      const id = (response.body as { id?: unknown } | undefined)?.id;
      if ((response.status === 202 || response.status === 200) && typeof id === "string") {
        this.acked.push({
          id,
          issuer: issuer.gatewayName,
          asset,
          owner: owner.gatewayName,
          issuedAtMs,
          phase,
          acrossCut: cut !== undefined &&
            (issuer.regionIndex === cut) !== (owner.regionIndex === cut),
        });
        return true;
      }
    } catch {
      // Counted below.
    }
    this.failed++;
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/** Reads the arm-0 twins of every host from `reader`. */
async function readTwins(reader: HostSpec, hosts: HostSpec[]): Promise<Map<string, FieldView>> {
  const twins = new Map<string, FieldView>();
  await Promise.all(hosts.map(async (host) => {
    const id = assetId(host, 0);
    const response = await api(reader, "GET", `/twins/${id}`);
    if (response.status === 200) twins.set(id, fieldsOf(response.body));
  }));
  return twins;
}

/** Canonical text of the written setpoints of every twin (what must be equal everywhere). */
function setpointSignature(twins: Map<string, FieldView>): string {
  const parts: string[] = [];
  for (const id of [...twins.keys()].sort()) {
    const view = twins.get(id) ?? {};
    const fields = WRITE_FIELDS.map((f) => `${f}=${JSON.stringify(view[`setpoints.${f}`]?.value)}`);
    parts.push(`${id}{${fields.join(",")}}`);
  }
  return parts.join(" ");
}

/**
 * Polls every gateway until all show the same setpoints; returns ms waited, or undefined when
 * they did not converge within `timeoutMs`, plus the last views.
 */
async function waitConverged(
  hosts: HostSpec[],
  timeoutMs: number,
): Promise<{ convergedMs: number | undefined; views: Map<string, Map<string, FieldView>> }> {
  const startedMs = performance.now();
  const pollMs = 200;
  let views = new Map<string, Map<string, FieldView>>();
  for (let waitedMs = 0; waitedMs <= timeoutMs; waitedMs = performance.now() - startedMs) {
    views = new Map();
    await Promise.all(hosts.map(async (host) => {
      views.set(host.gatewayName, await readTwins(host, hosts).catch(() => new Map()));
    }));
    const signatures = new Set([...views.values()].map(setpointSignature));
    const complete = [...views.values()].every((twins) => twins.size === hosts.length);
    if (signatures.size === 1 && complete) {
      return { convergedMs: performance.now() - startedMs, views };
    }
    await sleep(pollMs);
  }
  return { convergedMs: undefined, views };
}

/** Outcome of the write check. */
interface WriteCheck {
  lost: number;
  /** Fields whose value matches no acknowledged write. */
  unknownValues: number;
  details: string[];
}

/**
 * Checks the final view against the writers' logs (see the module doc for what "present"
 * means under last-writer-wins).
 */
export function checkWrites(acked: WriteEntry[], finalView: Map<string, FieldView>): WriteCheck {
  const result: WriteCheck = { lost: 0, unknownValues: 0, details: [] };
  const byField = new Map<string, WriteEntry[]>();
  for (const write of acked) {
    const key = `${write.twin}/${write.field}`;
    const list = byField.get(key) ?? [];
    list.push(write);
    byField.set(key, list);
  }
  for (const [key, writes] of byField) {
    const [twin, field] = key.split("/") as [string, string];
    const shown = finalView.get(twin)?.[field];
    const value = typeof shown?.value === "number" ? shown.value : NaN;
    const winner = writes.find((w) => Math.abs(w.value - value) < VALUE_EPSILON);
    if (winner === undefined) {
      result.unknownValues++;
      result.lost += writes.length > 0 ? 1 : 0;
      if (result.details.length < 10) {
        result.details.push(`${key}: shows ${JSON.stringify(shown?.value)}, no such ack`);
      }
      continue;
    }
    const winnerHlc = shown?.hlc ?? winner.hlc;
    const newer = writes.filter((w) =>
      w !== winner && w.hlc !== undefined && winnerHlc !== undefined && w.hlc > winnerHlc
    );
    if (winnerHlc === undefined) {
      // No HLCs from the API: fall back to acknowledgement order.
      const later = writes.filter((w) => w.ackAtMs > winner.ackAtMs + 1_000);
      result.lost += later.length;
    } else {
      result.lost += newer.length;
    }
    for (const w of newer.slice(0, 3)) {
      if (result.details.length < 10) {
        result.details.push(
          `${key}: acked ${w.value} (hlc ${w.hlc}, ${w.writer}, ${w.phase}) ` +
            `missing; shows ${winner.value} (hlc ${winnerHlc})`,
        );
      }
    }
  }
  return result;
}

/** Outcome of the stop check. */
interface StopCheck {
  lost: number;
  late: number;
  lateAcrossCut: number;
  latenciesMs: number[];
  /** Latencies of the stops whose issuer and owner were on the same side of any cut. */
  sameSideLatenciesMs: number[];
  details: string[];
}

/** Checks that every acknowledged stop is latched (or recorded) at its owner. */
async function checkStops(stops: StopEntry[], hosts: HostSpec[]): Promise<StopCheck> {
  const result: StopCheck = {
    lost: 0,
    late: 0,
    lateAcrossCut: 0,
    latenciesMs: [],
    sameSideLatenciesMs: [],
    details: [],
  };
  const statusByOwner = new Map<string, unknown>();
  await Promise.all(hosts.map(async (host) => {
    const response = await api(host, "GET", "/estop").catch(() => undefined);
    statusByOwner.set(host.gatewayName, response?.body);
  }));
  for (const stop of stops) {
    const status = statusByOwner.get(stop.owner);
    const latched = latchedOf(status).get(stop.asset)?.has(stop.id) ?? false;
    const received = receivedStopsOf(status).get(stop.id);
    if (!latched && received === undefined) {
      result.lost++;
      if (result.details.length < 10) {
        result.details.push(`stop ${stop.id} (${stop.issuer}→${stop.asset}, ${stop.phase}) lost`);
      }
      continue;
    }
    const deliveredAtMs = received?.actedAtMs ?? received?.atMs;
    if (deliveredAtMs !== undefined) {
      const latencyMs = deliveredAtMs - stop.issuedAtMs;
      result.latenciesMs.push(latencyMs);
      if (!stop.acrossCut) result.sameSideLatenciesMs.push(latencyMs);
      if (latencyMs > STOP_LATE_MS || received?.late === true) {
        result.late++;
        if (stop.acrossCut) result.lateAcrossCut++;
      }
    }
  }
  return result;
}

/** The `q` quantile of `values` (nearest rank), or null when empty. */
export function quantile(values: number[], q: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? null;
}

function round(value: number | null | undefined, digits = 1): number | null {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

function firstHost(hosts: HostSpec[]): HostSpec {
  const host = hosts[0];
  assert(host !== undefined, "the testbed has hosts");
  return host;
}

/**
 * Throws {@link TestbedUnavailableError} when the gateway lacks the twin API the scenarios
 * drive (a 404 "no route" on `GET /twins/:id`), so that they skip instead of failing.
 */
async function requireTwinApi(host: HostSpec): Promise<void> {
  const response = await api(host, "GET", `/twins/${assetId(host, 0)}`);
  const error = (response.body as { error?: unknown } | undefined)?.error;
  if (response.status === 404 && typeof error === "string" && error.startsWith("no route")) {
    throw new TestbedUnavailableError(`the gateway has no twin API yet (GET /twins/:id: ${error})`);
  }
}

/**
 * Waits until every gateway knows every arm-0 twin (a write to a twin a gateway has not yet
 * replicated is refused with 404, which would count as a refused write, not a lost one).
 */
async function waitTwinsKnown(hosts: HostSpec[], timeoutMs: number): Promise<boolean> {
  const pollMs = 250;
  const startedMs = performance.now();
  while (performance.now() - startedMs <= timeoutMs) {
    const views = await Promise.all(
      hosts.map((host) => readTwins(host, hosts).catch(() => new Map<string, FieldView>())),
    );
    if (views.every((view) => view.size === hosts.length)) return true;
    await sleep(pollMs);
  }
  return false;
}

/** Waits until every gateway sees at least one peer in another region (or `timeoutMs`). */
async function waitCrossRegionPeers(hosts: HostSpec[], timeoutMs: number): Promise<boolean> {
  const pollMs = 500;
  for (let waitedMs = 0; waitedMs <= timeoutMs; waitedMs += pollMs) {
    const ok = await Promise.all(hosts.map(async (host) => {
      const response = await api(host, "GET", "/peers").catch(() => undefined);
      const peers = Array.isArray(response?.body)
        ? response.body as Array<{ region?: unknown }>
        : [];
      return peers.some((p) => typeof p.region === "string" && p.region !== host.region);
    }));
    if (ok.every(Boolean)) return true;
    await sleep(pollMs);
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Scenarios (run inside the management namespace)
// ---------------------------------------------------------------------------------------------

async function partitionScenario(
  topology: Topology,
  paths: StatePaths,
  options: ScenarioOptions,
): Promise<ScenarioResult> {
  const short = options.short === true;
  const random = seededRandom(options.seed ?? 1);
  const hosts = allHosts(topology);
  const cut = topology.regions[topology.regions.length - 1];
  assert(cut !== undefined && topology.regions.length > 1, "partition needs two regions");
  const warmupMs = short ? 3_000 : 5_000;
  const cutMs = short ? 5_000 : 30_000;
  const reasons: string[] = [];

  await startGateways(topology, paths);
  await requireTwinApi(firstHost(hosts));
  const meshed = await waitCrossRegionPeers(hosts, 30_000);
  if (!meshed) reasons.push("not every gateway saw a cross-region peer within 30 s");
  if (!(await waitTwinsKnown(hosts, 30_000))) {
    reasons.push("not every gateway knew every twin within 30 s of start");
  }
  log(`partition: ${hosts.length} gateways up; cutting ${cut.name} for ${cutMs / 1000} s`);

  const writes = new WriteLoad(hosts, random, 200);
  const stops = new StopLoad(hosts, random, short ? 700 : 1_000);
  writes.start();
  stops.start();
  await sleep(warmupMs);

  writes.phase = stops.phase = "cut";
  stops.cutRegion = cut.index;
  const cutAtMs = performance.now();
  await cutRegion(cut);
  await sleep(cutMs);
  // The cut must really separate the regions: a gateway inside and one outside it, both
  // receiving writes all along, must disagree before the heal.
  const inside = cut.hosts[0];
  const outside = hosts.find((h) => h.regionIndex !== cut.index);
  assert(inside !== undefined && outside !== undefined, "hosts on both sides of the cut");
  const [insideView, outsideView] = await Promise.all(
    [inside, outside].map((reader) =>
      readTwins(reader, hosts).catch(() => new Map<string, FieldView>())
    ),
  );
  const cutEffective = setpointSignature(insideView ?? new Map()) !==
    setpointSignature(outsideView ?? new Map());
  if (!cutEffective) reasons.push("both sides showed the same twins at the end of the cut");
  writes.phase = stops.phase = "healed";
  stops.cutRegion = undefined;
  await healRegion(cut);
  const healedAtMs = performance.now();
  await Promise.all([writes.stop(), stops.stop()]);
  log(`partition: healed after ${((healedAtMs - cutAtMs) / 1000).toFixed(1)} s; converging`);

  const converged = await waitConverged(hosts, CONVERGE_WAIT_MS_MAX);
  const convergeS = converged.convergedMs === undefined
    ? null
    : (performance.now() - healedAtMs) / 1000;
  const firstView = converged.views.get(hosts[0]?.gatewayName ?? "") ?? new Map();
  const writeCheck = checkWrites(writes.acked, firstView);
  // Stops need the heal to have propagated: give retries the same bound as convergence.
  await sleep(1_000);
  const stopCheck = await checkStops(stops.acked, hosts);

  const inCut = (w: string) => w.startsWith(`${cut.name}-`);
  const cutSideWrites = writes.count("cut", inCut);
  const otherSideWrites = writes.count("cut", (w) => !inCut(w));
  if (cutSideWrites === 0) reasons.push(`cut side ${cut.name} acknowledged no writes during cut`);
  if (otherSideWrites === 0) reasons.push("the connected side acknowledged no writes during cut");
  if (writeCheck.lost > 0) reasons.push(`${writeCheck.lost} writes lost: ${writeCheck.details}`);
  if (stopCheck.lost > 0) reasons.push(`${stopCheck.lost} stops lost: ${stopCheck.details}`);
  if (convergeS === null) reasons.push(`twins did not converge within ${CONVERGE_WAIT_MS_MAX} ms`);
  else if (convergeS > CONVERGE_TARGET_S) {
    reasons.push(`converged in ${convergeS.toFixed(1)} s > ${CONVERGE_TARGET_S} s`);
  }
  if (writes.acked.length === 0) reasons.push("no write was acknowledged at all");
  if (writes.refusals.length > 0) log(`partition: refusals seen: ${writes.refusals.join("; ")}`);

  return {
    scenario: "partition",
    verdict: reasons.length === 0 ? "PASS" : "FAIL",
    reasons,
    figures: {
      gateways: hosts.length,
      cut_region: cut.name,
      cut_s: cutMs / 1000,
      cut_effective: cutEffective,
      writes: writes.acked.length,
      writes_failed: writes.failed,
      writes_refused: writes.refused,
      writes_during_cut_cut_side: cutSideWrites,
      writes_during_cut_other_side: otherSideWrites,
      lost_writes: writeCheck.lost,
      stops: stops.acked.length,
      stops_failed: stops.failed,
      lost_stops: stopCheck.lost,
      late_stops: stopCheck.late,
      late_stops_across_cut: stopCheck.lateAcrossCut,
      stop_latency_p50_ms: round(quantile(stopCheck.latenciesMs, 0.5)),
      stop_latency_p99_ms: round(quantile(stopCheck.latenciesMs, 0.99)),
      stop_latency_same_side_p50_ms: round(quantile(stopCheck.sameSideLatenciesMs, 0.5)),
      stop_latency_same_side_p99_ms: round(quantile(stopCheck.sameSideLatenciesMs, 0.99)),
      converge_s: round(convergeS, 2),
    },
  };
}

async function crashScenario(
  topology: Topology,
  paths: StatePaths,
  options: ScenarioOptions,
): Promise<ScenarioResult> {
  const short = options.short === true;
  const random = seededRandom((options.seed ?? 1) + 1000);
  const hosts = allHosts(topology);
  const crashes = short ? 4 : 20;
  const reasons: string[] = [];

  await startGateways(topology, paths);
  await requireTwinApi(firstHost(hosts));
  await waitCrossRegionPeers(hosts, 30_000);
  if (!(await waitTwinsKnown(hosts, 30_000))) {
    reasons.push("not every gateway knew every twin within 30 s of start");
  }
  log(`crash: ${hosts.length} gateways up; ${crashes} kill -9 / restart rounds`);
  const writes = new WriteLoad(hosts, random, 200);
  const stops = new StopLoad(hosts, random, 1_000);
  writes.phase = stops.phase = "crash";
  writes.start();
  stops.start();

  let lostAfterCrash = 0;
  let stopsAfterRestart = 0;
  const restartMs: number[] = [];
  for (let round = 1; round <= crashes; round++) {
    await sleep(1_000 + random() * 1_000);
    const victim = hosts[Math.floor(random() * hosts.length)];
    assert(victim !== undefined, "a victim");
    // What the victim must still have after the crash: its own last acked write per field,
    // and every latch it showed.
    const lastOwn = new Map<string, WriteEntry>();
    for (const w of writes.acked) {
      if (w.writer === victim.gatewayName) lastOwn.set(`${w.twin}/${w.field}`, w);
    }
    const before = await api(victim, "GET", "/estop").catch(() => undefined);
    const latchedBefore = latchedOf(before?.body);
    const ackedBeforeKill = writes.acked.length;
    await killGateway(paths, victim);
    await sleep(300 + random() * 500);
    try {
      restartMs.push(await restartGateway(paths, victim));
    } catch (error) {
      reasons.push(
        `round ${round}: ${victim.gatewayName} did not restart: ${(error as Error).message}`,
      );
      break;
    }
    // An operator's first action on a gateway that just came back may be an e-stop of an
    // asset elsewhere, before it has rediscovered the mesh: it must still arrive.
    const others = hosts.filter((h) => h !== victim);
    const target = others[Math.floor(random() * others.length)];
    assert(target !== undefined, "another gateway");
    if (await stops.issue(victim, target, `after restart ${round}`)) stopsAfterRestart++;
    const twins = await readTwins(victim, hosts);
    for (const [key, write] of lastOwn) {
      const [twin, field] = key.split("/") as [string, string];
      const shown = twins.get(twin)?.[field];
      const shownHlc = shown?.hlc;
      const kept = shownHlc !== undefined && write.hlc !== undefined
        ? shownHlc >= write.hlc
        : shown !== undefined;
      if (!kept) {
        lostAfterCrash++;
        reasons.push(
          `round ${round}: ${victim.gatewayName} lost its acked write ${key}=${write.value}`,
        );
      }
    }
    const after = await api(victim, "GET", "/estop").catch(() => undefined);
    const latchedAfter = latchedOf(after?.body);
    for (const [asset, ids] of latchedBefore) {
      for (const id of ids) {
        if (!latchedAfter.get(asset)?.has(id)) {
          lostAfterCrash++;
          reasons.push(`round ${round}: ${victim.gatewayName} lost latch ${id} on ${asset}`);
        }
      }
    }
    log(
      `crash: round ${round}: ${victim.gatewayName} killed after ${ackedBeforeKill} acked ` +
        `writes, back in ${Math.round(restartMs.at(-1) ?? 0)} ms`,
    );
  }
  await Promise.all([writes.stop(), stops.stop()]);
  const converged = await waitConverged(hosts, CONVERGE_WAIT_MS_MAX);
  const firstView = converged.views.get(hosts[0]?.gatewayName ?? "") ?? new Map();
  const writeCheck = checkWrites(writes.acked, firstView);
  await sleep(1_000);
  const stopCheck = await checkStops(stops.acked, hosts);
  if (converged.convergedMs === undefined) reasons.push("twins did not converge after crashes");
  if (writeCheck.lost > 0) reasons.push(`${writeCheck.lost} writes lost: ${writeCheck.details}`);
  if (stopCheck.lost > 0) reasons.push(`${stopCheck.lost} stops lost: ${stopCheck.details}`);

  return {
    scenario: "crash",
    verdict: reasons.length === 0 ? "PASS" : "FAIL",
    reasons,
    figures: {
      gateways: hosts.length,
      crash_restarts: restartMs.length,
      restart_p50_ms: round(quantile(restartMs, 0.5), 0),
      restart_max_ms: round(Math.max(...restartMs), 0),
      lost_after_crash: lostAfterCrash,
      writes: writes.acked.length,
      writes_failed: writes.failed,
      lost_writes: writeCheck.lost,
      stops: stops.acked.length,
      stops_after_restart: stopsAfterRestart,
      stops_failed: stops.failed,
      lost_stops: stopCheck.lost,
      converge_s: round((converged.convergedMs ?? NaN) / 1000, 2),
    },
  };
}

/** Issues a stop from `issuer` to `owner`'s arm-1 and returns ms until the owner acted. */
async function localStopLatencyMs(issuer: HostSpec, owner: HostSpec, tag: string) {
  const issuedAtMs = Date.now();
  const response = await api(issuer, "POST", "/estop", {
    target: { asset: assetId(owner, 1) },
    reason: `testbed wan ${tag}`,
  });
  const id = (response.body as { id?: unknown } | undefined)?.id;
  if (typeof id !== "string") return undefined;
  const pollMs = 5;
  for (let waitedMs = 0; waitedMs < 5_000; waitedMs += pollMs) {
    const status = await api(owner, "GET", "/estop");
    const received = receivedStopsOf(status.body).get(id);
    if (received !== undefined) {
      return (received.actedAtMs ?? received.atMs ?? Date.now()) - issuedAtMs;
    }
    if (latchedOf(status.body).get(assetId(owner, 1))?.has(id)) return Date.now() - issuedAtMs;
    await sleep(pollMs);
  }
  return undefined;
}

/**
 * Writes a setpoint at `writer` and returns ms until `reader` shows it. Uses `weldVoltageV`,
 * which the background writers never touch (they would overwrite the probe value).
 */
async function updateLatencyMs(writer: HostSpec, reader: HostSpec, twin: string, value: number) {
  const startedMs = performance.now();
  const response = await api(writer, "POST", `/twins/${twin}/commands`, {
    setpoints: { weldVoltageV: value },
  });
  if (response.status !== 202 && response.status !== 200) return undefined;
  const pollMs = 5;
  for (let waitedMs = 0; waitedMs < 10_000; waitedMs += pollMs) {
    const shown = await api(reader, "GET", `/twins/${twin}`);
    const field = fieldsOf(shown.body)["setpoints.weldVoltageV"];
    if (typeof field?.value === "number" && Math.abs(field.value - value) < VALUE_EPSILON) {
      return performance.now() - startedMs;
    }
    await sleep(pollMs);
  }
  return undefined;
}

/** Tolerance of "local e-stop latency unchanged": timer and scheduling noise on 2 shared cores. */
function unchanged(cleanP99: number, troubledP99: number): boolean {
  return troubledP99 <= Math.max(cleanP99 + 10, cleanP99 * 1.5);
}

async function wanScenario(
  topology: Topology,
  paths: StatePaths,
  options: ScenarioOptions,
): Promise<ScenarioResult> {
  const short = options.short === true;
  const samples = short ? 15 : 60;
  const random = seededRandom((options.seed ?? 1) + 2000);
  const [r1, r2] = topology.regions;
  assert(r1 !== undefined && r2 !== undefined, "wan needs two regions");
  const a1 = r1.hosts[0];
  const a2 = r1.hosts[1] ?? r1.hosts[0];
  const b1 = r2.hosts[0];
  const b2 = r2.hosts[1] ?? r2.hosts[0];
  assert(a1 !== undefined && a2 !== undefined && b1 !== undefined && b2 !== undefined, "hosts");
  const hosts = allHosts(topology);
  const reasons: string[] = [];
  await startGateways(topology, paths);
  await requireTwinApi(a1);
  await waitCrossRegionPeers(hosts, 30_000);
  if (!(await waitTwinsKnown(hosts, 30_000))) {
    reasons.push("not every gateway knew every twin within 30 s of start");
  }
  // Background twin writes on every gateway (half of them cross-region) during every
  // measurement, so that the local e-stops compete with WAN traffic, retries and all.
  const background = new WriteLoad(hosts, random, 200);
  background.start();

  // Local stops alternate between the two regions: issuer and owner share a LAN.
  const measureLocalStops = async (tag: string, count: number, into: number[]) => {
    for (let i = -2; i < count; i++) {
      const [issuer, owner] = i % 2 === 0 ? [a1, a2] : [b1, b2];
      const latency = await localStopLatencyMs(issuer, owner, `${tag}-${i}`);
      // The first two of each block are warm-up (the machine's load just changed): not counted.
      if (latency !== undefined && i >= 0) into.push(latency);
      await sleep(100);
    }
  };
  const cleanStops: number[] = [];
  const wanStops: number[] = [];
  const cutStops: number[] = [];
  const healStops: number[] = [];
  const updates: number[] = [];
  let updatesMissing = 0;
  // Clean, WAN trouble and cut blocks alternate, so that load from other work on the machine
  // (it drifts over minutes) falls on all three alike instead of on one of them.
  const rounds = short ? 1 : 3;
  const perBlock = Math.ceil(samples / rounds);
  try {
    for (let r = 0; r < rounds; r++) {
      await measureLocalStops(`clean${r}`, perBlock, cleanStops);
      await setWanConditions({ delayMs: 40, jitterMs: 2, loss: 0.01 }, paths);
      await sleep(2_000);
      log(`wan: round ${r + 1}/${rounds}: 40 ms one-way, 1 % loss set between regions`);
      for (let i = 0; i < perBlock; i++) {
        const [writer, reader, owner] = i % 2 === 0 ? [a1, b2, b1] : [b1, a2, a1];
        // Inside the arm's own range (14..40 V), unique per sample.
        const value = 20 + (r * perBlock + i) / 1000;
        const latency = await updateLatencyMs(writer, reader, assetId(owner, 0), value);
        if (latency === undefined) updatesMissing++;
        else updates.push(latency);
        await sleep(100);
      }
      await measureLocalStops(`wan${r}`, perBlock, wanStops);
      await setWanConditions({ ...CLEAN_CONDITIONS }, paths);
      // The worst WAN trouble: no WAN at all for the second region.
      await cutRegion(r2);
      log(`wan: round ${r + 1}/${rounds}: ${r2.name} cut off`);
      await sleep(2_000);
      try {
        await measureLocalStops(`cut${r}`, perBlock, cutStops);
      } finally {
        await healRegion(r2);
      }
      // Right after the heal both regions resynchronise what the cut held back.
      await measureLocalStops(`heal${r}`, perBlock, healStops);
      // Settle before the next clean block.
      await sleep(5_000);
    }
    const expected = perBlock * rounds;

    const cleanP99 = quantile(cleanStops, 0.99);
    const wanP99 = quantile(wanStops, 0.99);
    const cutP99 = quantile(cutStops, 0.99);
    const healP99 = quantile(healStops, 0.99);
    if (updatesMissing > 0) reasons.push(`${updatesMissing} cross-region updates never arrived`);
    const measured: Array<[string, number[]]> = [
      ["clean", cleanStops],
      ["wan", wanStops],
      ["cut", cutStops],
      ["heal", healStops],
    ];
    for (const [what, list] of measured) {
      if (list.length < expected) {
        reasons.push(`${expected - list.length} local stops missing (${what})`);
      }
    }
    if (cleanP99 !== null && wanP99 !== null && !unchanged(cleanP99, wanP99)) {
      reasons.push(`local e-stop p99 ${wanP99} ms under WAN loss/delay vs ${cleanP99} ms clean`);
    }
    if (cleanP99 !== null && cutP99 !== null && !unchanged(cleanP99, cutP99)) {
      reasons.push(`local e-stop p99 ${cutP99} ms with the WAN cut vs ${cleanP99} ms clean`);
    }
    if (cleanP99 !== null && healP99 !== null && !unchanged(cleanP99, healP99)) {
      reasons.push(`local e-stop p99 ${healP99} ms right after the heal vs ${cleanP99} ms clean`);
    }
    return {
      scenario: "wan",
      verdict: reasons.length === 0 ? "PASS" : "FAIL",
      reasons,
      figures: {
        wan_delay_ms: 40,
        wan_loss_pct: 1,
        samples,
        background_writes: background.acked.length,
        wan_update_p50_ms: round(quantile(updates, 0.5)),
        wan_update_p99_ms: round(quantile(updates, 0.99)),
        wan_updates_missing: updatesMissing,
        local_estop_p50_ms_clean: round(quantile(cleanStops, 0.5)),
        local_estop_p99_ms_clean: round(cleanP99),
        local_estop_p50_ms: round(quantile(wanStops, 0.5)),
        local_estop_p99_ms: round(wanP99),
        local_estop_p50_ms_cut: round(quantile(cutStops, 0.5)),
        local_estop_p99_ms_cut: round(cutP99),
        local_estop_p50_ms_heal: round(quantile(healStops, 0.5)),
        local_estop_p99_ms_heal: round(healP99),
      },
    };
  } finally {
    await background.stop();
  }
}

function log(line: string): void {
  console.log(line);
}

/** Runs scenario `name` against the running testbed; the caller must be in `tm-mgmt`. */
export async function runScenarioDriver(
  name: ScenarioName,
  options: ScenarioOptions,
  paths: StatePaths = statePaths(),
): Promise<ScenarioResult> {
  const topology = await loadTopology(paths);
  if (!(await inMgmtNamespace(topology))) {
    throw new TestbedUnavailableError(`the ${name} driver must run in ${topology.mgmtNs}`);
  }
  switch (name) {
    case "partition":
      return await partitionScenario(topology, paths, options);
    case "crash":
      return await crashScenario(topology, paths, options);
    case "wan":
      return await wanScenario(topology, paths, options);
  }
}

/** Default testbed size per scenario (issue: 2–3 regions of 2–3 hosts; the CI version 2×2). */
function defaultSize(name: ScenarioName, short: boolean): { regions: number; hosts: number } {
  if (short || name === "wan") return { regions: 2, hosts: 2 };
  return { regions: 3, hosts: 2 };
}

/**
 * Sets the testbed up, runs the scenario's driver inside the management namespace, prints
 * its output, tears everything down (also on failure) and returns the driver's result. A
 * machine without namespaces, or a repository without the gateway, gives a SKIP result.
 *
 * @example
 * ```ts
 * const result = await runScenario("partition", { short: true });
 * console.log(result.verdict, result.figures.converge_s);
 * ```
 */
export async function runScenario(
  name: ScenarioName,
  options: ScenarioOptions = {},
  paths: StatePaths = statePaths(),
): Promise<ScenarioResult> {
  const skip = (reason: string): ScenarioResult => ({
    scenario: name,
    verdict: "SKIP",
    reasons: [reason],
    figures: {},
  });
  try {
    await checkPrerequisites();
  } catch (error) {
    if (error instanceof TestbedUnavailableError) return skip(error.message);
    throw error;
  }
  const gatewayReason = await gatewayUnavailableReason();
  if (gatewayReason !== undefined) return skip(gatewayReason);
  const short = options.short === true;
  const size = defaultSize(name, short);
  let lock: TestbedLock;
  try {
    lock = await acquireTestbedLock(`${name} scenario`, options.lockWaitMs ?? LOCK_WAIT_MS_DEFAULT);
  } catch (error) {
    if (error instanceof TestbedBusyError) return skip(error.message);
    throw error;
  }
  const startedMs = performance.now();
  try {
    const result = await runLocked(name, options, paths, size);
    // Setup, gateways, scenario and teardown; not the wait for the lock.
    result.figures.elapsed_s = round((performance.now() - startedMs) / 1000, 1);
    return result;
  } finally {
    await lock.release();
  }
}

async function runLocked(
  name: ScenarioName,
  options: ScenarioOptions,
  paths: StatePaths,
  size: { regions: number; hosts: number },
): Promise<ScenarioResult> {
  const short = options.short === true;
  try {
    await setupTestbed({
      regions: options.regions ?? size.regions,
      hostsPerRegion: options.hostsPerRegion ?? size.hosts,
      seed: options.seed ?? 1,
    }, paths);
    const args = [name, "--driver", "--seed", String(options.seed ?? 1)];
    if (short) args.push("--short");
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        "tm-mgmt",
        Deno.execPath(),
        "run",
        "-A",
        "--quiet",
        new URL(import.meta.url).pathname,
        ...args,
      ],
      stdout: "piped",
      stderr: "inherit",
      env: { NO_COLOR: "1" },
      signal: AbortSignal.timeout(short ? SCENARIO_TIMEOUT_MS.short : SCENARIO_TIMEOUT_MS.full),
    }).spawn();
    let last = "";
    let buffer = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      for (let i = buffer.indexOf("\n"); i >= 0; i = buffer.indexOf("\n")) {
        const line = buffer.slice(0, i);
        buffer = buffer.slice(i + 1);
        if (line.trim().length > 0) last = line;
        if (!line.startsWith("{")) console.log(line);
      }
    }
    const status = await child.status;
    try {
      return JSON.parse(last) as ScenarioResult;
    } catch {
      return {
        scenario: name,
        verdict: "FAIL",
        reasons: [`driver exited with ${status.code} without a result (last line: ${last})`],
        figures: {},
      };
    }
  } finally {
    await teardownTestbed(paths);
  }
}

/** Prints a result as a small table. */
export function printResult(result: ScenarioResult): void {
  console.log(`\n== ${result.scenario}: ${result.verdict}`);
  const width = Math.max(...Object.keys(result.figures).map((k) => k.length), 10);
  for (const [key, value] of Object.entries(result.figures)) {
    console.log(`  ${key.padEnd(width)}  ${value}`);
  }
  for (const reason of result.reasons) console.log(`  ! ${reason}`);
}

if (import.meta.main) {
  const { positionals, values } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      short: { type: "boolean", default: false },
      driver: { type: "boolean", default: false },
      seed: { type: "string", default: "1" },
      regions: { type: "string" },
      hosts: { type: "string" },
    },
  });
  const name = positionals[0] as ScenarioName | undefined;
  if (name === undefined || !SCENARIOS.includes(name)) {
    console.error(`usage: scenarios.ts ${SCENARIOS.join("|")} [--short] [--seed n]`);
    Deno.exit(2);
  }
  const options: ScenarioOptions = { short: values.short, seed: Number(values.seed) };
  if (values.regions !== undefined) options.regions = Number(values.regions);
  if (values.hosts !== undefined) options.hostsPerRegion = Number(values.hosts);
  if (values.driver) {
    let result: ScenarioResult;
    try {
      result = await runScenarioDriver(name, options);
    } catch (error) {
      const verdict = error instanceof TestbedUnavailableError ? "SKIP" : "FAIL";
      result = { scenario: name, verdict, reasons: [String(error)], figures: {} };
    }
    console.log(JSON.stringify(result));
    Deno.exit(0);
  }
  const result = await runScenario(name, options);
  printResult(result);
  console.log(JSON.stringify(result));
  Deno.exit(result.verdict === "FAIL" ? 1 : 0);
}
