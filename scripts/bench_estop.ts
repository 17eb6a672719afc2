/**
 * E-stop latency benchmark, in-process variant: 10 libp2p gateways (TCP on
 * 127.0.0.1, Noise, Yamux) in one Deno process, 10 simulated arms each with
 * 100 Hz telemetry generated locally, and 1,000 stops from random gateways to
 * random assets, one every `--interval-ms` (default 5).
 *
 * Latency is origin issue → owner adapter stop, on the same host clock
 * (`performance.timeOrigin + performance.now()`). The last stdout line is
 * `{"stops","acked","lost","p50_ms","p99_ms","max_ms", ...}`.
 *
 * The multi-process variant against the gateway binary (mod.ts) is to follow
 * once it exists.
 *
 * @example
 * ```sh
 * scripts/deno.sh run -A scripts/bench_estop.ts --stops 1000 --interval-ms 5
 * ```
 */
import {
  connectAll,
  createTestGateway,
  stopAll,
  TestDirectory,
  type TestGateway,
  waitFor,
  waitForLinks,
} from "../tests/estop_test_util.ts";
import type { EstopResult } from "../node/estop_service.ts";

const args = parseArgs(Deno.args);
const GATEWAYS = args.gateways ?? 10;
const ARMS_PER_GATEWAY = args.arms ?? 10;
const TELEMETRY_HZ = 100;
const STOPS = args.stops ?? 1_000;
const INTERVAL_MS = args["interval-ms"] ?? 5;
const SEED = args.seed ?? 1;

function parseArgs(argv: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i]?.replace(/^--/, "");
    const value = Number(argv[i + 1]);
    if (!key || !Number.isFinite(value)) throw new Error(`bad argument ${argv[i]} ${argv[i + 1]}`);
    out[key] = value;
  }
  return out;
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

const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const directory = new TestDirectory();
const gateways: TestGateway[] = [];
for (let i = 0; i < GATEWAYS; i++) {
  gateways.push(
    await createTestGateway({
      name: `gw-${i}`,
      directory,
      assetCount: ARMS_PER_GATEWAY,
      start: false,
      init: {
        ackDeadlineMs: 2_000,
        ...(args["ping-ms"]
          ? { pingIntervalMs: args["ping-ms"], linkTimeoutMs: 5 * args["ping-ms"] }
          : {}),
      },
    }),
  );
}
await Promise.all(gateways.map((g) => g.service.start()));
await connectAll(gateways);
await waitForLinks(gateways, 10_000);

// Simulated telemetry: every arm produces a sample at 100 Hz (encoded, checksummed).
let telemetrySamples = 0;
const telemetry = setInterval(() => {
  for (const g of gateways) {
    for (const assetId of g.assets) {
      const sample = JSON.stringify({
        assetId,
        t: Date.now(),
        current: 180 + Math.random(),
        voltage: 24 + Math.random(),
        stopped: g.service.isLatched(assetId),
      });
      telemetrySamples += sample.length > 0 ? 1 : 0;
    }
  }
}, 1_000 / TELEMETRY_HZ);

// Event-loop lag probe: how late a 1 ms timer fires (in-process, every gateway shares one loop).
const lagsMs: number[] = [];
let lagExpectedAtMs = performance.now() + 1;
const lagProbe = setInterval(() => {
  const nowMs = performance.now();
  lagsMs.push(Math.max(0, nowMs - lagExpectedAtMs));
  lagExpectedAtMs = nowMs + 1;
}, 1);

const random = mulberry32(SEED);
const issuedAtMs = new Map<string, number>();
const results: Promise<EstopResult>[] = [];
for (let i = 0; i < STOPS; i++) {
  const origin = gateways[Math.floor(random() * gateways.length)]!;
  const owner = gateways[Math.floor(random() * gateways.length)]!;
  const assetId = owner.assets[Math.floor(random() * owner.assets.length)]!;
  const reason = `bench-${i}`;
  issuedAtMs.set(reason, wallMs());
  results.push(origin.service.stop({ target: { kind: "asset", id: assetId }, reason }));
  await sleep(INTERVAL_MS);
}
const settled = await Promise.all(results);
const actedAtMs = new Map<string, number>();
await waitFor(
  () => {
    actedAtMs.clear();
    for (const g of gateways) {
      for (const stop of g.adapter.stops) {
        if (!actedAtMs.has(stop.reason)) actedAtMs.set(stop.reason, stop.atMs);
      }
    }
    return actedAtMs.size >= STOPS;
  },
  5_000,
  "every adapter stop",
).catch(() => {});
clearInterval(telemetry);
clearInterval(lagProbe);
lagsMs.sort((a, b) => a - b);

const latenciesMs = [...issuedAtMs].flatMap(([reason, t0]) => {
  const t1 = actedAtMs.get(reason);
  return t1 === undefined ? [] : [t1 - t0];
}).sort((a, b) => a - b);
const acked = settled.filter((r) => r.missing.length === 0 && r.acked.length > 0).length;
const quantile = (q: number) =>
  latenciesMs.length === 0
    ? NaN
    : latenciesMs[Math.min(latenciesMs.length - 1, Math.floor(q * latenciesMs.length))]!;
const round = (x: number) => Math.round(x * 1000) / 1000;
const stats = gateways.map((g) => g.service.stats());
const sum = (key: string) => stats.reduce((n, s) => n + (s[key] ?? 0), 0);
await stopAll(gateways);

console.log(JSON.stringify({
  stops: STOPS,
  acked,
  lost: STOPS - latenciesMs.length,
  p50_ms: round(quantile(0.5)),
  p99_ms: round(quantile(0.99)),
  max_ms: round(latenciesMs.at(-1) ?? NaN),
  variant: "in-process",
  gateways: GATEWAYS,
  arms: GATEWAYS * ARMS_PER_GATEWAY,
  interval_ms: INTERVAL_MS,
  telemetry_samples: telemetrySamples,
  retries: sum("retries_sent"),
  duplicates: sum("stops_duplicate"),
  loop_lag_p99_ms: round(lagsMs[Math.floor(0.99 * lagsMs.length)] ?? NaN),
  loop_lag_max_ms: round(lagsMs.at(-1) ?? NaN),
}));
Deno.exit(0);
