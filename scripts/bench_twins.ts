/**
 * `deno task bench twins`: write→visible latency of twin updates between the
 * gateways of one factory.
 *
 * Three gateway processes (20 simulated arms each, linked by configured peers
 * without mDNS) take setpoint commands over HTTP at 10 writes/s per arm (600/s
 * in all for 60 arms), each write posted to the next gateway in turn. A sample
 * of the writes (every `--sample-every`th) is followed on the two OTHER
 * gateways by `GET /twins/:id` until the field's HLC reaches the HLC the
 * writing gateway acknowledged. By default (`--read wait`) the first read is
 * immediate and later ones wait for the twin to change (`If-None-Match` +
 * `Prefer: wait`, as a dashboard would), so the answer leaves the gateway
 * when the write lands there; `--read poll` polls every `--poll-interval-ms`
 * instead, which adds up to one interval and one request's queueing to each
 * sample and load to the gateways ("lower bound" then ends at the send time
 * of the successful poll). The latency is from just before the POST is sent
 * until the read that shows the write has been answered, so it includes the
 * POST and the read's answer. Each (arm, field) is written only every
 * 400 ms, so a later write cannot stand in for the one being followed.
 *
 * Prints a table, then as the LAST stdout line
 * `{"update_p50_ms","update_p99_ms",…}`. Target: p99 ≤ 20 ms.
 *
 * Options: `--duration-s n` (30, of which the first `--warmup-s n` (5) are not
 * in the figures), `--rate n` writes/s in all (600), `--assets n`
 * per gateway (20), `--sample-every n` (10), `--read wait|poll` (wait),
 * `--poll-interval-ms n` (2),
 * `--telemetry-hz n` (10; the gateway default is 100), `--keep` (keep logs),
 * `--samples-out FILE` (one JSON line per followed write and observer:
 * `{"at_ms","warmup","writer","observer","twin","post_ms","visible_ms"}`,
 * `at_ms` from the run's start, `visible_ms` null when never seen; for
 * finding when slow samples happen, e.g. against `--trace-gc` output).
 *
 * @example
 * ```ts ignore
 * import { main } from "./bench_twins.ts";
 * await main(["--duration-s", "10"]);
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  delay,
  freePort,
  type GatewayProcess,
  getJson,
  spawnGateway,
  stopGateway,
  sumMetrics,
  waitReady,
} from "./mesh_processes.ts";
// What the twin service uses unless the gateway passes `publishIntervalMs` (it does not).
import { PUBLISH_INTERVAL_MS } from "../node/twin_service.ts";
import { ARM_SETPOINT_RANGES } from "../node/assets/simulated_arm.ts";
import { LOOP_LAG_WINDOW_S } from "../node/loop_lag.ts";

/** The report's JSON line. */
export interface TwinsBenchReport {
  update_p50_ms: number | null;
  update_p99_ms: number | null;
  /** Poll mode only: the successful poll's send time instead of its answer. */
  update_lower_p99_ms: number | null;
  /** How observers read (`--read`). */
  read_mode: "wait" | "poll";
  post_p99_ms: number | null;
  poll_rtt_p50_ms: number | null;
  writes: number;
  write_errors: number;
  write_rate_per_s: number;
  samples: number;
  not_visible: number;
  publish_interval_ms: number;
  telemetry_hz: number;
  gateway_cpu_cores: number | null;
  /** Gateway CPU (all three) per acknowledged write after the warm-up. */
  gateway_cpu_ms_per_write: number | null;
  load_average: number | null;
  /** Twin sync sessions started by all gateways (gossip gaps, reconnects, anti-entropy). */
  sync_sessions: number | null;
  /**
   * Worst event-loop lag any gateway reported after the warm-up (its 10 s
   * maximum, sampled); null when the run after the warm-up is shorter than 10 s.
   */
  loop_lag_max_ms: number | null;
  /** Bytes the gateways caused to be written to disk, per gateway per second (/proc/<pid>/io). */
  disk_write_mb_per_s: number | null;
  /**
   * Time the gateways' event-loop threads spent runnable but waiting for a
   * core, per unit of CPU time they got, after the warm-up
   * (`/proc/<pid>/schedstat`): 0 on an idle host; 0.5 means every
   * millisecond of work was preceded, on average, by half a millisecond of
   * waiting for a core. Null where schedstat is missing.
   */
  loop_thread_runqueue_wait_per_cpu: number | null;
}

const GATEWAYS = 3;
const SETPOINTS = ["weldCurrentA", "weldVoltageV", "wireFeedMps", "travelSpeedMmps"] as const;
/**
 * Values step through what the simulated arms accept (tighter than the twin
 * model's ranges), as an operator's would: a refused setpoint is logged as a
 * warning by its owner, and a bench that wrote a quarter of its values out of
 * range measured that logging too.
 */
function setpointValue(setpoint: string, round: number): number {
  const [low, high] = ARM_SETPOINT_RANGES[setpoint]!;
  return low + ((round % 200) / 200) * (high - low);
}
/** Writes are issued in ticks of this length (6 per tick at 600/s). */
const TICK_MS = 10;
/** POSTs in flight at most: beyond this the writer is behind and says so. */
const MAX_WRITES_IN_FLIGHT = 64;
/** A sampled write not visible after this long counts as not visible. */
const VISIBLE_TIMEOUT_MS = 5_000;
/**
 * Writes in the first seconds (`--warmup-s`) are followed like the others
 * but kept out of the figures: connections and the JIT warm up, on the
 * write path and on the polled read path alike. Under the full load from a
 * standing start the gateways take 2-3 s to catch up (p50 of 100-200 ms in
 * the first two seconds); the table shows that window on its own row.
 */
const DEFAULT_WARMUP_S = 5;

interface Sample {
  /** Write issue → the first read that shows it, answered. */
  visibleMs: number;
  /**
   * Write issue → that read sent, for an immediate read (the write was
   * visible no later than the gateway saw the read); null for a waiting read.
   */
  lowerMs: number | null;
}

/** One line of `--samples-out`. */
interface SampleRecord {
  /** Issue time of the write, from the run's start. */
  at_ms: number;
  warmup: boolean;
  writer: string;
  observer: string;
  twin: string;
  post_ms: number;
  /** Null when the write was never seen on the observer. */
  visible_ms: number | null;
}

interface Options {
  durationS: number;
  warmupS: number;
  rate: number;
  assets: number;
  sampleEvery: number;
  /** How observers read: `wait` for the twin to change, or `poll`. */
  read: "wait" | "poll";
  pollIntervalMs: number;
  telemetryHz: number;
  keep: boolean;
  samplesOut: string | undefined;
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args: args.filter((a) => a !== "twins"),
    options: {
      "duration-s": { type: "string", default: "30" },
      "warmup-s": { type: "string", default: String(DEFAULT_WARMUP_S) },
      rate: { type: "string", default: "600" },
      assets: { type: "string", default: "20" },
      "sample-every": { type: "string", default: "10" },
      read: { type: "string", default: "wait" },
      "poll-interval-ms": { type: "string", default: "2" },
      "telemetry-hz": { type: "string", default: "10" },
      keep: { type: "boolean", default: false },
      "samples-out": { type: "string" },
    },
  });
  const number = (name: string, text: string, min: number) => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < min) {
      throw new Error(`--${name}: expected a number >= ${min}, got ${JSON.stringify(text)}`);
    }
    return value;
  };
  const durationS = number("duration-s", values["duration-s"], 3);
  const warmupS = number("warmup-s", values["warmup-s"], 0);
  if (warmupS >= durationS) {
    throw new Error(`--warmup-s (${warmupS}) must be shorter than --duration-s (${durationS})`);
  }
  const read = values.read;
  if (read !== "wait" && read !== "poll") {
    throw new Error(`--read: expected wait or poll, got ${JSON.stringify(read)}`);
  }
  return {
    durationS,
    warmupS,
    read,
    rate: number("rate", values.rate, 1),
    assets: number("assets", values.assets, 1),
    sampleEvery: number("sample-every", values["sample-every"], 1),
    pollIntervalMs: number("poll-interval-ms", values["poll-interval-ms"], 0),
    telemetryHz: number("telemetry-hz", values["telemetry-hz"], 0.1),
    keep: values.keep,
    samplesOut: values["samples-out"],
  };
}

function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return round(sorted[Math.max(0, index)]!);
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

function startGateways(dir: string, factory: string, options: Options): GatewayProcess[] {
  const ports = Array.from({ length: GATEWAYS }, () => freePort());
  return ports.map((listenPort, i) =>
    spawnGateway({
      name: `b${i}`,
      factory,
      region: "bench",
      dataDir: join(dir, `b${i}`),
      listenPort,
      httpPort: freePort(),
      // Each links to the ones before it: a full mesh without mDNS.
      peers: ports.slice(0, i).map((port) => `/ip4/127.0.0.1/tcp/${port}`),
      extraArgs: [
        "--no-mdns",
        "--assets",
        String(options.assets),
        "--telemetry-hz",
        String(options.telemetryHz),
        "--log-level",
        "warn",
      ],
      logFile: join(dir, `b${i}.log`),
    })
  );
}

async function waitMeshed(gateways: readonly GatewayProcess[], twins: number): Promise<void> {
  const deadline = performance.now() + 30_000;
  for (;;) {
    const views = await Promise.all(gateways.map(async (g) => ({
      peers: (await getJson<unknown[]>(g, "/peers")).length,
      twins: (await getJson<unknown[]>(g, "/twins")).length,
    })));
    if (views.every((v) => v.peers === GATEWAYS - 1 && v.twins === twins)) return;
    if (performance.now() > deadline) {
      throw new Error(`gateways not meshed after 30 s: ${JSON.stringify(views)}`);
    }
    await delay(100);
  }
}

interface TwinField {
  hlc: string;
}

/**
 * Reads `field` of `id` on `gateway` until its HLC is >= `hlc`; null after
 * the timeout. `wait`: the first read is immediate, later ones wait for the
 * twin to change (`If-None-Match` + `Prefer: wait`), so the answer leaves the
 * gateway as soon as the write lands there. `poll`: a read every
 * `pollIntervalMs`. `immediateRtts` gets the round trip of every read that
 * was not asked to wait.
 */
async function followOn(
  gateway: GatewayProcess,
  id: string,
  field: string,
  hlc: string,
  issuedAt: number,
  options: Pick<Options, "read" | "pollIntervalMs">,
  immediateRtts: number[],
): Promise<Sample | null> {
  const deadline = issuedAt + VISIBLE_TIMEOUT_MS;
  let etag: string | null = null;
  while (performance.now() < deadline) {
    const waits = options.read === "wait" && etag !== null;
    const leftS = ((deadline - performance.now()) / 1000).toFixed(1);
    const headers: Record<string, string> = waits
      ? { "if-none-match": etag!, prefer: `wait=${leftS}` }
      : {};
    const sentAt = performance.now();
    const response = await fetch(`${gateway.http}/twins/${id}`, { headers });
    if (response.status === 304) {
      await response.body?.cancel();
      continue; // the wait ran out without a change
    }
    if (response.status !== 200) {
      // Refused (503: too many waiting) or failing: read again a little later.
      await response.body?.cancel();
      etag = null;
      await delay(Math.max(options.pollIntervalMs, 10));
      continue;
    }
    const view = await response.json() as { fields?: Record<string, TwinField> };
    const answeredAt = performance.now();
    if (!waits) immediateRtts.push(answeredAt - sentAt);
    etag = response.headers.get("etag");
    const seen = view.fields?.[field]?.hlc;
    if (seen !== undefined && seen >= hlc) {
      return { visibleMs: answeredAt - issuedAt, lowerMs: waits ? null : sentAt - issuedAt };
    }
    if (options.read === "poll") {
      const waitMs = sentAt + options.pollIntervalMs - performance.now();
      if (waitMs > 0) await delay(waitMs);
    }
  }
  return null;
}

/** CPU seconds (user + system) a process has used so far; null where /proc is missing. */
function cpuSeconds(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticksPerS = 100; // USER_HZ on Linux
    return (Number(fields[11]) + Number(fields[12])) / ticksPerS;
  } catch {
    return null;
  }
}

/**
 * Nanoseconds the main (event-loop) threads of `pids` have run and have
 * waited on a run queue so far, summed (`/proc/<pid>/schedstat` is the thread
 * whose id is the process id); null where schedstat is missing.
 */
function loopThreadsSchedstat(pids: readonly number[]): { runNs: number; waitNs: number } | null {
  const sum = { runNs: 0, waitNs: 0 };
  for (const pid of pids) {
    try {
      const [runNs, waitNs] = Deno.readTextFileSync(`/proc/${pid}/schedstat`).split(" ").map(
        Number,
      );
      if (!Number.isFinite(runNs) || !Number.isFinite(waitNs)) return null;
      sum.runNs += runNs!;
      sum.waitNs += waitNs!;
    } catch {
      return null;
    }
  }
  return sum;
}

/** Bytes a process has caused to be written to storage so far; null where /proc is missing. */
function writeBytes(pid: number): number | null {
  try {
    const match = /^write_bytes:\s*(\d+)$/m.exec(Deno.readTextFileSync(`/proc/${pid}/io`));
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** `read` summed over processes; null when it fails for any of them. */
function total(pids: readonly number[], read: (pid: number) => number | null): number | null {
  let sum = 0;
  for (const pid of pids) {
    const value = read(pid);
    if (value === null) return null;
    sum += value;
  }
  return sum;
}

/** 1-minute load average of the host (other processes compete for the same cores). */
function loadAverage(): number | null {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return null;
  }
}

interface RunResult {
  samples: Sample[];
  /** Write→visible of the followed writes during the warm-up (not in the figures). */
  warmupVisibleMs: number[];
  warmupNotVisible: number;
  postMs: number[];
  pollRtts: number[];
  writes: number;
  /** Writes issued after the warm-up. */
  recordedWrites: number;
  writeErrors: number;
  notVisible: number;
  behindTicks: number;
  elapsedS: number;
  /** Length of the window after the warm-up that CPU and disk figures cover. */
  usageS: number;
  /** CPU seconds the gateways / this process used after the warm-up. */
  gatewayCpuS: number | null;
  gatewayWriteBytes: number | null;
  benchCpuS: number | null;
  /** Run-queue wait per CPU time of the gateways' event-loop threads after the warm-up. */
  loopThreadWaitPerCpu: number | null;
  loadAverage: number | null;
  counters: Record<string, number> | null;
  loopLagMaxMs: number | null;
  /** Every followed sample, for `--samples-out`; empty without it. */
  sampleRecords: SampleRecord[];
}

/** Issues writes at the aggregate rate for the duration; follows every `sampleEvery`th. */
async function run(gateways: readonly GatewayProcess[], options: Options): Promise<RunResult> {
  const arms = gateways.flatMap((g) =>
    Array.from({ length: options.assets }, (_, i) => `${g.spec.name}.arm-${i}`)
  );
  const result: RunResult = {
    samples: [],
    warmupVisibleMs: [],
    warmupNotVisible: 0,
    postMs: [],
    pollRtts: [],
    writes: 0,
    recordedWrites: 0,
    writeErrors: 0,
    notVisible: 0,
    behindTicks: 0,
    elapsedS: 0,
    usageS: 0,
    gatewayCpuS: null,
    gatewayWriteBytes: null,
    benchCpuS: null,
    loopThreadWaitPerCpu: null,
    loadAverage: null,
    counters: null,
    loopLagMaxMs: null,
    sampleRecords: [],
  };
  const gatewayPids = gateways.map((g) => g.child.pid);
  const usage = () => {
    const loopThreads = loopThreadsSchedstat(gatewayPids);
    return {
      atMs: performance.now(),
      gatewayCpuS: total(gatewayPids, cpuSeconds),
      gatewayWriteBytes: total(gatewayPids, writeBytes),
      benchCpuS: cpuSeconds(Deno.pid),
      loopRunNs: loopThreads?.runNs ?? null,
      loopWaitNs: loopThreads?.waitNs ?? null,
    };
  };
  // CPU and disk figures cover the same window as the latency figures.
  let usageBefore: ReturnType<typeof usage> | undefined;
  const follows: Promise<void>[] = [];
  let inFlight = 0;
  let seq = 0;
  const startedAt = performance.now();
  const write = async (index: number, followed: boolean, recorded: boolean) => {
    const pass = Math.floor(index / arms.length);
    const id = arms[index % arms.length]!;
    const setpoint = SETPOINTS[pass % SETPOINTS.length]!;
    const writer = gateways[(index + pass) % gateways.length]!;
    const value = setpointValue(setpoint, pass);
    const issuedAt = performance.now();
    inFlight++;
    let hlc: string;
    try {
      const response = await fetch(`${writer.http}/twins/${id}/commands`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ setpoints: { [setpoint]: value } }),
      });
      const body = await response.json() as { hlc?: string };
      if (response.status !== 202 || typeof body.hlc !== "string") {
        result.writeErrors++;
        return;
      }
      hlc = body.hlc;
    } catch {
      result.writeErrors++;
      return;
    } finally {
      inFlight--;
    }
    result.writes++;
    if (recorded) result.recordedWrites++;
    if (!followed) return;
    const postMs = performance.now() - issuedAt;
    if (recorded) result.postMs.push(postMs);
    const field = `setpoints.${setpoint}`;
    const pollRtts = recorded ? result.pollRtts : [];
    for (const observer of gateways) {
      if (observer === writer) continue;
      follows.push(
        followOn(observer, id, field, hlc, issuedAt, options, pollRtts)
          .then((sample) => {
            if (options.samplesOut) {
              result.sampleRecords.push({
                at_ms: round(issuedAt - startedAt),
                warmup: !recorded,
                writer: writer.spec.name,
                observer: observer.spec.name,
                twin: id,
                post_ms: round(postMs),
                visible_ms: sample ? round(sample.visibleMs) : null,
              });
            }
            if (!recorded) {
              if (sample) result.warmupVisibleMs.push(sample.visibleMs);
              else result.warmupNotVisible++;
              return;
            }
            if (sample) result.samples.push(sample);
            else result.notVisible++;
          }),
      );
    }
  };
  // A gateway's lag figure is the maximum of its last LOOP_LAG_WINDOW_S
  // seconds: only samples whose window lies wholly after the warm-up count
  // (the warm-up's catching up reaches ~100 ms and would hide the run's).
  const lagCountsFrom = startedAt + (options.warmupS + LOOP_LAG_WINDOW_S) * 1000;
  const sampleLag = async () => {
    const takenAt = performance.now();
    const ms = await worstLoopLag(gateways);
    if (ms !== null && takenAt >= lagCountsFrom) {
      result.loopLagMaxMs = Math.max(result.loopLagMaxMs ?? 0, ms);
    }
  };
  const lagSampler = setInterval(() => void sampleLag(), LOOP_LAG_SAMPLE_MS);
  const endAt = startedAt + options.durationS * 1000;
  const writesPerMs = options.rate / 1000;
  const pending: Promise<void>[] = [];
  for (let tick = 0;; tick++) {
    const tickAt = startedAt + tick * TICK_MS;
    if (tickAt >= endAt) break;
    const waitMs = tickAt - performance.now();
    if (waitMs > 0) await delay(waitMs);
    const due = Math.floor((tick + 1) * TICK_MS * writesPerMs);
    if (inFlight > MAX_WRITES_IN_FLIGHT) {
      result.behindTicks++;
      continue; // the gateways do not keep up: skip (counted) instead of queueing without bound
    }
    const warm = performance.now() - startedAt >= options.warmupS * 1000;
    if (warm) usageBefore ??= usage();
    for (; seq < due; seq++) {
      pending.push(write(seq, seq % options.sampleEvery === 0, warm));
    }
  }
  await Promise.all(pending);
  clearInterval(lagSampler);
  await sampleLag(); // the last seconds of the run
  result.elapsedS = (performance.now() - startedAt) / 1000;
  const usageAfter = usage();
  if (usageBefore) {
    const { atMs, ...before } = usageBefore;
    const spent = (key: keyof typeof before) => {
      const [from, to] = [before[key], usageAfter[key]];
      return from === null || to === null ? null : to - from;
    };
    result.usageS = (usageAfter.atMs - atMs) / 1000;
    result.gatewayCpuS = spent("gatewayCpuS");
    result.gatewayWriteBytes = spent("gatewayWriteBytes");
    result.benchCpuS = spent("benchCpuS");
    const [runNs, waitNs] = [spent("loopRunNs"), spent("loopWaitNs")];
    result.loopThreadWaitPerCpu = runNs === null || waitNs === null || runNs === 0
      ? null
      : Math.round((waitNs / runNs) * 100) / 100;
  }
  await Promise.all(follows);
  result.loadAverage = loadAverage();
  result.counters = await twinCounters(gateways);
  return result;
}

/** Each gateway's lag figure covers its last 10 s; sampling more often than that misses nothing. */
const LOOP_LAG_SAMPLE_MS = 5_000;

/** The worst `eventLoopLagMaxMs` the gateways report now; null when one cannot be read. */
async function worstLoopLag(gateways: readonly GatewayProcess[]): Promise<number | null> {
  try {
    const stats = await Promise.all(
      gateways.map((g) => getJson<{ stats: { eventLoopLagMaxMs?: number } }>(g, "/status")),
    );
    return Math.max(...stats.map((s) => s.stats.eventLoopLagMaxMs ?? 0));
  } catch {
    return null;
  }
}

/** Gateway counters that explain the figures, summed over the gateways (from `GET /metrics`). */
const EXPLAINING_COUNTERS = [
  "twinmesh_twins_sync_sessions",
  "twinmesh_twins_gossip_changes_parked",
  "twinmesh_twins_dropped_invalid",
  "twinmesh_twins_epochs_started",
  "twinmesh_twins_gossip_changes_applied",
  "twinmesh_twins_changes_committed",
  "twinmesh_twins_compactions",
  "twinmesh_twins_persisted_chunks",
] as const;

async function twinCounters(
  gateways: readonly GatewayProcess[],
): Promise<Record<string, number> | null> {
  const wanted = new RegExp(`^(${EXPLAINING_COUNTERS.join("|")})$`);
  const found = await sumMetrics(gateways, wanted).catch(() => null);
  if (found === null) return null;
  // A counter a gateway does not export shows as NaN, not as zero.
  return Object.fromEntries(EXPLAINING_COUNTERS.map((name) => [name, found[name] ?? NaN]));
}

function printTable(result: RunResult, options: Options): void {
  const sorted = (values: number[]) => [...values].sort((a, b) => a - b);
  const visible = sorted(result.samples.map((s) => s.visibleMs));
  const rows: Array<[string, number[]]> = [
    ["write→visible on another gateway", visible],
    ...(options.read === "poll"
      ? [["  lower bound (successful poll sent)", lowerBounds(result)] as [string, number[]]]
      : []),
    ["POST /commands round trip", sorted(result.postMs)],
    ["immediate GET /twins/:id round trip", sorted(result.pollRtts)],
    [
      `warm-up: write→visible, first ${options.warmupS} s (not above)`,
      sorted(result.warmupVisibleMs),
    ],
  ];
  console.log(
    `\n# twins bench: ${GATEWAYS} gateways × ${options.assets} arms, ` +
      `${options.rate} writes/s for ${options.durationS} s (${options.warmupS} s warm-up), ` +
      `telemetry ${options.telemetryHz} Hz, ` +
      (options.read === "poll"
        ? `reads poll every ${options.pollIntervalMs} ms`
        : "reads wait for a change"),
  );
  console.log("| ms | n | p50 | p90 | p99 | max |");
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const [name, values] of rows) {
    console.log(
      `| ${name} | ${values.length} | ${percentile(values, 50)} | ${percentile(values, 90)} | ` +
        `${percentile(values, 99)} | ${percentile(values, 100)} |`,
    );
  }
  console.log("");
  console.log("| count | value |");
  console.log("| --- | --- |");
  console.log(`| writes acknowledged | ${result.writes} |`);
  console.log(`| write errors | ${result.writeErrors} |`);
  console.log(`| achieved writes/s | ${round(result.writes / result.elapsedS)} |`);
  console.log(`| writer ticks skipped (gateways behind) | ${result.behindTicks} |`);
  console.log(`| samples (write × other gateway) | ${result.samples.length} |`);
  console.log(
    `| not visible within ${VISIBLE_TIMEOUT_MS} ms (in the warm-up) | ${result.notVisible} ` +
      `(${result.warmupNotVisible}) |`,
  );
  console.log(`| twin publish interval (gateway default) | ${PUBLISH_INTERVAL_MS} ms |`);
  const perS = (cpuS: number | null) => perSecond(cpuS, result) ?? "n/a";
  console.log(`| after the warm-up: | |`);
  console.log(`| gateway CPU, cores busy (all ${GATEWAYS}) | ${perS(result.gatewayCpuS)} |`);
  console.log(
    `| gateway CPU per acknowledged write | ${cpuMsPerWrite(result) ?? "n/a"} ms |`,
  );
  console.log(`| bench process CPU, cores busy | ${perS(result.benchCpuS)} |`);
  console.log(
    `| gateway event-loop threads: run-queue wait per ms of CPU | ${
      result.loopThreadWaitPerCpu ?? "n/a"
    } ms |`,
  );
  console.log(`| disk writes per gateway | ${diskMbPerS(result) ?? "n/a"} MB/s |`);
  console.log(
    `| worst gateway event-loop lag after the warm-up | ${result.loopLagMaxMs ?? "n/a"} ms |`,
  );
  for (const [name, value] of Object.entries(result.counters ?? {})) {
    console.log(`| ${name} (all gateways) | ${value} |`);
  }
  console.log(
    `| host cores / 1-min load average at the end | ${navigator.hardwareConcurrency} / ${
      result.loadAverage ?? "n/a"
    } |`,
  );
}

/** Write issue → successful immediate read sent, sorted (poll mode). */
function lowerBounds(result: RunResult): number[] {
  return result.samples.flatMap((s) => s.lowerMs === null ? [] : [s.lowerMs]).sort((a, b) => a - b);
}

/** Gateway CPU (all three) per write after the warm-up, in ms to 0.01 (changes of a few % show). */
function cpuMsPerWrite(result: RunResult): number | null {
  if (result.gatewayCpuS === null || result.recordedWrites === 0) return null;
  return Math.round((result.gatewayCpuS * 100_000) / result.recordedWrites) / 100;
}

/** `amount` per second of the window after the warm-up. */
function perSecond(amount: number | null, result: RunResult): number | null {
  return amount === null || result.usageS <= 0 ? null : round(amount / result.usageS);
}

function diskMbPerS(result: RunResult): number | null {
  const bytesPerS = perSecond(result.gatewayWriteBytes, result);
  return bytesPerS === null ? null : Math.round((bytesPerS / GATEWAYS / 1e6) * 100) / 100;
}

/** Entry point for the bench dispatcher and for direct runs. */
export async function main(args: string[]): Promise<TwinsBenchReport> {
  const options = parseOptions(args);
  const dir = Deno.makeTempDirSync({ prefix: "twinmesh-bench-twins-" });
  const factory = `bench-twins-${crypto.randomUUID().slice(0, 6)}`;
  const gateways = startGateways(dir, factory, options);
  let result: RunResult;
  try {
    await Promise.all(gateways.map((g) => waitReady(g, 30_000)));
    await waitMeshed(gateways, GATEWAYS * options.assets);
    result = await run(gateways, options);
  } finally {
    await Promise.all(gateways.map((g) => stopGateway(g)));
    if (options.keep) console.error(`bench twins: logs in ${dir}`);
    else Deno.removeSync(dir, { recursive: true });
  }
  printTable(result, options);
  if (options.samplesOut) {
    const records = result.sampleRecords.sort((a, b) => a.at_ms - b.at_ms);
    Deno.writeTextFileSync(
      options.samplesOut,
      records.map((r) => `${JSON.stringify(r)}\n`).join(""),
    );
    console.error(`bench twins: ${records.length} samples in ${options.samplesOut}`);
  }
  const visible = result.samples.map((s) => s.visibleMs).sort((a, b) => a - b);
  const report: TwinsBenchReport = {
    update_p50_ms: percentile(visible, 50),
    update_p99_ms: percentile(visible, 99),
    read_mode: options.read,
    update_lower_p99_ms: options.read === "poll" ? percentile(lowerBounds(result), 99) : null,
    post_p99_ms: percentile([...result.postMs].sort((a, b) => a - b), 99),
    poll_rtt_p50_ms: percentile([...result.pollRtts].sort((a, b) => a - b), 50),
    writes: result.writes,
    write_errors: result.writeErrors,
    write_rate_per_s: round(result.writes / result.elapsedS),
    samples: result.samples.length,
    not_visible: result.notVisible,
    publish_interval_ms: PUBLISH_INTERVAL_MS,
    telemetry_hz: options.telemetryHz,
    gateway_cpu_cores: perSecond(result.gatewayCpuS, result),
    gateway_cpu_ms_per_write: cpuMsPerWrite(result),
    load_average: result.loadAverage,
    sync_sessions: result.counters?.twinmesh_twins_sync_sessions ?? null,
    loop_lag_max_ms: result.loopLagMaxMs,
    disk_write_mb_per_s: diskMbPerS(result),
    loop_thread_runqueue_wait_per_cpu: result.loopThreadWaitPerCpu,
  };
  console.log(JSON.stringify(report));
  return report;
}

if (import.meta.main) {
  await main(Deno.args);
}
