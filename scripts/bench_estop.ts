/**
 * `deno task bench estop`: e-stop latency over real gateway processes.
 *
 * Spawns 10 gateways (`mod.ts run`) on this host in one fresh factory (mDNS),
 * each driving 10 simulated arms at 100 Hz telemetry (the background load:
 * telemetry, detection, twin writes). Once every gateway has a live e-stop link
 * to every other (or after 60 s, noting how many links were up), it issues 1,000
 * stops, each `POST /estop` to a random origin for a random asset owned by another
 * gateway, one every `--interval-ms`, open loop (up to 32 requests in flight).
 *
 * Latency is measured from the origin's issue (its record's `atMs`) to the
 * owner's adapter stop (the owner's record's `actedAtMs`). Both are
 * `performance.timeOrigin + performance.now()`: wall ms with sub-ms precision,
 * comparable across processes on one host. HTTP is only the trigger: its
 * cost is not in the figures. Records are collected from `GET /estop` of every
 * gateway during and after the run. A stop is lost if its owner never latched
 * it; acked if the origin's record holds the owner's ack (`ok`, or `duplicate` when
 * the first ack was lost and a retry was acked) and misses no one.
 *
 * Human table on stdout, then as the LAST stdout line:
 * `{"stops","acked","lost","p50_ms","p99_ms","max_ms", ...}`. Progress on stderr.
 * Targets: lost 0, p99 ≤ 5 ms, p50 ≤ 1 ms.
 *
 * Options: `--gateways n` (10), `--arms n` (10), `--hz n` (100), `--stops n`
 * (1000), `--interval-ms n` (15), `--warmup-ms n` (10000: running before the
 * first stop), `--seed n` (1), `--allow-local` (origin may
 * own the asset; such stops never leave the process), `--keep` (keep data dirs
 * and logs), `--in-process` (the earlier variant: the e-stop service alone, all
 * gateways in this process, no adapter or telemetry work besides a JSON probe).
 *
 * @example
 * ```sh
 * scripts/deno.sh task bench estop
 * scripts/deno.sh run -A scripts/bench_estop.ts --stops 200 --gateways 4
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  freePort,
  type GatewayProcess,
  getJson,
  postJson,
  spawnGateway,
  stopGateway,
  sumMetrics,
  tail,
  waitReady,
} from "./mesh_processes.ts";

/** The JSON report (last stdout line). */
export interface EstopBenchReport {
  stops: number;
  acked: number;
  lost: number;
  p50_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  [extra: string]: unknown;
}

interface Options {
  gateways: number;
  arms: number;
  hz: number;
  stops: number;
  intervalMs: number;
  warmupMs: number;
  seed: number;
  allowLocal: boolean;
  keep: boolean;
  inProcess: boolean;
}

interface RecordView {
  id: string;
  kind: string;
  direction: "issued" | "received";
  origin: string;
  acks: { peer: string; latencyMs: number; status: string }[];
  missing: string[];
  late: boolean;
  atMs: number;
  actedAtMs?: number;
  assets?: string[];
}

interface EstopView {
  latched: { assetId: string; stopIds: string[] }[];
  recent: RecordView[];
}

interface Issued {
  id: string;
  origin: number;
  owner: number;
  assetId: string;
  httpMs: number;
}

/** How long every gateway may take to link to every other after start. */
const LINK_TIMEOUT_MS = 60_000;
/** After the last stop: how long acks and latches may still take. */
const SETTLE_TIMEOUT_MS = 10_000;
/** POST /estop requests outstanding at once (the trigger is open loop up to this). */
const MAX_IN_FLIGHT = 32;
/** Records are collected after this many stops (each gateway keeps its last 256). */
const COLLECT_EVERY = 50;

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      gateways: { type: "string", default: "10" },
      arms: { type: "string", default: "10" },
      hz: { type: "string", default: "100" },
      stops: { type: "string", default: "1000" },
      "interval-ms": { type: "string", default: "15" },
      "warmup-ms": { type: "string", default: "10000" },
      seed: { type: "string", default: "1" },
      "allow-local": { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      "in-process": { type: "boolean", default: false },
    },
    strict: true,
  });
  const num = (name: string, text: string, min: number) => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < min) {
      throw new Error(`--${name}: expected a number ≥ ${min}, got ${JSON.stringify(text)}`);
    }
    return value;
  };
  return {
    gateways: num("gateways", values.gateways, 2),
    arms: num("arms", values.arms, 1),
    hz: num("hz", values.hz, 1),
    stops: num("stops", values.stops, 1),
    intervalMs: num("interval-ms", values["interval-ms"], 0),
    warmupMs: num("warmup-ms", values["warmup-ms"], 0),
    seed: num("seed", values.seed, 0),
    allowLocal: values["allow-local"],
    keep: values.keep,
    inProcess: values["in-process"],
  };
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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const progress = (message: string) => console.error(`[bench estop] ${message}`);
const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** Nearest-rank quantile of a sorted list. */
function quantile(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? null;
}

/**
 * How far `performance.timeOrigin + performance.now()` is from the system's realtime
 * clock in a Deno process, in ms: the largest `perf − Date.now()` seen tends to
 * `1 + offset` (Date.now floors; preemption only lowers the difference). Every gateway
 * computes its timestamps the same way, so a near-zero offset here means their
 * timestamps are comparable across processes on this host.
 */
function perfClockOffsetMs(): number {
  let max = -Infinity;
  for (let i = 0; i < 200_000; i++) {
    const d = performance.timeOrigin + performance.now() - Date.now();
    if (d > max) max = d;
  }
  return max - 1;
}

/** Runs the benchmark; prints the table and the JSON line; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const options = parseOptions(args);
  const report = options.inProcess ? await runInProcess(options) : await runProcesses(options);
  console.log(JSON.stringify(report));
  return 0;
}

// ------------------------------------------------------------ real processes

async function runProcesses(options: Options): Promise<EstopBenchReport> {
  const dir = Deno.makeTempDirSync({ prefix: "twinmesh-bench-estop-" });
  const factory = `bench-estop-${crypto.randomUUID().slice(0, 8)}`;
  const load = (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ")[0];
  const clockOffsetMs = perfClockOffsetMs();
  progress(`starting ${options.gateways} gateways in ${dir} (load average ${load})`);
  const gateways: GatewayProcess[] = [];
  for (let i = 0; i < options.gateways; i++) {
    const name = `b${i}`;
    gateways.push(spawnGateway({
      name,
      factory,
      region: "bench",
      dataDir: join(dir, name),
      listenPort: freePort(),
      httpPort: freePort(),
      extraArgs: [
        "--assets",
        String(options.arms),
        "--telemetry-hz",
        String(options.hz),
      ],
      logFile: join(dir, `${name}.log`),
    }));
  }
  // A gateway that exits mid-run (crash, or a signal from outside) ends the run at once.
  let exited: string | undefined;
  for (const g of gateways) {
    g.status.then((status) => {
      exited ??= `${g.spec.name} exited (code ${status.code}, signal ${status.signal})`;
    });
  }
  const checkAlive = () => {
    if (exited !== undefined) throw new Error(`${exited}; logs kept in ${dir}`);
  };
  let failed = false;
  // Ctrl-C or a timeout's SIGTERM must not leave ten gateways running on a shared host.
  const onSignal = () => {
    for (const g of gateways) {
      try {
        g.child.kill("SIGTERM");
      } catch { /* gone */ }
    }
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    await Promise.all(gateways.map((g) => waitReady(g, 60_000)));
    const peerIds = await Promise.all(
      gateways.map(async (g) => (await getJson<{ peerId: string }>(g, "/health")).peerId),
    );
    const linkStart = performance.now();
    const wanted = options.gateways * (options.gateways - 1);
    let linksAtStart = 0;
    for (;;) {
      const live = await Promise.all(gateways.map(async (g) => {
        try {
          const status = await getJson<{ stats: { estopLivePeers: number } }>(g, "/status");
          return status.stats.estopLivePeers;
        } catch {
          return 0;
        }
      }));
      checkAlive();
      linksAtStart = live.reduce((a, b) => a + b, 0);
      if (linksAtStart >= wanted) {
        progress(`all e-stop links up after ${Math.round(performance.now() - linkStart)} ms`);
        break;
      }
      if (performance.now() - linkStart > LINK_TIMEOUT_MS) {
        // A host too small for the load: measure anyway (stops then also take relays and
        // gossip), and say so in the table.
        progress(`only ${linksAtStart}/${wanted} e-stop links up after ${LINK_TIMEOUT_MS} ms`);
        break;
      }
      await sleep(250);
    }
    // Telemetry, detectors and twin writers run for a while before the first
    // stop: the figures are for the steady background load, after the start-up
    // work (catch-up sessions 1 s after each connection, the first
    // measured-state writes at 5 s).
    await sleep(options.warmupMs);

    const random = mulberry32(options.seed);
    const issued: Issued[] = [];
    /** `${gateway index}/${record id}` → record (the freshest copy). */
    const records = new Map<string, RecordView>();
    const collect = async () => {
      const views = await Promise.all(gateways.map((g) => getJson<EstopView>(g, "/estop")));
      views.forEach((view, i) => {
        for (const record of view.recent) {
          if (record.kind === "stop") records.set(`${i}/${record.id}`, record);
        }
      });
      return views;
    };
    // Open loop: a stop every `intervalMs` whatever the HTTP answers take (bounded in flight),
    // so a slow trigger does not thin out the offered load.
    const started = performance.now();
    const inFlight = new Set<Promise<void>>();
    let triggerErrors = 0;
    let collectErrors = 0;
    /** A collect that fails (a read timed out on an overloaded host) is counted and skipped. */
    const collectCounted = () =>
      collect().catch((err: Error) => {
        collectErrors++;
        if (collectErrors <= 3) {
          progress(`reading the gateways' stop records failed: ${err.message}`);
        }
        return undefined;
      });
    let collecting: Promise<unknown> | undefined;
    for (let i = 0; i < options.stops; i++) {
      const owner = Math.floor(random() * options.gateways);
      const assetId = `b${owner}.arm-${Math.floor(random() * options.arms)}`;
      let origin = Math.floor(random() * (options.gateways - (options.allowLocal ? 0 : 1)));
      if (!options.allowLocal && origin >= owner) origin++;
      const t0 = performance.now();
      const post = postJson<{ id: string }>(gateways[origin]!, "/estop", {
        target: { asset: assetId },
        reason: `bench-${i}`,
      }).then((response) => {
        if (response.status !== 202) {
          throw new Error(`POST /estop at b${origin}: ${response.status}`);
        }
        const httpMs = performance.now() - t0;
        issued.push({ id: response.body.id, origin, owner, assetId, httpMs });
      }).catch((err: Error) => {
        // The trigger failed (an overloaded gateway's HTTP answer timed out): the
        // stop may or may not have been issued; it is counted, not measured.
        triggerErrors++;
        if (triggerErrors <= 3) progress(`trigger ${i} failed: ${err.message}`);
      }).finally(() => inFlight.delete(post));
      inFlight.add(post);
      if (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight);
      if ((i + 1) % COLLECT_EVERY === 0) {
        checkAlive();
        collecting ??= collectCounted().finally(() => (collecting = undefined));
        if ((i + 1) % 200 === 0) progress(`${i + 1}/${options.stops} stops issued`);
      }
      const nextAt = started + (i + 1) * options.intervalMs;
      await sleep(Math.max(0, nextAt - performance.now()));
    }
    await Promise.all(inFlight);
    await collecting;
    const issueS = (performance.now() - started) / 1000;

    // Settle: every stop latched at its owner and acked at its origin, or time is up.
    const settleStart = performance.now();
    let latchedIds = new Set<string>();
    let ackedIds = new Set<string>();
    for (;;) {
      const views = await collectCounted();
      if (views === undefined) {
        if (performance.now() - settleStart > SETTLE_TIMEOUT_MS) break;
        continue;
      }
      latchedIds = new Set(
        views.flatMap((view, i) =>
          view.latched.map((l) => l.stopIds.map((id) => `${i}/${l.assetId}/${id}`)).flat()
        ),
      );
      ackedIds = new Set(
        issued.filter((s) => {
          const record = records.get(`${s.origin}/${s.id}`);
          return record !== undefined && record.missing.length === 0 &&
            record.acks.some((a) =>
              a.peer === peerIds[s.owner] && (a.status === "ok" || a.status === "duplicate")
            );
        }).map((s) => s.id),
      );
      const latchedAll = issued.every((s) => latchedIds.has(`${s.owner}/${s.assetId}/${s.id}`));
      if (
        (latchedAll && ackedIds.size === issued.length) ||
        performance.now() - settleStart > SETTLE_TIMEOUT_MS
      ) break;
      await sleep(250);
    }

    const latencies: number[] = [];
    const slowest: { ms: number; origin: number; owner: number; atMs: number }[] = [];
    let negative = 0;
    let missingRecords = 0;
    let subMs = 0;
    const lateAcks = issued.filter((s) => records.get(`${s.origin}/${s.id}`)?.late).length;
    for (const s of issued) {
      const sent = records.get(`${s.origin}/${s.id}`);
      const acted = records.get(`${s.owner}/${s.id}`);
      if (sent === undefined || acted?.actedAtMs === undefined) {
        missingRecords++;
        continue;
      }
      const ms = acted.actedAtMs - sent.atMs;
      if (ms < 0) negative++;
      if (!Number.isInteger(sent.atMs) && !Number.isInteger(acted.actedAtMs)) subMs++;
      latencies.push(ms);
      if (ms > 5) slowest.push({ ms, origin: s.origin, owner: s.owner, atMs: sent.atMs });
    }
    latencies.sort((a, b) => a - b);
    // The tail's shape: whether slow stops share an origin, an owner or a moment.
    const firstAtMs = Math.min(
      ...issued.map((s) => records.get(`${s.origin}/${s.id}`)?.atMs ?? Infinity),
    );
    for (const slow of slowest.sort((a, b) => b.ms - a.ms).slice(0, 10)) {
      console.error(
        `[bench estop] slow stop: ${
          round3(slow.ms)
        } ms, gateway ${slow.origin} -> ${slow.owner}, ` +
          `${((slow.atMs - firstAtMs) / 1000).toFixed(2)} s into the run`,
      );
    }
    const lost = issued.filter((s) => !latchedIds.has(`${s.owner}/${s.assetId}/${s.id}`)).length;
    const httpSorted = issued.map((s) => s.httpMs).sort((a, b) => a - b);
    const stats = await Promise.all(
      gateways.map((g) =>
        getJson<{ stats: { telemetrySamples: number; eventLoopLagMaxMs?: number } }>(g, "/status")
      ),
    );
    const telemetrySamples = stats.reduce((n, s) => n + s.stats.telemetrySamples, 0);
    // Worst event-loop lag of any gateway over its last ~10 s: how long frames waited in line.
    const loopLagMaxMs = Math.max(...stats.map((s) => s.stats.eventLoopLagMaxMs ?? 0));
    // The e-stop threads' own loops: whether a slow stop waited inside a thread or outside it.
    const threadLags = await Promise.all(
      gateways.map((g) => sumMetrics([g], /^twinmesh_estop_thread_loop_lag_max_ms$/)),
    );
    const threadLagMaxMs = Math.max(
      ...threadLags.map((m) => m.twinmesh_estop_thread_loop_lag_max_ms ?? 0),
    );
    // Why twin sync sessions ran during the run (they compete with e-stop frames for the loop).
    const syncWanted = Object.fromEntries(
      Object.entries(await sumMetrics(gateways, /^twinmesh_twins_sync_wanted_/)).map((
        [name, n],
      ) => [name.replace("twinmesh_twins_sync_wanted_", ""), n]),
    );
    const loadAfter = (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ")[0];

    const p = (q: number) => {
      const v = quantile(latencies, q);
      return v === null ? null : round3(v);
    };
    const report: EstopBenchReport = {
      stops: issued.length,
      acked: ackedIds.size,
      lost,
      p50_ms: p(0.5),
      p99_ms: p(0.99),
      max_ms: latencies.length ? round3(latencies.at(-1)!) : null,
      p90_ms: p(0.9),
      p95_ms: p(0.95),
      // How the tail is shaped: stops slower than 5 ms and 50 ms.
      over_5ms: latencies.filter((ms) => ms > 5).length,
      over_50ms: latencies.filter((ms) => ms > 50).length,
      variant: "processes",
      gateways: options.gateways,
      arms: options.gateways * options.arms,
      telemetry_hz: options.hz,
      interval_ms: options.intervalMs,
      warmup_ms: options.warmupMs,
      measured: latencies.length,
      links_at_start: linksAtStart,
      links_wanted: wanted,
      late_acks: lateAcks,
      trigger_errors: triggerErrors,
      collect_errors: collectErrors,
      telemetry_samples: telemetrySamples,
      loop_lag_max_ms: loopLagMaxMs,
      estop_thread_lag_max_ms: threadLagMaxMs,
      sync_wanted: syncWanted,
      clock_offset_ms: round3(clockOffsetMs),
      load_before: Number(load),
      load_after: Number(loadAfter),
    };
    printTable("E-stop latency, real gateway processes (HTTP is only the trigger)", [
      ["gateways (processes)", `${options.gateways} on this host, mDNS factory ${factory}`],
      ["e-stop links up at start", `${linksAtStart}/${wanted}`],
      ["simulated arms", `${options.gateways * options.arms} at ${options.hz} Hz (background)`],
      [
        "stops issued",
        `${issued.length} in ${issueS.toFixed(1)} s, one per ${options.intervalMs} ms`,
      ],
      [
        "origin → owner",
        options.allowLocal ? "random (may be the owner)" : "random origin ≠ owner",
      ],
      ["acked (origin saw owner's ack)", String(ackedIds.size)],
      ["lost (owner never latched)", String(lost)],
      ["latency p50 / p99 / max", `${report.p50_ms} / ${report.p99_ms} / ${report.max_ms} ms`],
      ["latency measured from", "origin record atMs (stop issued, after HTTP parsing)"],
      ["latency measured to", "owner record actedAtMs (adapter stop called)"],
      ["HTTP trigger (not in latency)", `p50 ${round3(quantile(httpSorted, 0.5) ?? NaN)} ms`],
      ["stops without both records", String(missingRecords)],
      ["negative latencies (clock check)", String(negative)],
      ["perf clock − realtime (this host)", `${round3(clockOffsetMs)} ms`],
      ["pairs with sub-ms timestamps", `${subMs}/${latencies.length}`],
      ["late acks (after 2 s deadline)", String(lateAcks)],
      ["HTTP triggers that failed (not measured)", String(triggerErrors)],
      ["reads of the stop records that failed", String(collectErrors)],
      ["telemetry samples (all arms)", String(telemetrySamples)],
      ["worst event-loop lag (last 10 s)", `${loopLagMaxMs} ms`],
      ["worst e-stop thread loop lag (last 10 s)", `${threadLagMaxMs} ms`],
      ["twin sync sessions wanted (all)", JSON.stringify(syncWanted)],
      ["load average before / after", `${load} / ${loadAfter}`],
      ["targets", "lost 0, p99 ≤ 5 ms, p50 ≤ 1 ms"],
    ]);
    if (options.keep) progress(`data dirs and logs kept in ${dir}`);
    return report;
  } catch (err) {
    failed = true;
    for (const g of gateways) progress(`${g.spec.name} log tail:\n${tail(g.spec.logFile, 3)}`);
    progress(`logs kept in ${dir}`);
    throw err;
  } finally {
    progress("stopping gateways");
    await Promise.all(gateways.map((g) => stopGateway(g)));
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    if (!options.keep && !failed) Deno.removeSync(dir, { recursive: true });
  }
}

function printTable(title: string, rows: [string, string][]): void {
  const width = Math.max(...rows.map(([k]) => k.length));
  console.log(title);
  for (const [key, value] of rows) console.log(`  ${key.padEnd(width)}  ${value}`);
}

// ------------------------------------------------------------ in-process variant

/**
 * The earlier variant: e-stop services over real libp2p (TCP, Noise, Yamux)
 * but all in this process, with a fake adapter. Useful to separate the
 * protocol's own cost from process scheduling on a loaded host.
 */
async function runInProcess(options: Options): Promise<EstopBenchReport> {
  const util = await import("../tests/estop_test_util.ts");
  const directory = new util.TestDirectory();
  const gateways: Awaited<ReturnType<typeof util.createTestGateway>>[] = [];
  for (let i = 0; i < options.gateways; i++) {
    gateways.push(
      await util.createTestGateway({
        name: `gw-${i}`,
        directory,
        assetCount: options.arms,
        start: false,
        init: { ackDeadlineMs: 2_000 },
      }),
    );
  }
  await Promise.all(gateways.map((g) => g.service.start()));
  await util.connectAll(gateways);
  await util.waitForLinks(gateways, 10_000);
  progress(`${options.gateways} in-process gateways linked`);

  // Simulated telemetry: every arm produces a JSON sample at the telemetry rate.
  let telemetrySamples = 0;
  const telemetry = setInterval(() => {
    for (const g of gateways) {
      for (const assetId of g.assets) {
        const sample = JSON.stringify({
          assetId,
          t: Date.now(),
          current: 180 + Math.random(),
          stopped: g.service.isLatched(assetId),
        });
        telemetrySamples += sample.length > 0 ? 1 : 0;
      }
    }
  }, 1_000 / options.hz);

  const random = mulberry32(options.seed);
  const wallMs = () => performance.timeOrigin + performance.now();
  const issuedAtMs = new Map<string, number>();
  const results: Promise<{ acked: unknown[]; missing: string[] }>[] = [];
  for (let i = 0; i < options.stops; i++) {
    const owner = Math.floor(random() * gateways.length);
    let origin = Math.floor(random() * (gateways.length - (options.allowLocal ? 0 : 1)));
    if (!options.allowLocal && origin >= owner) origin++;
    const assetId = gateways[owner]!.assets[Math.floor(random() * options.arms)]!;
    const reason = `bench-${i}`;
    issuedAtMs.set(reason, wallMs());
    results.push(
      gateways[origin]!.service.stop({ target: { kind: "asset", id: assetId }, reason }),
    );
    if ((i + 1) % 200 === 0) progress(`${i + 1}/${options.stops} stops issued`);
    await sleep(options.intervalMs);
  }
  const settled = await Promise.all(results);
  const actedAtMs = new Map<string, number>();
  await util.waitFor(
    () => {
      for (const g of gateways) {
        for (const stop of g.adapter.stops) {
          if (!actedAtMs.has(stop.reason)) actedAtMs.set(stop.reason, stop.atMs);
        }
      }
      return actedAtMs.size >= options.stops;
    },
    5_000,
    "every adapter stop",
  ).catch(() => {});
  clearInterval(telemetry);
  await util.stopAll(gateways);

  const latencies = [...issuedAtMs].flatMap(([reason, t0]) => {
    const t1 = actedAtMs.get(reason);
    return t1 === undefined ? [] : [t1 - t0];
  }).sort((a, b) => a - b);
  const p = (q: number) => {
    const v = quantile(latencies, q);
    return v === null ? null : round3(v);
  };
  const report: EstopBenchReport = {
    stops: options.stops,
    acked: settled.filter((r) => r.missing.length === 0 && r.acked.length > 0).length,
    lost: options.stops - latencies.length,
    p50_ms: p(0.5),
    p99_ms: p(0.99),
    max_ms: latencies.length ? round3(latencies.at(-1)!) : null,
    variant: "in-process",
    gateways: options.gateways,
    arms: options.gateways * options.arms,
    interval_ms: options.intervalMs,
    telemetry_samples: telemetrySamples,
  };
  printTable("E-stop latency, in-process variant", [
    ["variant", "e-stop services only, one Deno process, fake adapter"],
    ["stops", String(report.stops)],
    ["acked / lost", `${report.acked} / ${report.lost}`],
    ["latency p50 / p99 / max", `${report.p50_ms} / ${report.p99_ms} / ${report.max_ms} ms`],
    ["latency measured", "service stop() call → fake adapter stop, same process clock"],
  ]);
  return report;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
