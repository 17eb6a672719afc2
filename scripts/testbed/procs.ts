/**
 * Processes inside namespaces: spawn with logs and a PID record, check liveness, kill -9,
 * restart and stop. Records live in the state dir so teardown finds every process even when
 * the run that spawned it crashed.
 *
 * Each process runs in its own session (`setsid`), with stdout and stderr appended to
 * `logs/<name>.log`, and carries `TM_TESTBED_PROC=<name>` in its environment. The marker
 * survives `exec`, so a PID is only trusted while `/proc/<pid>/environ` still holds it (no
 * killing of an unrelated process that reused the PID) and stray testbed processes can be found
 * by scanning `/proc`.
 *
 * @module
 */

import { SPAWN_MARKER_TIMEOUT_MS, STOP_GRACE_MS, TRACKED_PROCESSES_MAX } from "./constants.ts";
import { assert, TestbedInputError } from "./errors.ts";
import { sleep } from "./exec.ts";
import { readJsonIfExists, type StatePaths, writeJsonAtomic } from "./state.ts";

/** Environment marker put on every spawned process. */
export const PROC_MARKER_ENV = "TM_TESTBED_PROC";

/** What is needed to (re)start one process. */
export interface ProcSpec {
  /** Unique name, used for the record and log file: `[a-z0-9._-]+`. */
  name: string;
  /** Namespace to run in, or null for the calling namespace. */
  ns: string | null;
  argv: string[];
  /** Extra environment variables. */
  env?: Record<string, string>;
  cwd?: string;
}

/** A spawned process as recorded in `procs/<name>.json`. */
export interface ProcRecord extends ProcSpec {
  pid: number;
  logPath: string;
  startedAtMs: number;
  /** How many times it was (re)started. */
  starts: number;
}

const NAME_PATTERN = /^[a-z0-9._-]{1,64}$/;

/**
 * Spawns `spec` detached from the caller and records it. The returned record's PID is the
 * process itself (`setsid`, `sh` and `ip netns exec` all exec in place).
 *
 * @example
 * ```ts
 * const record = await spawnProcess(statePaths(), {
 *   name: "probe",
 *   ns: "tm-r1-g1",
 *   argv: ["sleep", "10"],
 * });
 * ```
 */
export async function spawnProcess(paths: StatePaths, spec: ProcSpec): Promise<ProcRecord> {
  if (!NAME_PATTERN.test(spec.name)) {
    throw new TestbedInputError("process name", spec.name, "[a-z0-9._-]{1,64}");
  }
  if (spec.argv.length === 0) throw new TestbedInputError("argv", spec.argv, "a command");
  const previous = await readRecord(paths, spec.name);
  if (previous !== undefined && isAlive(previous)) {
    throw new TestbedInputError("process", spec.name, "not already running");
  }
  const count = (await listRecords(paths)).length;
  if (previous === undefined && count >= TRACKED_PROCESSES_MAX) {
    throw new TestbedInputError("tracked processes", count, `< ${TRACKED_PROCESSES_MAX}`);
  }
  await Deno.mkdir(paths.logsDir, { recursive: true });
  await Deno.mkdir(paths.procsDir, { recursive: true });
  const logPath = `${paths.logsDir}/${spec.name}.log`;
  const inner = spec.ns === null ? spec.argv : ["ip", "netns", "exec", spec.ns, ...spec.argv];
  const command = new Deno.Command("setsid", {
    args: ["sh", "-c", 'exec "$@" >>"$TM_LOG" 2>&1 </dev/null', "tm-spawn", ...inner],
    env: { ...spec.env, TM_LOG: logPath, [PROC_MARKER_ENV]: spec.name },
    ...(spec.cwd === undefined ? {} : { cwd: spec.cwd }),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  });
  const child = command.spawn();
  // Reap it if it dies while we live; never keep the caller alive for it.
  let exited = false;
  child.status.then(() => exited = true, () => exited = true);
  child.unref();
  // Until the wrappers (setsid, sh, ip netns exec) have exec'd the real program, the marker
  // may briefly be unreadable: wait for the final program so that callers can trust isAlive()
  // from the first moment.
  const wrapped = !WRAPPER_PROGRAMS.has(basename(spec.argv[0] ?? ""));
  const pollMs = 5;
  for (let waitedMs = 0; waitedMs < SPAWN_MARKER_TIMEOUT_MS; waitedMs += pollMs) {
    if (exited) break;
    const exe = exeOf(child.pid);
    const execd = !wrapped || (exe !== undefined && !WRAPPER_PROGRAMS.has(basename(exe)));
    if (execd && markerOf(child.pid) === spec.name) break;
    await sleep(pollMs);
  }
  const record: ProcRecord = {
    ...spec,
    pid: child.pid,
    logPath,
    startedAtMs: Date.now(),
    starts: (previous?.starts ?? 0) + 1,
  };
  await writeJsonAtomic(recordPath(paths, spec.name), record);
  return record;
}

/** Programs that stand between the spawner and the real program, each exec'ing in place. */
const WRAPPER_PROGRAMS = new Set(["setsid", "sh", "dash", "bash", "ip"]);

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function exeOf(pid: number): string | undefined {
  try {
    return Deno.readLinkSync(`/proc/${pid}/exe`);
  } catch {
    return undefined;
  }
}

/** True while the record's PID is alive and still carries the record's marker. */
export function isAlive(record: ProcRecord): boolean {
  return markerOf(record.pid) === record.name && !isZombie(record.pid);
}

/** The `TM_TESTBED_PROC` marker of `pid`, or undefined (gone, or not ours). */
export function markerOf(pid: number): string | undefined {
  let environ: string;
  try {
    environ = Deno.readTextFileSync(`/proc/${pid}/environ`);
  } catch {
    return undefined;
  }
  const prefix = `${PROC_MARKER_ENV}=`;
  for (const entry of environ.split("\0")) {
    if (entry.startsWith(prefix)) return entry.slice(prefix.length);
  }
  return undefined;
}

function isZombie(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Field 3 follows the ")" that closes the command name.
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return true;
  }
}

/** Sends `signal` to the process group of `pid` (each spawned process leads its own). */
export function signalGroup(pid: number, signal: Deno.Signal): void {
  assert(pid > 1, `pid ${pid} is a real process`);
  try {
    Deno.kill(-pid, signal);
  } catch {
    try {
      Deno.kill(pid, signal);
    } catch {
      // Already gone.
    }
  }
}

/**
 * kill -9 the named process (its whole group). Returns false when it was not running.
 *
 * @example
 * ```ts
 * await killHard(statePaths(), "gw-r1-g2");
 * ```
 */
export async function killHard(paths: StatePaths, name: string): Promise<boolean> {
  const record = await requireRecord(paths, name);
  if (!isAlive(record)) return false;
  signalGroup(record.pid, "SIGKILL");
  await waitGone(record, STOP_GRACE_MS);
  return true;
}

/**
 * SIGTERM, then SIGKILL after `graceMs`. Returns false when it was not running.
 */
export async function stopProcess(
  paths: StatePaths,
  name: string,
  graceMs = STOP_GRACE_MS,
): Promise<boolean> {
  const record = await readRecord(paths, name);
  if (record === undefined || !isAlive(record)) return false;
  signalGroup(record.pid, "SIGTERM");
  if (await waitGone(record, graceMs)) return true;
  signalGroup(record.pid, "SIGKILL");
  await waitGone(record, graceMs);
  return true;
}

/** Restarts the named process with its recorded spec (killing it first if it runs). */
export async function restartProcess(paths: StatePaths, name: string): Promise<ProcRecord> {
  const record = await requireRecord(paths, name);
  if (isAlive(record)) await killHard(paths, name);
  const spec: ProcSpec = { name: record.name, ns: record.ns, argv: record.argv };
  if (record.env !== undefined) spec.env = record.env;
  if (record.cwd !== undefined) spec.cwd = record.cwd;
  return await spawnProcess(paths, spec);
}

/** Polls until the process is gone; true when it went within `timeoutMs`. */
export async function waitGone(record: ProcRecord, timeoutMs: number): Promise<boolean> {
  const pollMs = 20;
  for (let waitedMs = 0; waitedMs <= timeoutMs; waitedMs += pollMs) {
    if (!isAlive(record)) return true;
    await sleep(pollMs);
  }
  return !isAlive(record);
}

/** The record of `name`, or undefined. */
export async function readRecord(paths: StatePaths, name: string): Promise<ProcRecord | undefined> {
  const value = await readJsonIfExists(recordPath(paths, name));
  return value === undefined ? undefined : parseRecord(value, name);
}

async function requireRecord(paths: StatePaths, name: string): Promise<ProcRecord> {
  const record = await readRecord(paths, name);
  if (record === undefined) throw new TestbedInputError("process", name, "a spawned process");
  return record;
}

/** Every record in the state dir (at most {@link TRACKED_PROCESSES_MAX}). */
export async function listRecords(paths: StatePaths): Promise<ProcRecord[]> {
  const records: ProcRecord[] = [];
  try {
    for await (const entry of Deno.readDir(paths.procsDir)) {
      if (!entry.isFile || !entry.name.endsWith(".json")) continue;
      if (records.length >= TRACKED_PROCESSES_MAX) break;
      const name = entry.name.slice(0, -".json".length);
      const record = await readRecord(paths, name);
      if (record !== undefined) records.push(record);
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return records;
}

/** Removes the record of `name` (after the process is gone). */
export async function forgetRecord(paths: StatePaths, name: string): Promise<void> {
  await Deno.remove(recordPath(paths, name)).catch(() => {});
}

/**
 * PIDs of every live process carrying the testbed marker, found by scanning `/proc`, so strays
 * whose record was lost are found too. Bounded by the number of entries in `/proc`.
 */
export function findMarkedPids(): Array<{ pid: number; name: string }> {
  const found: Array<{ pid: number; name: string }> = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const pid = Number(entry.name);
    if (pid === Deno.pid) continue;
    const name = markerOf(pid);
    if (name !== undefined && !isZombie(pid)) found.push({ pid, name });
  }
  return found;
}

function recordPath(paths: StatePaths, name: string): string {
  return `${paths.procsDir}/${name}.json`;
}

function parseRecord(value: unknown, name: string): ProcRecord {
  const record = value as Partial<ProcRecord>;
  if (
    typeof record !== "object" || record === null || typeof record.pid !== "number" ||
    record.name !== name || !Array.isArray(record.argv) || typeof record.logPath !== "string"
  ) {
    throw new TestbedInputError(`process record ${name}`, value, "{pid, name, argv, logPath}");
  }
  return record as ProcRecord;
}
