/**
 * Sets up the multi-region testbed (see `topology.ts` for the address plan). Idempotent: it
 * tears down any leftovers first. Installs nothing: when a tool is missing it says which apt
 * command to run (`scripts/testbed/install.sh` does it).
 *
 * Run: `scripts/deno.sh run -A scripts/testbed/setup.ts [--regions 3] [--hosts 3] [--seed 1]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  DAEMON_READY_TIMEOUT_MS,
  HOST_LAN_IF,
  HOST_MGMT_IF,
  ROUTER_LAN_BRIDGE,
  ROUTER_WAN_IF,
  WG_KEEPALIVE_S,
} from "./constants.ts";
import { TestbedTimeoutError, TestbedUnavailableError } from "./errors.ts";
import { hasProgram, ipBatch, run, runIn, sleep } from "./exec.ts";
import { acquireTestbedLock } from "./lock.ts";
import { isAlive, spawnProcess } from "./procs.ts";
import { type StatePaths, statePaths, writeJsonAtomic } from "./state.ts";
import { teardownTestbed } from "./teardown.ts";
import {
  allNamespaces,
  buildTopology,
  regionByIndex,
  type RegionSpec,
  type Topology,
  type TopologyInit,
} from "./topology.ts";
import { CLEAN_CONDITIONS, type RelayConfig, type WanConditions } from "./wan_relay.ts";

/** Options of {@link setupTestbed}. */
export interface SetupOptions extends TopologyInit {
  /** Seed of the relay's loss and jitter draws (default 1). */
  seed?: number;
  /** Initial WAN conditions (default: clean). */
  conditions?: WanConditions;
  /** Skip waiting for the WireGuard handshakes (default false). */
  skipHandshakeWait?: boolean;
}

/** The testbed as recorded in `testbed.json`. */
export interface TestbedRecord {
  regions: number;
  hostsPerRegion: number;
  seed: number;
  createdAtMs: number;
}

/** The apt command that installs everything the testbed needs. */
export const INSTALL_HINT = "apt-get install -y --no-install-recommends " +
  "wireguard-go wireguard-tools nftables iproute2 iputils-ping util-linux " +
  "(or: bash scripts/testbed/install.sh)";

/** Tools the testbed runs, with the Debian package providing each. */
const REQUIRED_PROGRAMS: ReadonlyArray<readonly [string, string]> = [
  ["ip", "iproute2"],
  ["nft", "nftables"],
  ["wg", "wireguard-tools"],
  ["wireguard-go", "wireguard-go"],
  ["setsid", "util-linux"],
];

/**
 * Throws {@link TestbedUnavailableError} with a clear message when this machine cannot run the
 * testbed: not root, a tool missing, no TUN device, or namespaces cannot be created.
 */
export async function checkPrerequisites(): Promise<void> {
  if (Deno.uid() !== 0) {
    throw new TestbedUnavailableError("the testbed needs root (network namespaces, nft)");
  }
  const missing: string[] = [];
  for (const [program, pkg] of REQUIRED_PROGRAMS) {
    if (!(await hasProgram(program))) missing.push(`${program} (${pkg})`);
  }
  if (missing.length > 0) {
    throw new TestbedUnavailableError(`missing ${missing.join(", ")}; install: ${INSTALL_HINT}`);
  }
  try {
    Deno.statSync("/dev/net/tun");
  } catch {
    throw new TestbedUnavailableError("no /dev/net/tun: wireguard-go cannot create interfaces");
  }
  const probe = "tm-probe";
  await run(["ip", "netns", "del", probe], { allowFailure: true });
  const added = await run(["ip", "netns", "add", probe], { allowFailure: true });
  if (added.code !== 0) {
    throw new TestbedUnavailableError(`cannot create network namespaces: ${added.stderr.trim()}`);
  }
  await run(["ip", "netns", "del", probe], { allowFailure: true });
}

/**
 * Builds the whole testbed and waits until every tunnel has shaken hands.
 *
 * @example
 * ```ts
 * const topology = await setupTestbed({ regions: 2, hostsPerRegion: 2 });
 * ```
 */
export async function setupTestbed(
  options: SetupOptions = {},
  paths: StatePaths = statePaths(),
): Promise<Topology> {
  await checkPrerequisites();
  const topology = buildTopology(options);
  await teardownTestbed(paths);
  await Deno.remove(paths.root, { recursive: true }).catch(() => {});
  for (const dir of [paths.root, paths.keysDir, paths.procsDir, paths.logsDir, paths.dataDir]) {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  }
  const seed = options.seed ?? 1;
  const record: TestbedRecord = {
    regions: topology.regions.length,
    hostsPerRegion: topology.regions[0]?.hosts.length ?? 0,
    seed,
    createdAtMs: Date.now(),
  };
  await writeJsonAtomic(paths.testbedFile, record);

  await ipBatch(null, allNamespaces(topology).map((ns) => `netns add ${ns}`));
  await Promise.all(
    topology.regions.map((region) => ipBatch(region.routerNs, routerLinks(region))),
  );
  await ipBatch(topology.mgmtNs, mgmtLinks(topology));
  await ipBatch(topology.wanNs, wanLinks(topology));
  await Promise.all(
    topology.regions.flatMap((region) =>
      region.hosts.map((host) => ipBatch(host.ns, hostLinks(topology, region, host.hostIndex)))
    ),
  );
  // Routers and tunnel hosts forward; the hub and management namespaces never do.
  await Promise.all(
    topology.regions.flatMap((region) => [
      runIn(region.routerNs, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
      runIn(region.tunnel.ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
    ]),
  );

  await startRelay(topology, paths, seed, options.conditions ?? { ...CLEAN_CONDITIONS });
  await generateKeys(topology, paths);
  await Promise.all(topology.regions.map((region) => startTunnel(topology, region, paths)));
  await startKeepalives(topology, paths, options.skipHandshakeWait !== true);
  return topology;
}

/**
 * Turns on persistent keepalives, which make WireGuard shake hands. Only after every tunnel is
 * configured, and first on one side of each link: when both ends initiated at once (or one
 * initiated before the other had its key), the handshake was seen to stall for > 15 s.
 */
async function startKeepalives(topology: Topology, paths: StatePaths, wait: boolean) {
  const setKeepalive = async (from: RegionSpec, to: RegionSpec) => {
    const publicKey = (await Deno.readTextFile(`${paths.keysDir}/${to.tunnel.publicKeyFile}`))
      .trim();
    await runIn(from.tunnel.ns, [
      "wg",
      "set",
      from.tunnel.ifName,
      "peer",
      publicKey,
      "persistent-keepalive",
      String(WG_KEEPALIVE_S),
    ]);
  };
  const pairs = topology.links.map((link) => ({
    a: regionByIndex(topology, link.a),
    b: regionByIndex(topology, link.b),
  }));
  for (const { a, b } of pairs) await setKeepalive(a, b);
  if (wait && topology.regions.length > 1) {
    await waitForHandshakes(topology, DAEMON_READY_TIMEOUT_MS);
  }
  for (const { a, b } of pairs) await setKeepalive(b, a);
}

function routerLinks(region: RegionSpec): string[] {
  const lines = [
    "link set lo up",
    `link add ${ROUTER_LAN_BRIDGE} type bridge mcast_snooping 0`,
    `addr add ${region.routerLanIp}/${region.lanPrefix} dev ${ROUTER_LAN_BRIDGE}`,
    `link set ${ROUTER_LAN_BRIDGE} up`,
  ];
  for (const host of region.hosts) {
    lines.push(
      `link add ${host.routerPortIf} type veth peer name ${HOST_LAN_IF} netns ${host.ns}`,
      `link set ${host.routerPortIf} master ${ROUTER_LAN_BRIDGE}`,
      `link set ${host.routerPortIf} up`,
    );
  }
  lines.push(
    `link add ${ROUTER_WAN_IF} type veth peer name ${region.wanHubIf} netns tm-wan`,
    `addr add ${region.wanRouterIp}/24 dev ${ROUTER_WAN_IF}`,
    `link set ${ROUTER_WAN_IF} up`,
    `route add default via ${region.wanHubIp}`,
  );
  return lines;
}

function mgmtLinks(topology: Topology): string[] {
  const lines = ["link set lo up"];
  for (const region of topology.regions) {
    for (const host of region.hosts) {
      lines.push(
        `link add ${host.mgmtPeerIf} type veth peer name ${HOST_MGMT_IF} netns ${host.ns}`,
        `addr add ${host.mgmtPeerIp}/30 dev ${host.mgmtPeerIf}`,
        `link set ${host.mgmtPeerIf} up`,
      );
    }
  }
  return lines;
}

function wanLinks(topology: Topology): string[] {
  const lines = ["link set lo up"];
  for (const region of topology.regions) {
    lines.push(
      `addr add ${region.wanHubIp}/24 dev ${region.wanHubIf}`,
      `link set ${region.wanHubIf} up`,
      `route add ${region.lanCidr} via ${region.wanRouterIp}`,
    );
  }
  return lines;
}

function hostLinks(topology: Topology, region: RegionSpec, hostIndex: number): string[] {
  const host = region.hosts[hostIndex - 1];
  if (host === undefined) return [];
  const lines = [
    "link set lo up",
    `addr add ${host.lanIp}/${region.lanPrefix} dev ${HOST_LAN_IF}`,
    `link set ${HOST_LAN_IF} up`,
    `addr add ${host.mgmtIp}/30 dev ${HOST_MGMT_IF}`,
    `link set ${HOST_MGMT_IF} up`,
    `route add default via ${region.routerLanIp}`,
  ];
  if (!host.isTunnelHost) {
    const tunnelHostIp = region.hosts[0]?.lanIp;
    for (const other of topology.regions) {
      if (other.index !== region.index) {
        lines.push(`route add ${other.lanCidr} via ${tunnelHostIp}`);
      }
    }
    lines.push(`route add ${region.tunnel.ip.replace(/\.\d+$/, ".0")}/24 via ${tunnelHostIp}`);
  }
  return lines;
}

async function startRelay(
  topology: Topology,
  paths: StatePaths,
  seed: number,
  conditions: WanConditions,
): Promise<void> {
  const config: RelayConfig = {
    seed,
    links: topology.links,
    conditionsFile: paths.conditionsFile,
    statsFile: paths.relayStatsFile,
  };
  await writeJsonAtomic(paths.relayConfigFile, config);
  await writeJsonAtomic(paths.conditionsFile, conditions);
  const relayScript = new URL("./wan_relay.ts", import.meta.url).pathname;
  const record = await spawnProcess(paths, {
    name: "wan-relay",
    ns: topology.wanNs,
    argv: [Deno.execPath(), "run", "-A", "--quiet", relayScript, paths.relayConfigFile],
    env: { NO_COLOR: "1" },
  });
  for (let waitedMs = 0;; waitedMs += 50) {
    try {
      const stats = JSON.parse(await Deno.readTextFile(paths.relayStatsFile));
      if (stats.pid === record.pid) return;
    } catch {
      // Not written yet.
    }
    if (!isAlive(record) || waitedMs > DAEMON_READY_TIMEOUT_MS) {
      const log = await Deno.readTextFile(record.logPath).catch(() => "");
      throw new TestbedTimeoutError("wan relay", DAEMON_READY_TIMEOUT_MS, log.slice(-500));
    }
    await sleep(50);
  }
}

async function generateKeys(topology: Topology, paths: StatePaths): Promise<void> {
  await Promise.all(topology.regions.map(async (region) => {
    const privateKey = (await run(["wg", "genkey"])).stdout.trim();
    const publicKey = (await run(["wg", "pubkey"], { stdin: privateKey + "\n" })).stdout.trim();
    const privatePath = `${paths.keysDir}/${region.tunnel.privateKeyFile}`;
    await Deno.writeTextFile(privatePath, privateKey + "\n", { mode: 0o600 });
    await Deno.writeTextFile(`${paths.keysDir}/${region.tunnel.publicKeyFile}`, publicKey + "\n");
  }));
}

/** The relay endpoint region `from` uses to reach region `to`. */
export function relayEndpointFor(topology: Topology, from: number, to: number): string {
  const link = topology.links.find((l) =>
    (l.a === from && l.b === to) || (l.a === to && l.b === from)
  );
  const region = topology.regions[from - 1];
  if (link === undefined || region === undefined) {
    throw new TestbedUnavailableError(`no WAN link between r${from} and r${to}`);
  }
  return `${region.wanHubIp}:${link.a === from ? link.aPort : link.bPort}`;
}

async function startTunnel(topology: Topology, region: RegionSpec, paths: StatePaths) {
  const tunnel = region.tunnel;
  const socket = `/var/run/wireguard/${tunnel.ifName}.sock`;
  // A stale socket would make us wait for nothing (or configure a dead instance).
  await Deno.remove(socket).catch(() => {});
  const record = await spawnProcess(paths, {
    name: `wg-${region.name}`,
    ns: tunnel.ns,
    argv: ["wireguard-go", "-f", tunnel.ifName],
    // wireguard-go refuses to run on Linux without this acknowledgement (no kernel module here).
    env: { WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: "1", LOG_LEVEL: "error" },
  });
  for (let waitedMs = 0;; waitedMs += 20) {
    try {
      Deno.statSync(socket);
      break;
    } catch {
      // Not up yet.
    }
    if (!isAlive(record) || waitedMs > DAEMON_READY_TIMEOUT_MS) {
      const log = await Deno.readTextFile(record.logPath).catch(() => "");
      throw new TestbedTimeoutError(`wireguard-go ${tunnel.ifName}`, DAEMON_READY_TIMEOUT_MS, log);
    }
    await sleep(20);
  }
  const wgArgs = [
    "wg",
    "set",
    tunnel.ifName,
    "listen-port",
    String(tunnel.listenPort),
    "private-key",
    `${paths.keysDir}/${tunnel.privateKeyFile}`,
  ];
  for (const other of topology.regions) {
    if (other.index === region.index) continue;
    const publicKey = (await Deno.readTextFile(`${paths.keysDir}/${other.tunnel.publicKeyFile}`))
      .trim();
    wgArgs.push(
      "peer",
      publicKey,
      "allowed-ips",
      `${other.tunnel.ip}/32,${other.lanCidr}`,
      "endpoint",
      relayEndpointFor(topology, region.index, other.index),
    );
  }
  await runIn(tunnel.ns, wgArgs);
  const lines = [
    `addr add ${tunnel.ip}/${tunnel.prefix} dev ${tunnel.ifName}`,
    `link set ${tunnel.ifName} up`,
  ];
  for (const other of topology.regions) {
    if (other.index !== region.index) lines.push(`route add ${other.lanCidr} dev ${tunnel.ifName}`);
  }
  await ipBatch(tunnel.ns, lines);
}

/** Waits until every tunnel has a completed handshake with every peer. */
export async function waitForHandshakes(topology: Topology, timeoutMs: number): Promise<void> {
  const pollMs = 100;
  let pending: string[] = [];
  for (let waitedMs = 0; waitedMs <= timeoutMs; waitedMs += pollMs) {
    pending = [];
    for (const region of topology.regions) {
      const { stdout } = await runIn(region.tunnel.ns, [
        "wg",
        "show",
        region.tunnel.ifName,
        "latest-handshakes",
      ]);
      const zero = stdout.split("\n").filter((line) => /\s0$/.test(line.trim())).length;
      if (zero > 0) pending.push(`${region.name} (${zero} peers)`);
    }
    if (pending.length === 0) return;
    await sleep(pollMs);
  }
  throw new TestbedTimeoutError("WireGuard handshakes", timeoutMs, pending.join(", "));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      regions: { type: "string", default: "3" },
      hosts: { type: "string", default: "3" },
      seed: { type: "string", default: "1" },
    },
  });
  const lock = await acquireTestbedLock("setup CLI", 0).catch((error: Error) => {
    console.error(`testbed: ${error.message}; not setting up`);
    Deno.exit(1);
  });
  const startedMs = performance.now();
  try {
    const topology = await setupTestbed({
      regions: Number(values.regions),
      hostsPerRegion: Number(values.hosts),
      seed: Number(values.seed),
    });
    const elapsedMs = Math.round(performance.now() - startedMs);
    console.log(`testbed: up in ${elapsedMs} ms (state in ${statePaths().root})`);
    for (const region of topology.regions) {
      const hosts = region.hosts.map((h) => `${h.ns}=${h.lanIp}`).join(" ");
      console.log(
        `  ${region.name}: router ${region.routerNs} lan ${region.lanCidr} ${hosts} ` +
          `tunnel ${region.tunnel.ifName}=${region.tunnel.ip}`,
      );
    }
  } catch (error) {
    console.error(`testbed: setup failed: ${(error as Error).message}`);
    if (!(error instanceof TestbedUnavailableError)) {
      console.error("testbed: cleaning up after the failed setup");
      await teardownTestbed().catch((e) => console.error(`teardown: ${(e as Error).message}`));
    }
    Deno.exit(1);
  } finally {
    await lock.release();
  }
}
