/** Helpers for tests that run real gateway processes on this host. */
import { join } from "node:path";
import {
  delay,
  freePort,
  type GatewayProcess,
  type GatewaySpec,
  getJson,
  spawnGateway,
  stopGateway,
  waitReady,
} from "../scripts/mesh_processes.ts";
import type { PeerView } from "../node/mesh.ts";

export { delay, getJson, stopGateway, waitReady };

/** Temp dirs made by this test module, removed when it ends (see tempDir). */
const madeDirs: string[] = [];
globalThis.addEventListener("unload", removeMadeDirs);

/**
 * A temp dir for one test. Every such dir is removed when the test module
 * ends, failed or not (gateway data dirs add up: every run left ~30); set
 * TWINMESH_KEEP_TEST_DIRS=1 to keep them for a look at the logs.
 */
export function tempDir(prefix: string): string {
  const dir = Deno.makeTempDirSync({ prefix: `twinmesh-${prefix}-` });
  madeDirs.push(dir);
  return dir;
}

function removeMadeDirs(): void {
  if (Deno.env.get("TWINMESH_KEEP_TEST_DIRS")) {
    console.error(`test dirs kept: ${madeDirs.join(" ")}`);
    return;
  }
  for (const dir of madeDirs.splice(0)) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch (error) {
      console.error(`test dir ${dir} not removed: ${error}`); // e.g. a gateway still writing
    }
  }
}

/** A factory name no other test (or local mesh) uses, so mDNS stays separate. */
export function uniqueFactory(label: string): string {
  return `t-${label}-${crypto.randomUUID().slice(0, 8)}`;
}

export interface TestGatewayOptions {
  name: string;
  factory: string;
  region?: string;
  dir: string;
  peers?: string[];
  extraArgs?: string[];
  listenPort?: number;
  httpPort?: number;
}

/** Spawns a gateway with fresh ports and waits until its API answers. */
export async function startGateway(options: TestGatewayOptions): Promise<GatewayProcess> {
  const gateway = spawn(options);
  await waitReady(gateway);
  return gateway;
}

export function spawn(options: TestGatewayOptions): GatewayProcess {
  const spec: GatewaySpec = {
    name: options.name,
    factory: options.factory,
    region: options.region ?? "region-1",
    dataDir: join(options.dir, options.name),
    listenPort: options.listenPort ?? freePort(),
    httpPort: options.httpPort ?? freePort(),
    peers: options.peers ?? [],
    extraArgs: ["--assets", "2", ...(options.extraArgs ?? [])],
    logFile: join(options.dir, `${options.name}.log`),
  };
  return spawnGateway(spec);
}

/** Polls until `check` returns true or the time is up; returns whether it did. */
export async function eventually(
  check: () => Promise<boolean> | boolean,
  timeoutMs: number,
  stepMs = 50,
): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    try {
      if (await check()) return true;
    } catch { /* not yet */ }
    await delay(stepMs);
  }
  return false;
}

export function peersOf(gateway: GatewayProcess): Promise<PeerView[]> {
  return getJson<PeerView[]>(gateway, "/peers");
}

/** Runs the CLI to completion (for config-error tests). */
export async function runCli(
  args: string[],
  timeoutMs = 15_000,
): Promise<{ code: number; stderr: string; stdout: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("../mod.ts", import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    env: { NO_COLOR: "1" },
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const output = await child.output();
  clearTimeout(timer);
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stderr: decoder.decode(output.stderr),
    stdout: decoder.decode(output.stdout),
  };
}

export async function stopAll(gateways: GatewayProcess[]): Promise<void> {
  await Promise.all(gateways.map((g) => stopGateway(g)));
}
