/**
 * twinmesh gateways on the testbed: start one per gateway host (in its namespace, with its
 * own data dir and log), kill -9 and restart them, and talk to their HTTP API over the
 * management network. Callers of the API must run inside the management namespace
 * (`tm-mgmt`): that is the only place that reaches every gateway's `mgmt0` address, and it
 * is not affected by WAN cuts.
 *
 * Gateway CLI contract (the lead's `mod.ts`):
 * `deno run -A mod.ts run --name --factory --region --data-dir --listen --http [--peer]… [--no-mdns] [--assets n]`.
 *
 * @module
 */

import {
  assert,
  GatewayExitedError,
  TestbedTimeoutError,
  TestbedUnavailableError,
} from "./errors.ts";
import { sleep } from "./exec.ts";
import { GATEWAY_MALLOC_ARENA_MAX, GATEWAY_V8_FLAGS } from "../../node/config.ts";
import { isAlive, killHard, type ProcRecord, restartProcess, spawnProcess } from "./procs.ts";
import type { StatePaths } from "./state.ts";
import { allHosts, type HostSpec, type Topology } from "./topology.ts";

/** libp2p TCP port of every gateway (each host has its own address). */
export const GATEWAY_P2P_PORT = 4001;
/** HTTP API port, bound on the host's management address. */
export const GATEWAY_HTTP_PORT = 8080;
/**
 * A gateway must answer `/health` within this after (re)start. Deno starts in ~1 s, but up to
 * nine gateways start at once on two shared cores.
 */
export const GATEWAY_READY_TIMEOUT_MS = 90_000;
/** Timeout of one HTTP API call. */
export const HTTP_TIMEOUT_MS = 3_000;
/** Largest HTTP response body the scenarios read; bigger means a runaway API. */
export const HTTP_BODY_BYTES_MAX = 8 * 1024 * 1024;

/** Root of the repository (for `mod.ts` and `scripts/deno.sh`). */
export const REPO_ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** Options of {@link startGateways}. */
export interface GatewayOptions {
  /** Assets per gateway (default 2: arm-0 takes twin writes, arm-1 takes e-stops). */
  assets?: number;
  /** Which cross-region peers each gateway is configured with (default `all`). */
  peers?: "all" | "tunnel-hosts";
}

/** Process name of a host's gateway. */
export function gatewayProcName(host: HostSpec): string {
  return `gw-${host.gatewayName}`;
}

/** Asset id of `host`'s asset `i`. */
export function assetId(host: HostSpec, i: number): string {
  return `${host.gatewayName}.arm-${i}`;
}

/**
 * Why gateways cannot run here, or undefined when `mod.ts` exists and has a `run` command.
 */
export async function gatewayUnavailableReason(): Promise<string | undefined> {
  try {
    const text = await Deno.readTextFile(`${REPO_ROOT}/mod.ts`);
    if (!text.includes("run")) return "mod.ts has no `run` command yet";
    return undefined;
  } catch {
    return `${REPO_ROOT}/mod.ts does not exist yet (the gateway is not written)`;
  }
}

/** The gateway command line for `host`. */
export function gatewayArgv(
  topology: Topology,
  host: HostSpec,
  paths: StatePaths,
  options: GatewayOptions = {},
): string[] {
  const argv = [
    `${REPO_ROOT}/scripts/deno.sh`,
    "run",
    "-A",
    `--v8-flags=${GATEWAY_V8_FLAGS}`,
    `${REPO_ROOT}/mod.ts`,
    "run",
    "--name",
    host.gatewayName,
    "--factory",
    host.factory,
    "--region",
    host.region,
    "--data-dir",
    `${paths.dataDir}/${host.gatewayName}`,
    "--listen",
    `/ip4/${host.lanIp}/tcp/${GATEWAY_P2P_PORT}`,
    "--http",
    `${host.mgmtIp}:${GATEWAY_HTTP_PORT}`,
    "--assets",
    String(options.assets ?? 2),
    // Simulated telemetry at 10 Hz instead of 100 and no injected faults: up to nine gateways
    // share two cores with other work, and the scenarios test replication and stops, not
    // detection.
    "--telemetry-hz",
    "10",
    "--fault-rate",
    "0",
  ];
  // Twins replicate per factory: every gateway also replicates the other regions' factories,
  // so cross-region writes and convergence can be checked everywhere.
  for (const region of topology.regions) {
    if (region.factory !== host.factory) argv.push("--replicate", region.factory);
  }
  const mode = options.peers ?? "all";
  // Only cross-region peers are configured: the LAN is found by mDNS.
  for (const other of allHosts(topology)) {
    if (other.regionIndex === host.regionIndex) continue;
    if (mode === "tunnel-hosts" && !(host.isTunnelHost && other.isTunnelHost)) continue;
    argv.push("--peer", `/ip4/${other.lanIp}/tcp/${GATEWAY_P2P_PORT}`);
  }
  return argv;
}

/** Starts every gateway and waits until each answers `/health`. */
export async function startGateways(
  topology: Topology,
  paths: StatePaths,
  options: GatewayOptions = {},
): Promise<void> {
  const reason = await gatewayUnavailableReason();
  if (reason !== undefined) throw new TestbedUnavailableError(reason);
  const records: ProcRecord[] = [];
  for (const host of allHosts(topology)) {
    await Deno.mkdir(`${paths.dataDir}/${host.gatewayName}`, { recursive: true });
    records.push(
      await spawnProcess(paths, {
        name: gatewayProcName(host),
        ns: host.ns,
        argv: gatewayArgv(topology, host, paths, options),
        env: { NO_COLOR: "1", MALLOC_ARENA_MAX: GATEWAY_MALLOC_ARENA_MAX },
        cwd: REPO_ROOT,
      }),
    );
  }
  await Promise.all(
    allHosts(topology).map((host, i) => waitHealthy(host, records[i], GATEWAY_READY_TIMEOUT_MS)),
  );
}

/** kill -9 a host's gateway. */
export async function killGateway(paths: StatePaths, host: HostSpec): Promise<void> {
  await killHard(paths, gatewayProcName(host));
}

/** Restarts a host's gateway and waits for `/health`; returns ms until healthy. */
export async function restartGateway(paths: StatePaths, host: HostSpec): Promise<number> {
  const startedMs = performance.now();
  const record = await restartProcess(paths, gatewayProcName(host));
  await waitHealthy(host, record, GATEWAY_READY_TIMEOUT_MS);
  return performance.now() - startedMs;
}

/** Polls `/health` until it answers 200; fails early when the process dies. */
export async function waitHealthy(
  host: HostSpec,
  record: ProcRecord | undefined,
  timeoutMs: number,
): Promise<void> {
  const pollMs = 200;
  for (let waitedMs = 0; waitedMs <= timeoutMs; waitedMs += pollMs) {
    const response = await api(host, "GET", "/health").catch(() => undefined);
    if (response?.status === 200) return;
    if (record !== undefined && !isAlive(record) && !(await aliveAfterRecheck(record))) {
      const log = await Deno.readTextFile(record.logPath).catch(() => "");
      throw new GatewayExitedError(host.gatewayName, log.slice(-1500));
    }
    await sleep(pollMs);
  }
  throw new TestbedTimeoutError(`gateway ${host.gatewayName} /health`, timeoutMs);
}

/**
 * A second look before declaring a start failed: while the spawn wrappers
 * (setsid, sh, ip netns exec) exec the gateway, `/proc/<pid>/environ` can read
 * empty for a moment, and the marker check then says "gone" (seen once as a
 * restarted gateway "exited during start" with a clean log).
 */
async function aliveAfterRecheck(record: ProcRecord): Promise<boolean> {
  for (let i = 0; i < 3; i++) {
    await sleep(50);
    if (isAlive(record)) return true;
  }
  return false;
}

/** One API response: status and parsed JSON body (undefined when not JSON). */
export interface ApiResponse {
  status: number;
  body: unknown;
}

/**
 * Calls a gateway's HTTP API. Throws on network errors and timeouts (a down gateway); HTTP
 * error statuses are returned, not thrown.
 *
 * @example
 * ```ts
 * const { status, body } = await api(host, "POST", "/twins/r1-g1.arm-0/commands", {
 *   setpoints: { weldCurrentA: 180 },
 * });
 * ```
 */
export async function api(
  host: HostSpec,
  method: "GET" | "POST",
  path: string,
  body?: unknown,
): Promise<ApiResponse> {
  const init: RequestInit = { method, signal: AbortSignal.timeout(HTTP_TIMEOUT_MS) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "content-type": "application/json" };
  }
  const response = await fetch(`http://${host.mgmtIp}:${GATEWAY_HTTP_PORT}${path}`, init);
  const text = await response.text();
  assert(text.length <= HTTP_BODY_BYTES_MAX, `response of ${path} within the body maximum`);
  let parsed: unknown = undefined;
  try {
    parsed = text.length > 0 ? JSON.parse(text) : undefined;
  } catch {
    parsed = text;
  }
  return { status: response.status, body: parsed };
}

/** A twin's fields as `{field: {value, hlc}}`, read tolerantly from the API's JSON. */
export type FieldView = Record<string, { value: unknown; hlc: string | undefined }>;

/**
 * Extracts the fields of one twin from `GET /twins/:id` (or one element of `GET /twins`):
 * accepts `{fields: {name: {value, hlc}}}` (the resolved-twin shape), nested objects like
 * `{setpoints: {weldCurrentA: 180}}`, and HLCs as formatted strings or `{wallMs, logical, node}`.
 */
export function fieldsOf(twin: unknown): FieldView {
  const result: FieldView = {};
  if (typeof twin !== "object" || twin === null) return result;
  const record = twin as Record<string, unknown>;
  const fields = (typeof record.fields === "object" && record.fields !== null)
    ? record.fields as Record<string, unknown>
    : record;
  const visit = (prefix: string, value: unknown, depth: number) => {
    if (depth > 3) return;
    if (typeof value === "object" && value !== null && "value" in value) {
      const field = value as { value: unknown; hlc?: unknown };
      result[prefix] = { value: field.value, hlc: hlcText(field.hlc) };
      return;
    }
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) {
        visit(prefix ? `${prefix}.${key}` : key, inner, depth + 1);
      }
      return;
    }
    result[prefix] = { value, hlc: undefined };
  };
  for (const [key, value] of Object.entries(fields)) visit(key, value, 0);
  return result;
}

/**
 * An HLC as a string whose lexicographic order is the HLC order (the project's
 * `formatTimestamp` form), from either that string or a `{wallMs, logical, node}` object.
 */
export function hlcText(hlc: unknown): string | undefined {
  if (typeof hlc === "string") return hlc;
  if (typeof hlc === "object" && hlc !== null) {
    const t = hlc as { wallMs?: unknown; logical?: unknown; node?: unknown };
    if (typeof t.wallMs === "number" && typeof t.logical === "number") {
      return `${t.wallMs.toString(16).padStart(12, "0")}.${
        t.logical.toString(16).padStart(8, "0")
      }.${String(t.node ?? "")}`;
    }
  }
  return undefined;
}

/** The list of twins in a `GET /twins` body: an array, or `{twins: [...]}`, or a map by id. */
export function twinsOf(body: unknown): Array<{ id: string; twin: unknown }> {
  const list = Array.isArray(body) ? body : (typeof body === "object" && body !== null &&
      Array.isArray((body as { twins?: unknown }).twins))
    ? (body as { twins: unknown[] }).twins
    : undefined;
  if (list !== undefined) {
    return list.map((twin) => {
      const t = twin as { assetId?: unknown; id?: unknown };
      return { id: String(t.assetId ?? t.id ?? ""), twin };
    });
  }
  if (typeof body === "object" && body !== null) {
    return Object.entries(body).map(([id, twin]) => ({ id, twin }));
  }
  return [];
}

/** Latched stop ids per asset from a `GET /estop` body (`{latched: [{assetId, stopIds}]}`). */
export function latchedOf(body: unknown): Map<string, Set<string>> {
  const result = new Map<string, Set<string>>();
  const latched = (body as { latched?: unknown })?.latched;
  if (!Array.isArray(latched)) return result;
  for (const entry of latched) {
    const e = entry as { assetId?: unknown; stopIds?: unknown };
    if (typeof e.assetId !== "string" || !Array.isArray(e.stopIds)) continue;
    result.set(e.assetId, new Set(e.stopIds.map(String)));
  }
  return result;
}

/** Received-stop records from a `GET /estop` body, by stop id: when the owner got/acted on it. */
export function receivedStopsOf(
  body: unknown,
): Map<string, { atMs: number | undefined; actedAtMs: number | undefined; late: boolean }> {
  const result = new Map<
    string,
    { atMs: number | undefined; actedAtMs: number | undefined; late: boolean }
  >();
  const recent = (body as { recent?: unknown })?.recent;
  if (!Array.isArray(recent)) return result;
  for (const entry of recent) {
    const r = entry as {
      id?: unknown;
      kind?: unknown;
      direction?: unknown;
      atMs?: unknown;
      actedAtMs?: unknown;
      late?: unknown;
    };
    // An owner records a stop it received; a gateway that stops its own asset records it as
    // issued, with the time it acted.
    const acted = r.direction === "received" || typeof r.actedAtMs === "number";
    if (typeof r.id !== "string" || r.kind !== "stop" || !acted) continue;
    result.set(r.id, {
      atMs: typeof r.atMs === "number" ? r.atMs : undefined,
      actedAtMs: typeof r.actedAtMs === "number" ? r.actedAtMs : undefined,
      late: r.late === true,
    });
  }
  return result;
}

/** True when the calling process runs in the management namespace. */
export async function inMgmtNamespace(topology: Topology): Promise<boolean> {
  const result = await new Deno.Command("ip", {
    args: ["netns", "identify", String(Deno.pid)],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(result.stdout).trim() === topology.mgmtNs;
}
