/**
 * The testbed's topology as plain data: namespaces, links, addresses, tunnel peers and WAN
 * relay links. Pure: building it touches nothing, so it can be printed, tested and used by
 * setup, teardown and scenarios alike.
 *
 * Address plan (region index n = 1..3, host index k = 1..3):
 *
 * | what                                   | address                       |
 * | -------------------------------------- | ----------------------------- |
 * | factory LAN of region n (bridge)       | 10.77.n.0/24                  |
 * | router of region n, LAN side           | 10.77.n.1                     |
 * | gateway host k of region n             | 10.77.n.(10+k)                |
 * | WAN link of region n (router ↔ hub)    | 10.77.(100+n).0/24: hub .1, router .2 |
 * | tunnel address of region n (on g1)     | 10.99.0.n/24                  |
 * | management link of host (n, k)         | 10.77.250.(4i+1) mgmt side, 10.77.250.(4i+2) host side, i = 3(n-1)+(k-1) |
 *
 * Routing: a gateway's default route goes to its region's router; the router's default goes
 * to the WAN hub, which runs the delay relay but never forwards, so no IP packet crosses
 * regions outside the tunnel. Every gateway host reaches the other regions' gateway hosts at
 * their LAN addresses: non-tunnel hosts route other regions' LANs via their region's tunnel
 * host (g1), which forwards into WireGuard. The tunnel's UDP goes g1 → router → hub relay
 * (delay, jitter, loss) → router → remote g1. A cut drops everything crossing a router's WAN
 * interface, so it severs the region from the others while its LAN keeps working.
 *
 * @example
 * ```ts
 * import { buildTopology } from "./topology.ts";
 * const topology = buildTopology({ regions: 2, hostsPerRegion: 2 });
 * console.log(topology.regions[0]?.hosts[0]?.lanIp); // "10.77.1.11"
 * ```
 *
 * @module
 */

import { assert, TestbedInputError } from "./errors.ts";
import {
  HOSTS_PER_REGION_MAX,
  MGMT_NS,
  REGIONS_MAX,
  RELAY_PORT_BASE_A,
  RELAY_PORT_BASE_B,
  WAN_NS,
  WG_LISTEN_PORT,
} from "./constants.ts";

/** Options of {@link buildTopology}; all optional. */
export interface TopologyInit {
  /** Number of regions, 2..3 (default 3). One region is allowed for LAN-only experiments. */
  regions?: number;
  /** Gateway hosts per region, 1..3 (default 3). */
  hostsPerRegion?: number;
}

/** One gateway host: a namespace on its region's LAN bridge. */
export interface HostSpec {
  /** Namespace name, e.g. `tm-r1-g1`. */
  ns: string;
  /** Region index, 1-based. */
  regionIndex: number;
  /** Host index within the region, 1-based. */
  hostIndex: number;
  /** Gateway name for the twinmesh node, e.g. `r1-g1`; asset ids are `<name>.arm-<i>`. */
  gatewayName: string;
  /** Region name, e.g. `r1`. */
  region: string;
  /** Factory name of the region's LAN, e.g. `f1`. */
  factory: string;
  /** Address on the factory LAN. */
  lanIp: string;
  /** Name of this host's veth end inside the router namespace (enslaved to the bridge). */
  routerPortIf: string;
  /** Address of the management namespace's end of this host's management link. */
  mgmtPeerIp: string;
  /** This host's address on its management link (gateways bind their HTTP API here). */
  mgmtIp: string;
  /** Name of the management namespace's end of the link. */
  mgmtPeerIf: string;
  /** True on the first host of each region, which runs WireGuard. */
  isTunnelHost: boolean;
}

/** One region: a router namespace holding the LAN bridge, and its gateway hosts. */
export interface RegionSpec {
  index: number;
  /** `r1`, `r2`, `r3`. */
  name: string;
  factory: string;
  routerNs: string;
  lanCidr: string;
  /** Prefix length of the LAN. */
  lanPrefix: number;
  routerLanIp: string;
  /** Router's address on its WAN link. */
  wanRouterIp: string;
  /** Hub's address on this region's WAN link; the relay is reached here. */
  wanHubIp: string;
  /** Hub-side interface name of the WAN link, inside {@link WAN_NS}. */
  wanHubIf: string;
  hosts: HostSpec[];
  /** The region's WireGuard endpoint. */
  tunnel: TunnelSpec;
}

/** WireGuard interface of a region, living in its first host's namespace. */
export interface TunnelSpec {
  ns: string;
  ifName: string;
  ip: string;
  prefix: number;
  listenPort: number;
  /** Key file names inside the state dir's `keys/` folder. */
  privateKeyFile: string;
  publicKeyFile: string;
}

/** One UDP endpoint. */
export interface UdpEndpoint {
  ip: string;
  port: number;
}

/**
 * One WAN link between two regions' tunnel hosts, carried by the relay in {@link WAN_NS}.
 * Region `a` sends to the relay's `aPort` (via its hub address), the relay forwards to `bTarget`
 * from `bPort`, and the reverse. Each side therefore sees the relay as its peer's endpoint.
 */
export interface WanLinkSpec {
  /** `r1-r2`: lower region index first. */
  name: string;
  a: number;
  b: number;
  aPort: number;
  bPort: number;
  /** Region a's WireGuard socket, where traffic from b is delivered. */
  aTarget: UdpEndpoint;
  /** Region b's WireGuard socket, where traffic from a is delivered. */
  bTarget: UdpEndpoint;
}

/** The whole testbed. */
export interface Topology {
  regions: RegionSpec[];
  links: WanLinkSpec[];
  wanNs: string;
  mgmtNs: string;
}

/**
 * Builds the topology for `regions` × `hostsPerRegion`.
 *
 * @example
 * ```ts
 * const t = buildTopology({ regions: 3, hostsPerRegion: 3 });
 * console.log(t.links.map((l) => l.name)); // ["r1-r2", "r1-r3", "r2-r3"]
 * ```
 */
export function buildTopology(init: TopologyInit = {}): Topology {
  const regionCount = init.regions ?? 3;
  const hostCount = init.hostsPerRegion ?? 3;
  if (!Number.isInteger(regionCount) || regionCount < 1 || regionCount > REGIONS_MAX) {
    throw new TestbedInputError("regions", regionCount, `an integer 1..${REGIONS_MAX}`);
  }
  if (!Number.isInteger(hostCount) || hostCount < 1 || hostCount > HOSTS_PER_REGION_MAX) {
    throw new TestbedInputError(
      "hostsPerRegion",
      hostCount,
      `an integer 1..${HOSTS_PER_REGION_MAX}`,
    );
  }
  const regions: RegionSpec[] = [];
  for (let n = 1; n <= regionCount; n++) regions.push(buildRegion(n, hostCount));
  const links: WanLinkSpec[] = [];
  for (let a = 1; a <= regionCount; a++) {
    for (let b = a + 1; b <= regionCount; b++) links.push(buildLink(a, b));
  }
  const topology: Topology = { regions, links, wanNs: WAN_NS, mgmtNs: MGMT_NS };
  assertTopology(topology);
  return topology;
}

function buildRegion(n: number, hostCount: number): RegionSpec {
  const name = `r${n}`;
  const hosts: HostSpec[] = [];
  for (let k = 1; k <= hostCount; k++) hosts.push(buildHost(n, k));
  return {
    index: n,
    name,
    factory: `f${n}`,
    routerNs: `tm-${name}-rt`,
    lanCidr: `10.77.${n}.0/24`,
    lanPrefix: 24,
    routerLanIp: `10.77.${n}.1`,
    wanRouterIp: `10.77.${100 + n}.2`,
    wanHubIp: `10.77.${100 + n}.1`,
    wanHubIf: `to-${name}`,
    hosts,
    tunnel: {
      ns: `tm-${name}-g1`,
      ifName: `tm-wg-${name}`,
      ip: `10.99.0.${n}`,
      prefix: 24,
      listenPort: WG_LISTEN_PORT,
      privateKeyFile: `${name}.key`,
      publicKeyFile: `${name}.pub`,
    },
  };
}

function buildHost(n: number, k: number): HostSpec {
  const slot = (n - 1) * HOSTS_PER_REGION_MAX + (k - 1);
  return {
    ns: `tm-r${n}-g${k}`,
    regionIndex: n,
    hostIndex: k,
    gatewayName: `r${n}-g${k}`,
    region: `r${n}`,
    factory: `f${n}`,
    lanIp: `10.77.${n}.${10 + k}`,
    routerPortIf: `g${k}`,
    mgmtPeerIp: `10.77.250.${4 * slot + 1}`,
    mgmtIp: `10.77.250.${4 * slot + 2}`,
    mgmtPeerIf: `to-r${n}-g${k}`,
    isTunnelHost: k === 1,
  };
}

function buildLink(a: number, b: number): WanLinkSpec {
  return {
    name: `r${a}-r${b}`,
    a,
    b,
    aPort: RELAY_PORT_BASE_A + 10 * a + b,
    bPort: RELAY_PORT_BASE_B + 10 * a + b,
    aTarget: { ip: `10.77.${a}.11`, port: WG_LISTEN_PORT },
    bTarget: { ip: `10.77.${b}.11`, port: WG_LISTEN_PORT },
  };
}

function assertTopology(topology: Topology): void {
  const names = allNamespaces(topology);
  assert(new Set(names).size === names.length, "namespace names are unique");
  for (const ns of names) assert(ns.startsWith("tm-"), `namespace ${ns} has the tm- prefix`);
  for (const region of topology.regions) {
    assert(region.hosts[0]?.isTunnelHost === true, `${region.name} has a tunnel host`);
    assert(region.tunnel.ifName.length <= 15, "interface names fit IFNAMSIZ");
    for (const host of region.hosts) assert(host.mgmtPeerIf.length <= 15, "IFNAMSIZ");
  }
}

/**
 * Every namespace of the topology, in creation order (hub and management first).
 *
 * @example
 * ```ts
 * allNamespaces(buildTopology({ regions: 2, hostsPerRegion: 1 }));
 * // ["tm-wan", "tm-mgmt", "tm-r1-rt", "tm-r1-g1", "tm-r2-rt", "tm-r2-g1"]
 * ```
 */
export function allNamespaces(topology: Topology): string[] {
  const names = [topology.wanNs, topology.mgmtNs];
  for (const region of topology.regions) {
    names.push(region.routerNs);
    for (const host of region.hosts) names.push(host.ns);
  }
  return names;
}

/**
 * Every gateway host, region by region.
 *
 * @example
 * ```ts
 * allHosts(buildTopology({ regions: 2, hostsPerRegion: 2 })).map((h) => h.ns);
 * // ["tm-r1-g1", "tm-r1-g2", "tm-r2-g1", "tm-r2-g2"]
 * ```
 */
export function allHosts(topology: Topology): HostSpec[] {
  return topology.regions.flatMap((region) => region.hosts);
}

/** The region with index `n` (1-based), or a {@link TestbedInputError}. */
export function regionByIndex(topology: Topology, n: number): RegionSpec {
  const region = topology.regions[n - 1];
  if (region === undefined) {
    throw new TestbedInputError("region", n, `1..${topology.regions.length}`);
  }
  return region;
}

/** The region named `r<n>`, or a {@link TestbedInputError}. */
export function regionByName(topology: Topology, name: string): RegionSpec {
  const region = topology.regions.find((r) => r.name === name);
  if (region === undefined) {
    throw new TestbedInputError(
      "region",
      name,
      `one of ${topology.regions.map((r) => r.name).join(", ")}`,
    );
  }
  return region;
}

/** The host whose gateway name is `name` (e.g. `r1-g2`), or a {@link TestbedInputError}. */
export function hostByName(topology: Topology, name: string): HostSpec {
  const host = allHosts(topology).find((h) => h.gatewayName === name || h.ns === name);
  if (host === undefined) throw new TestbedInputError("host", name, "a gateway like r1-g2");
  return host;
}
