/**
 * Tears the testbed down: every process it spawned, every `tm-*` namespace (and with them
 * every interface, bridge, nft table and route inside), stale WireGuard control sockets and
 * PID records. Works after a failed or half-finished run: it trusts nothing but the `tm-`
 * prefix and the process marker, not the state files. Logs are kept for post-mortems.
 *
 * Run: `scripts/deno.sh run -A scripts/testbed/teardown.ts [--force]` (refuses while a scenario
 * run or test holds the testbed lock, see `lock.ts`, unless `--force`).
 *
 * @module
 */

import { NAME_PREFIX, NAMESPACES_MAX, STOP_GRACE_MS } from "./constants.ts";
import { TestbedUnavailableError } from "./errors.ts";
import { ipBatch, run, sleep } from "./exec.ts";
import {
  findMarkedPids,
  forgetRecord,
  isAlive,
  listRecords,
  signalGroup,
  waitGone,
} from "./procs.ts";
import { acquireTestbedLock } from "./lock.ts";
import { type StatePaths, statePaths } from "./state.ts";

/** What teardown removed. */
export interface TeardownReport {
  processesStopped: number;
  namespacesDeleted: string[];
  socketsRemoved: number;
  elapsedMs: number;
}

/** Directory where wireguard-go keeps its control sockets (shared by all namespaces). */
const WG_SOCKET_DIR = "/var/run/wireguard";

/**
 * Removes everything the testbed made. Idempotent; safe when nothing exists.
 *
 * @example
 * ```ts
 * const report = await teardownTestbed();
 * console.log(report.namespacesDeleted);
 * ```
 */
export async function teardownTestbed(paths: StatePaths = statePaths()): Promise<TeardownReport> {
  const startedMs = performance.now();
  let processesStopped = 0;

  // 1. Recorded processes: SIGTERM to all at once, then SIGKILL to whatever is left.
  const records = (await listRecords(paths)).filter(isAlive);
  for (const record of records) signalGroup(record.pid, "SIGTERM");
  for (const record of records) {
    if (!(await waitGone(record, STOP_GRACE_MS))) signalGroup(record.pid, "SIGKILL");
    processesStopped++;
  }
  for (const record of await listRecords(paths)) await forgetRecord(paths, record.name);

  // 2. Strays that still carry the marker (their record was lost).
  const killed: number[] = [];
  for (const { pid } of findMarkedPids()) {
    signalGroup(pid, "SIGKILL");
    killed.push(pid);
    processesStopped++;
  }

  // 3. Anything else still running inside a tm-* namespace, then the namespaces.
  const namespaces = await listTestbedNamespaces();
  for (const ns of namespaces) {
    const { stdout } = await run(["ip", "netns", "pids", ns], { allowFailure: true });
    for (const pidText of stdout.split("\n").filter((line) => /^\d+$/.test(line.trim()))) {
      signalGroup(Number(pidText), "SIGKILL");
      killed.push(Number(pidText));
      processesStopped++;
    }
  }
  await waitPidsGone(killed, STOP_GRACE_MS);
  await ipBatch(null, namespaces.map((ns) => `netns del ${ns}`), { allowFailure: true });

  // 4. Interfaces in the root namespace with our prefix (setup never makes any; a crashed
  //    older run might have).
  const links = await run(["ip", "-o", "link", "show"], { allowFailure: true });
  const rootLinks = [...links.stdout.matchAll(/^\d+: ([^:@\s]+)[:@]/gm)]
    .map((match) => match[1] ?? "")
    .filter((name) => name.startsWith(NAME_PREFIX));
  await ipBatch(null, rootLinks.map((name) => `link del ${name}`), { allowFailure: true });

  // 5. Control sockets of wireguard-go instances that died without cleaning up.
  let socketsRemoved = 0;
  try {
    for (const entry of Deno.readDirSync(WG_SOCKET_DIR)) {
      if (entry.name.startsWith(NAME_PREFIX) && entry.name.endsWith(".sock")) {
        Deno.removeSync(`${WG_SOCKET_DIR}/${entry.name}`);
        socketsRemoved++;
      }
    }
  } catch {
    // No socket directory: nothing to remove.
  }

  const left = await listTestbedNamespaces();
  if (left.length > 0) {
    throw new TestbedUnavailableError(`teardown could not delete namespaces: ${left.join(" ")}`);
  }
  return {
    processesStopped,
    namespacesDeleted: namespaces,
    socketsRemoved,
    elapsedMs: Math.round(performance.now() - startedMs),
  };
}

/** Polls until every pid has exited (or is a zombie awaiting its parent), up to `timeoutMs`. */
async function waitPidsGone(pids: readonly number[], timeoutMs: number): Promise<void> {
  const pollMs = 20;
  for (let waitedMs = 0; waitedMs <= timeoutMs; waitedMs += pollMs) {
    if (pids.every((pid) => !isRunning(pid))) return;
    await sleep(pollMs);
  }
}

function isRunning(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Names of existing namespaces with the `tm-` prefix (at most {@link NAMESPACES_MAX}). */
export async function listTestbedNamespaces(): Promise<string[]> {
  const { stdout } = await run(["ip", "netns", "list"], { allowFailure: true });
  return stdout
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(NAME_PREFIX))
    .slice(0, NAMESPACES_MAX);
}

if (import.meta.main) {
  // A scenario run or test holding the testbed would be destroyed under its feet.
  const lock = Deno.args.includes("--force")
    ? undefined
    : await acquireTestbedLock("teardown CLI", 0).catch((error: Error) => {
      console.error(`testbed: ${error.message}; not tearing down (--force to do it anyway)`);
      Deno.exit(1);
    });
  const report = await teardownTestbed();
  await lock?.release();
  console.log(
    `testbed: torn down in ${report.elapsedMs} ms: ${report.namespacesDeleted.length} namespaces, ` +
      `${report.processesStopped} processes, ${report.socketsRemoved} stale sockets`,
  );
}
