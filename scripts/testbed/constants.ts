/**
 * Limits, defaults and names of the multi-region testbed, in one place.
 *
 * Every maximum says why it has the value it has. Names that the kernel sees
 * (namespaces, interfaces) start with `tm-` so that teardown can find leftovers
 * of any earlier run by prefix alone.
 *
 * @module
 */

/** Prefix of every namespace and interface the testbed creates. */
export const NAME_PREFIX = "tm-";

/** Namespace of the WAN hub: the relay host between regions' routers; it never forwards. */
export const WAN_NS = "tm-wan";

/** Namespace of the out-of-band management host that can reach every gateway's HTTP API. */
export const MGMT_NS = "tm-mgmt";

/** Default state directory: keys, logs, PID records, relay config and stats. */
export const STATE_DIR_DEFAULT = "/tmp/twinmesh-testbed";

/** Environment variable overriding {@link STATE_DIR_DEFAULT}. */
export const STATE_DIR_ENV = "TWINMESH_TESTBED_DIR";

/** At most 3 regions: the address plan gives each region one octet and the issue asks for 2–3. */
export const REGIONS_MAX = 3;

/** At most 3 gateway hosts per region: the management /30 plan reserves 3 slots per region. */
export const HOSTS_PER_REGION_MAX = 3;

/** UDP port every wireguard-go interface listens on inside its own namespace. */
export const WG_LISTEN_PORT = 51820;

/**
 * Keepalive of the tunnel in seconds: short so that a healed cut is noticed within a few
 * seconds even when no application traffic is waiting, long enough to cost nothing.
 */
export const WG_KEEPALIVE_S = 5;

/** First UDP port of the relay's region-side sockets; a link (a, b) uses base + 10a + b. */
export const RELAY_PORT_BASE_A = 40000;

/** First UDP port of the relay's far-side sockets; a link (a, b) uses base + 10a + b. */
export const RELAY_PORT_BASE_B = 41000;

/**
 * Datagrams queued per direction of one WAN link. At 40 ms delay a full-rate gateway mesh
 * sends far below 10k datagrams/s, so 4096 queued covers > 400 ms at that rate; more would
 * only hide a runaway sender, and overflow is dropped and counted like real router loss.
 */
export const RELAY_QUEUE_MAX = 4096;

/** Largest datagram the relay forwards: WireGuard over a 1500-byte link never exceeds this. */
export const RELAY_DATAGRAM_BYTES_MAX = 2048;

/** Largest one-way delay the relay accepts: a WAN across continents stays well below it. */
export const RELAY_DELAY_MS_MAX = 2000;

/** How often the relay re-reads its conditions file, so changes take effect within this. */
export const RELAY_CONDITIONS_POLL_MS = 100;

/** How often the relay writes its stats file. */
export const RELAY_STATS_WRITE_MS = 500;

/** Timeout of one short administrative command (`ip`, `nft`, `wg`). */
export const COMMAND_TIMEOUT_MS = 10_000;

/** How long setup waits for a spawned daemon (wireguard-go, relay) to come up. */
export const DAEMON_READY_TIMEOUT_MS = 15_000;

/** How long spawning waits for a new process to exec (and so carry its marker). */
export const SPAWN_MARKER_TIMEOUT_MS = 2_000;

/** How long a process is given after SIGTERM before it gets SIGKILL during teardown. */
export const STOP_GRACE_MS = 1_500;

/** Most processes the testbed tracks; bounds every loop over PID records. */
export const TRACKED_PROCESSES_MAX = 256;

/** Most namespaces teardown will delete in one run; bounds its loop over `ip netns list`. */
export const NAMESPACES_MAX = 64;

/** nft table that cuts a region's WAN link in its router namespace. */
export const CUT_TABLE = "tm_cut";

/** Interface names of the router namespace. */
export const ROUTER_LAN_BRIDGE = "br-lan";
/** Router's end of its WAN link. */
export const ROUTER_WAN_IF = "wan0";
/** Gateway host's LAN interface. */
export const HOST_LAN_IF = "eth0";
/** Gateway host's management interface (point-to-point to the management namespace). */
export const HOST_MGMT_IF = "mgmt0";
