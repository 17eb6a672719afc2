/**
 * Running short administrative commands (`ip`, `nft`, `wg`) with a timeout and a clear error.
 *
 * @module
 */

import { COMMAND_TIMEOUT_MS } from "./constants.ts";
import { CommandError } from "./errors.ts";

/** Options of {@link run}. */
export interface RunOptions {
  /** Text written to the command's stdin. */
  stdin?: string;
  /** Kill the command after this many ms (default {@link COMMAND_TIMEOUT_MS}). */
  timeoutMs?: number;
  /** Return the result instead of throwing when the exit code is non-zero. */
  allowFailure?: boolean;
}

/** What a finished command printed. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `argv` and returns its output; throws {@link CommandError} on failure or timeout
 * unless `allowFailure` is set (a timeout always throws).
 *
 * @example
 * ```ts
 * const { stdout } = await run(["ip", "netns", "list"]);
 * ```
 */
export async function run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [program, ...args] = argv;
  if (program === undefined) throw new CommandError(argv, null, "empty command", false);
  const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
  const signal = AbortSignal.timeout(timeoutMs);
  const command = new Deno.Command(program, {
    args,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    signal,
  });
  let child: Deno.ChildProcess;
  try {
    child = command.spawn();
  } catch (error) {
    throw new CommandError(argv, null, `cannot start: ${(error as Error).message}`, false);
  }
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const output = await child.output();
  const decoder = new TextDecoder();
  const result = {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
  if (signal.aborted) throw new CommandError(argv, null, result.stderr, true);
  if (result.code !== 0 && options.allowFailure !== true) {
    throw new CommandError(argv, result.code, result.stderr || result.stdout, false);
  }
  return result;
}

/**
 * Runs `argv` inside network namespace `ns` (`ip netns exec ns …`).
 *
 * @example
 * ```ts
 * await runIn("tm-r1-g1", ["ip", "addr"]);
 * ```
 */
export function runIn(
  ns: string,
  argv: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  return run(["ip", "netns", "exec", ns, ...argv], options);
}

/**
 * Runs a list of `ip` commands in one `ip -batch` call (one process instead of dozens),
 * inside namespace `ns` (`ip -n ns`) or in the calling namespace when `ns` is null.
 *
 * @example
 * ```ts
 * await ipBatch("tm-r1-rt", ["link add br-lan type bridge", "link set br-lan up"]);
 * ```
 */
export async function ipBatch(
  ns: string | null,
  lines: readonly string[],
  options: RunOptions = {},
): Promise<void> {
  if (lines.length === 0) return;
  const argv = ns === null ? ["ip", "-batch", "-"] : ["ip", "-n", ns, "-batch", "-"];
  await run(argv, { ...options, stdin: lines.join("\n") + "\n" });
}

/** True when `program` is on the PATH. */
export async function hasProgram(program: string): Promise<boolean> {
  const result = await run(["sh", "-c", `command -v ${program}`], { allowFailure: true });
  return result.code === 0;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
