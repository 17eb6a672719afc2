/**
 * Starting and stopping gateway processes on this host: shared by the local
 * mesh runner, the multi-process tests and the benchmarks.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GATEWAY_MALLOC_ARENA_MAX, GATEWAY_V8_FLAGS } from "../node/config.ts";

export const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const MOD_TS = join(REPO_ROOT, "mod.ts");
/** How long a gateway may take to answer /health after spawn. */
export const READY_TIMEOUT_MS = 15_000;

export interface GatewaySpec {
  name: string;
  factory: string;
  region: string;
  dataDir: string;
  listenPort: number;
  httpPort: number;
  peers?: string[];
  extraArgs?: string[];
  /** File that receives the gateway's stderr (JSON log lines). */
  logFile: string;
}

export interface GatewayProcess {
  spec: GatewaySpec;
  child: Deno.ChildProcess;
  http: string;
  /** Resolves with the exit status. */
  status: Promise<Deno.CommandStatus>;
}

/** The arguments `twinmesh run` gets for a spec. */
export function gatewayArgs(spec: GatewaySpec): string[] {
  const args = [
    "--name",
    spec.name,
    "--factory",
    spec.factory,
    "--region",
    spec.region,
    "--data-dir",
    spec.dataDir,
    "--listen",
    `/ip4/127.0.0.1/tcp/${spec.listenPort}`,
    "--http",
    `127.0.0.1:${spec.httpPort}`,
  ];
  for (const peer of spec.peers ?? []) args.push("--peer", peer);
  return [...args, ...(spec.extraArgs ?? [])];
}

/** Spawns one gateway process (does not wait for it to be ready). */
export function spawnGateway(spec: GatewaySpec): GatewayProcess {
  Deno.mkdirSync(spec.dataDir, { recursive: true });
  // The gateway writes its log straight to the file (no pipe through this
  // process), so the log is complete even if this process is busy or dies.
  const child = new Deno.Command("/bin/sh", {
    args: [
      "-c",
      'exec "$0" "$@" 2>>"$TWINMESH_LOG_FILE"',
      Deno.execPath(),
      "run",
      "--allow-all",
      `--v8-flags=${GATEWAY_V8_FLAGS}`,
      MOD_TS,
      "run",
      ...gatewayArgs(spec),
    ],
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "null",
    env: {
      NO_COLOR: "1",
      TWINMESH_LOG_FILE: spec.logFile,
      // See GATEWAY_MALLOC_ARENA_MAX; an operator's own value wins.
      MALLOC_ARENA_MAX: Deno.env.get("MALLOC_ARENA_MAX") || GATEWAY_MALLOC_ARENA_MAX,
    },
  }).spawn();
  const status = child.status;
  return { spec, child, http: `http://127.0.0.1:${spec.httpPort}`, status };
}

/** Waits until `GET /health` answers; throws with the log tail on timeout or early exit. */
export async function waitReady(
  gateway: GatewayProcess,
  timeoutMs = READY_TIMEOUT_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  gateway.status.then(() => (exited = true));
  while (Date.now() < deadline) {
    if (exited) break;
    try {
      const response = await fetch(`${gateway.http}/health`, { signal: AbortSignal.timeout(1000) });
      await response.body?.cancel();
      if (response.ok) return;
    } catch { /* not up yet */ }
    await delay(50);
  }
  throw new Error(
    `gateway ${gateway.spec.name} ${exited ? "exited" : "not ready"} after ${timeoutMs} ms; log:\n${
      tail(gateway.spec.logFile)
    }`,
  );
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit status. */
export async function stopGateway(
  gateway: GatewayProcess,
  graceMs = 3_000,
): Promise<Deno.CommandStatus> {
  try {
    gateway.child.kill("SIGTERM");
  } catch { /* already gone */ }
  const timer = setTimeout(() => {
    try {
      gateway.child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, graceMs);
  const status = await gateway.status;
  clearTimeout(timer);
  return status;
}

/** GET a JSON document from a gateway. */
export async function getJson<T = unknown>(
  gateway: GatewayProcess | string,
  path: string,
): Promise<T> {
  const base = typeof gateway === "string" ? gateway : gateway.http;
  const response = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(5_000) });
  const body = await response.json();
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${JSON.stringify(body)}`);
  return body as T;
}

/** Sums of `twinmesh_*` gauges over gateways' `GET /metrics` whose names match `pattern`. */
export async function sumMetrics(
  gateways: readonly GatewayProcess[],
  pattern: RegExp,
): Promise<Record<string, number>> {
  const sums: Record<string, number> = {};
  const texts = await Promise.all(gateways.map(async (g) => {
    const response = await fetch(`${g.http}/metrics`, { signal: AbortSignal.timeout(5_000) });
    return await response.text();
  }));
  for (const text of texts) {
    for (const line of text.split("\n")) {
      const [name, value] = line.split(" ");
      if (name && value && !name.startsWith("#") && pattern.test(name)) {
        sums[name] = (sums[name] ?? 0) + Number(value);
      }
    }
  }
  return sums;
}

/** POST JSON to a gateway; returns status and parsed body. */
export async function postJson<T = unknown>(
  gateway: GatewayProcess | string,
  path: string,
  body: unknown,
): Promise<{ status: number; body: T }> {
  const base = typeof gateway === "string" ? gateway : gateway.http;
  const response = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, body: await response.json() as T };
}

/** Last lines of a log file (for error messages). */
export function tail(path: string, lines = 20): string {
  try {
    return Deno.readTextFileSync(path).trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Ports this process has handed out: never handed out twice (a released port can come back). */
const handedOut = new Set<number>();
/** Attempts to find a port that binds and was not handed out before. */
const FREE_PORT_ATTEMPTS = 200;
/** Lowest port handed out (below the kernel's ephemeral range, see {@link freePort}). */
const LOWEST_PORT = 10_000;

/**
 * A free TCP port on 127.0.0.1, unique within this process, chosen below the
 * kernel's ephemeral range. A port picked from that range (bind to 0, read,
 * release) can be taken again before the gateway binds it, by any socket
 * bound to port 0: an e-stop thread listening on any free port, or the source
 * port of an outgoing connection. Ports below the range are never handed out
 * that way.
 */
export function freePort(): number {
  const ephemeralLow = ephemeralRangeLow();
  for (let attempt = 0; attempt < FREE_PORT_ATTEMPTS; attempt++) {
    const port = ephemeralLow > LOWEST_PORT + 1_000
      ? LOWEST_PORT + Math.floor(Math.random() * (ephemeralLow - LOWEST_PORT))
      : 0;
    let bound: number;
    try {
      const listener = Deno.listen({ hostname: "127.0.0.1", port });
      bound = (listener.addr as Deno.NetAddr).port;
      listener.close();
    } catch {
      continue; // in use
    }
    if (!handedOut.has(bound)) {
      handedOut.add(bound);
      return bound;
    }
  }
  throw new Error(`no unused free port after ${FREE_PORT_ATTEMPTS} attempts`);
}

/** First port of Linux's ephemeral range, or 0 where it cannot be read (then any free port). */
function ephemeralRangeLow(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").split(/\s+/)[0]);
  } catch {
    return 0;
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
