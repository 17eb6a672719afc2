/**
 * Checks of a running testbed, each returning figures: LAN and cross-region reachability,
 * isolation (no path between regions outside the tunnel), mDNS multicast scope, WAN delay and
 * loss through the relay, and cut/heal timing.
 *
 * Run (on a running testbed): `scripts/deno.sh run -A scripts/testbed/verify.ts`
 *
 * @module
 */

import { assert } from "./errors.ts";
import { runIn, sleep } from "./exec.ts";
import { MDNS_GROUP } from "./probe.ts";
import { statePaths } from "./state.ts";
import { allHosts, type HostSpec, type RegionSpec, type Topology } from "./topology.ts";
import { cutRegion, healRegion, loadTopology, setWanConditions } from "./wan.ts";
import { CLEAN_CONDITIONS, type LinkConditions } from "./wan_relay.ts";

/** Figures of one ping run. */
export interface PingStats {
  sent: number;
  received: number;
  lossPct: number;
  rttMinMs: number;
  rttAvgMs: number;
  rttP50Ms: number;
  rttP99Ms: number;
  rttMaxMs: number;
  /** Epoch ms of each reply, in order (from `ping -D`). */
  replyAtMs: number[];
}

/** Most pings one call may send; keeps every check bounded in time. */
const PING_COUNT_MAX = 2000;

/**
 * Pings `ip` from namespace `ns`. `intervalS` below 0.2 needs root (the testbed runs as root).
 *
 * @example
 * ```ts
 * const stats = await ping("tm-r1-g1", "10.99.0.2", { count: 10, intervalS: 0.05 });
 * ```
 */
export async function ping(
  ns: string,
  ip: string,
  options: { count?: number; intervalS?: number; waitS?: number; deadlineS?: number } = {},
): Promise<PingStats> {
  const count = Math.min(options.count ?? 3, PING_COUNT_MAX);
  const intervalS = options.intervalS ?? 0.05;
  const argv = ["ping", "-D", "-n", "-q", "-c", String(count), "-i", String(intervalS)];
  argv.push("-W", String(options.waitS ?? 1));
  if (options.deadlineS !== undefined) argv.push("-w", String(options.deadlineS));
  // -q hides per-reply lines; drop it so RTT percentiles and reply times can be computed.
  argv.splice(argv.indexOf("-q"), 1);
  argv.push(ip);
  const timeoutMs = (count * intervalS + (options.waitS ?? 1) + 5) * 1000;
  const result = await runIn(ns, argv, { allowFailure: true, timeoutMs });
  return parsePing(result.stdout);
}

/** Parses `ping -D` output. Pure. */
export function parsePing(output: string): PingStats {
  const rtts: number[] = [];
  const replyAtMs: number[] = [];
  for (const match of output.matchAll(/^\[(\d+\.\d+)\].*time=([\d.]+) ms/gm)) {
    replyAtMs.push(Number(match[1]) * 1000);
    rtts.push(Number(match[2]));
  }
  const summary = output.match(/(\d+) packets transmitted, (\d+) received/);
  const sent = Number(summary?.[1] ?? 0);
  const received = Number(summary?.[2] ?? rtts.length);
  const sorted = [...rtts].sort((x, y) => x - y);
  const pick = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const avg = rtts.length === 0 ? NaN : rtts.reduce((s, x) => s + x, 0) / rtts.length;
  return {
    sent,
    received,
    lossPct: sent === 0 ? 100 : 100 * (1 - received / sent),
    rttMinMs: sorted[0] ?? NaN,
    rttAvgMs: avg,
    rttP50Ms: pick(0.5) ?? NaN,
    rttP99Ms: pick(0.99) ?? NaN,
    rttMaxMs: sorted[sorted.length - 1] ?? NaN,
    replyAtMs,
  };
}

/** True when one ping from `ns` to `ip` is answered within `waitS`. */
export async function reachable(ns: string, ip: string, waitS = 1): Promise<boolean> {
  const stats = await ping(ns, ip, { count: 1, waitS });
  return stats.received === 1;
}

/** One check's outcome. */
export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

/** Every host reaches every other host of its LAN, and every other region's hosts. */
export async function checkReachability(topology: Topology): Promise<CheckResult[]> {
  const hosts = allHosts(topology);
  const pairs: Array<[HostSpec, HostSpec]> = [];
  for (const from of hosts) {
    for (const to of hosts) if (from !== to) pairs.push([from, to]);
  }
  const outcomes = await Promise.all(pairs.map(async ([from, to]) => ({
    from,
    to,
    ok: await reachable(from.ns, to.lanIp, 2),
  })));
  const lanFailed = outcomes.filter((o) => o.from.regionIndex === o.to.regionIndex && !o.ok);
  const wanFailed = outcomes.filter((o) => o.from.regionIndex !== o.to.regionIndex && !o.ok);
  const lanPairs = outcomes.filter((o) => o.from.regionIndex === o.to.regionIndex).length;
  const label = (o: { from: HostSpec; to: HostSpec }) =>
    `${o.from.gatewayName}->${o.to.gatewayName}`;
  return [
    {
      name: "lan reachability",
      ok: lanFailed.length === 0,
      detail: `${lanPairs - lanFailed.length}/${lanPairs} pairs` +
        (lanFailed.length ? `; failed ${lanFailed.map(label).join(" ")}` : ""),
    },
    {
      name: "cross-region reachability (via tunnel)",
      ok: wanFailed.length === 0,
      detail: `${outcomes.length - lanPairs - wanFailed.length}/${outcomes.length - lanPairs} ` +
        `pairs` + (wanFailed.length ? `; failed ${wanFailed.map(label).join(" ")}` : ""),
    },
  ];
}

/**
 * No path between regions outside the tunnel: a router cannot reach another region's LAN
 * (the hub never forwards), and a non-tunnel host's route to another region goes via its
 * tunnel host.
 */
export async function checkIsolation(topology: Topology): Promise<CheckResult> {
  const problems: string[] = [];
  for (const region of topology.regions) {
    for (const other of topology.regions) {
      if (other === region) continue;
      const target = other.hosts[other.hosts.length - 1];
      assert(target !== undefined, "regions have hosts");
      if (await reachable(region.routerNs, target.lanIp, 0.3)) {
        problems.push(`${region.routerNs} reaches ${target.lanIp} outside the tunnel`);
      }
      const from = region.hosts[1];
      if (from !== undefined) {
        const route = (await runIn(from.ns, ["ip", "route", "get", target.lanIp])).stdout;
        if (!route.includes(`via ${region.hosts[0]?.lanIp}`)) {
          problems.push(`${from.ns} routes ${target.lanIp} not via its tunnel host: ${route}`);
        }
      }
    }
  }
  return {
    name: "isolation (regions only linked through the tunnel)",
    ok: problems.length === 0,
    detail: problems.length === 0
      ? "routers cannot cross; hosts route via g1"
      : problems.join("; "),
  };
}

/**
 * Sends a multicast probe from the first host of `region` and reports who heard it.
 */
export async function checkMulticastScope(
  topology: Topology,
  region: RegionSpec,
): Promise<CheckResult & { heardBy: string[] }> {
  const sender = region.hosts[0];
  assert(sender !== undefined, "region has hosts");
  const token = `t${Date.now()}`;
  const probe = new URL("./probe.ts", import.meta.url).pathname;
  const listeners = allHosts(topology).filter((h) => h !== sender);
  const listenMs = 2500;
  const started = listeners.map((host) => {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", host.ns, Deno.execPath(), "run", "-A", "--quiet", probe, "listen"]
        .concat(["--ms", String(listenMs), "--token", token, "--iface", host.lanIp]),
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(listenMs + 20_000),
    }).spawn();
    return { host, child, lines: readLines(child.stdout) };
  });
  // Wait for every listener to have joined the group before sending.
  await Promise.all(started.map(async ({ lines }) => {
    const first = await lines.next();
    assert(first.value === "ready", `probe listener printed ${JSON.stringify(first.value)}`);
  }));
  await runIn(
    sender.ns,
    [Deno.execPath(), "run", "-A", "--quiet", probe, "send"].concat(
      ["--from", sender.lanIp, "--token", token],
    ),
  );
  const heardBy: string[] = [];
  for (const { host, child, lines } of started) {
    const result = await lines.next();
    await child.status;
    const parsed = JSON.parse(String(result.value ?? "{}")) as {
      received?: Array<{ token: string }>;
    };
    if (parsed.received?.some((r) => r.token === token)) heardBy.push(host.gatewayName);
  }
  const sameLan = listeners.filter((h) => h.regionIndex === region.index).map((h) => h.gatewayName);
  const missing = sameLan.filter((name) => !heardBy.includes(name));
  const leaked = heardBy.filter((name) => !sameLan.includes(name));
  return {
    name: `mDNS multicast ${MDNS_GROUP} from ${sender.gatewayName} stays in ${region.name}`,
    ok: missing.length === 0 && leaked.length === 0,
    detail: `heard by [${heardBy.join(" ")}]` +
      (missing.length ? `; missing ${missing.join(" ")}` : "") +
      (leaked.length ? `; LEAKED to ${leaked.join(" ")}` : ""),
    heardBy,
  };
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    for (let index = buffer.indexOf("\n"); index >= 0; index = buffer.indexOf("\n")) {
      yield buffer.slice(0, index);
      buffer = buffer.slice(index + 1);
    }
  }
  if (buffer.length > 0) yield buffer;
}

/** Figures of a delay/loss measurement over the tunnel. */
export interface WanMeasurement extends PingStats {
  conditions: LinkConditions;
  /** Expected round-trip loss: 1 - (1 - p)^2. */
  expectedLossPct: number;
}

/**
 * Sets `conditions` on every WAN link, pings region 2's tunnel address from region 1's tunnel
 * host, and restores clean conditions.
 */
export async function measureWan(
  topology: Topology,
  conditions: LinkConditions,
  options: { count?: number; intervalS?: number } = {},
): Promise<WanMeasurement> {
  const [r1, r2] = topology.regions;
  assert(r1 !== undefined && r2 !== undefined, "measureWan needs two regions");
  const paths = statePaths();
  await setWanConditions(conditions, paths);
  // The relay re-reads its conditions every 100 ms.
  await sleep(300);
  try {
    const stats = await ping(r1.tunnel.ns, r2.tunnel.ip, {
      count: options.count ?? 30,
      intervalS: options.intervalS ?? 0.02,
      waitS: 2,
    });
    return {
      ...stats,
      conditions,
      expectedLossPct: 100 * (1 - (1 - conditions.loss) ** 2),
    };
  } finally {
    await setWanConditions({ ...CLEAN_CONDITIONS }, paths);
  }
}

/** Figures of a cut/heal measurement. */
export interface CutHealMeasurement {
  /** Ping replies across the cut region stopped within this many ms after the cut. */
  cutEffectMs: number;
  /** Replies resumed this many ms after the heal. */
  healEffectMs: number;
  /** A LAN ping inside the cut region kept working during the cut. */
  lanDuringCutOk: boolean;
  /** Cross-region ping during the cut was answered (must be false). */
  crossDuringCutOk: boolean;
}

/**
 * Cuts `region` for `cutMs` while a 10 ms ping runs from another region's second host (or
 * first) to `region`'s last host, and measures when replies stop and resume.
 */
export async function measureCutHeal(
  topology: Topology,
  region: RegionSpec,
  cutMs = 1000,
): Promise<CutHealMeasurement> {
  const other = topology.regions.find((r) => r !== region);
  assert(other !== undefined, "measureCutHeal needs two regions");
  const from = other.hosts[1] ?? other.hosts[0];
  const to = region.hosts[region.hosts.length - 1];
  const lanFrom = region.hosts[0];
  assert(from !== undefined && to !== undefined && lanFrom !== undefined, "hosts exist");
  const intervalS = 0.01;
  const leadMs = 300;
  const tailMs = 2000;
  const count = Math.round((leadMs + cutMs + tailMs) / (intervalS * 1000));
  const pinging = ping(from.ns, to.lanIp, { count, intervalS, waitS: 1 });
  await sleep(leadMs);
  const cutAtMs = Date.now();
  await cutRegion(region);
  const [lanDuringCutOk, crossDuringCutOk] = await Promise.all([
    region.hosts.length > 1 ? reachable(lanFrom.ns, to.lanIp, 1) : Promise.resolve(true),
    sleep(100).then(() => reachable(from.ns, to.lanIp, 0.5)),
  ]);
  await sleep(Math.max(0, cutMs - (Date.now() - cutAtMs)));
  const healAtMs = Date.now();
  await healRegion(region);
  const stats = await pinging;
  const lastBeforeCut = stats.replyAtMs.filter((t) => t < healAtMs).at(-1) ?? NaN;
  const firstAfterHeal = stats.replyAtMs.find((t) => t >= healAtMs) ?? NaN;
  return {
    cutEffectMs: Math.max(0, Math.round(lastBeforeCut - cutAtMs)),
    healEffectMs: Math.round(firstAfterHeal - healAtMs),
    lanDuringCutOk,
    crossDuringCutOk,
  };
}

/** Runs every check and prints a table; resolves to true when all pass. */
export async function verifyTestbed(topology: Topology): Promise<boolean> {
  const results: CheckResult[] = [];
  const report = (result: CheckResult) => {
    results.push(result);
    console.log(`${result.ok ? "PASS" : "FAIL"}  ${result.name}: ${result.detail}`);
  };
  for (const result of await checkReachability(topology)) report(result);
  report(await checkIsolation(topology));
  for (const region of topology.regions) report(await checkMulticastScope(topology, region));
  if (topology.regions.length > 1) {
    const base = await measureWan(topology, CLEAN_CONDITIONS);
    report({
      name: "baseline tunnel RTT",
      ok: base.received > 0,
      detail: fmtPing(base),
    });
    const delayed = await measureWan(topology, { delayMs: 40, jitterMs: 5, loss: 0 });
    report({
      name: "relay delay 40±5 ms one-way",
      ok: delayed.rttAvgMs > 75 && delayed.rttAvgMs < 100,
      detail: fmtPing(delayed) + ` (expected RTT ≈ 80 ms + baseline)`,
    });
    const lossy = await measureWan(topology, { delayMs: 0, jitterMs: 0, loss: 0.1 }, {
      count: 500,
      intervalS: 0.004,
    });
    report({
      name: "relay loss 10 % per direction",
      ok: Math.abs(lossy.lossPct - lossy.expectedLossPct) < 8,
      detail: `${lossy.lossPct.toFixed(1)} % round-trip loss over ${lossy.sent} pings ` +
        `(expected ${lossy.expectedLossPct.toFixed(1)} %)`,
    });
    const cut = topology.regions[1];
    assert(cut !== undefined, "two regions");
    const cutHeal = await measureCutHeal(topology, cut, 1000);
    report({
      name: `cut/heal ${cut.name}`,
      ok: !cutHeal.crossDuringCutOk && cutHeal.lanDuringCutOk && cutHeal.healEffectMs < 3000,
      detail: `replies stopped ≤ ${cutHeal.cutEffectMs} ms after cut, resumed ` +
        `${cutHeal.healEffectMs} ms after heal; LAN during cut ${
          cutHeal.lanDuringCutOk ? "ok" : "BROKEN"
        }; cross-region during cut ${cutHeal.crossDuringCutOk ? "LEAKED" : "blocked"}`,
    });
  }
  const failed = results.filter((r) => !r.ok).length;
  console.log(`${results.length - failed} passed, ${failed} failed`);
  return failed === 0;
}

function fmtPing(stats: PingStats): string {
  return `${stats.received}/${stats.sent} replies, RTT min/avg/p50/p99/max ` +
    [stats.rttMinMs, stats.rttAvgMs, stats.rttP50Ms, stats.rttP99Ms, stats.rttMaxMs]
      .map((x) => x.toFixed(2)).join("/") +
    " ms";
}

if (import.meta.main) {
  const ok = await verifyTestbed(await loadTopology());
  Deno.exit(ok ? 0 : 1);
}
