/**
 * twinmesh: a peer-to-peer digital-twin mesh node for industrial gateways.
 *
 * Public API: {@link createGateway} with its configuration helpers, plus the
 * CLI when run as a program (`deno run -A mod.ts --help`).
 *
 * @example
 * ```ts
 * import { createGateway, defaultConfig } from "./mod.ts";
 * const gateway = await createGateway({ ...defaultConfig(), name: "g1", dataDir: "/tmp/g1", http: "127.0.0.1:0" });
 * await gateway.stop();
 * ```
 * @module
 */
export { createGateway, type Gateway } from "./node/gateway.ts";
export {
  ConfigError,
  defaultConfig,
  type GatewayConfig,
  helpText,
  loadConfig,
  validateConfig,
} from "./node/config.ts";
export type { ArmTelemetry, AssetAdapter, AssetCommand } from "./node/assets/adapter.ts";
export type { PeerView } from "./node/mesh.ts";
export { compareTimestamps, HybridLogicalClock, type Timestamp } from "./protocols/hlc.ts";

import { createGateway } from "./node/gateway.ts";
import { ConfigError, helpText, loadConfig } from "./node/config.ts";
import { writeNewMeshKey } from "./node/mesh_key.ts";

/** After a stop signal, a gateway that has not exited by then is reported and ended. */
const HARD_EXIT_MS = 5_000;

/** Runs the CLI; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first === "help" || first === "--help" || first === "-h") {
    console.log(helpText());
    return 0;
  }
  if (first === "mesh-key") {
    const path = rest[0];
    if (!path || rest.length > 1) {
      console.error("usage: twinmesh mesh-key <file>");
      return 2;
    }
    try {
      writeNewMeshKey(path);
    } catch (err) {
      console.error(`twinmesh: cannot write mesh key ${path}: ${(err as Error).message}`);
      return 1;
    }
    console.error(
      `twinmesh: wrote a new mesh key to ${path}; copy it to every gateway and pass --mesh-key ${path}`,
    );
    return 0;
  }
  const runArgs = first === "run" ? rest : args;
  let parsed;
  try {
    parsed = loadConfig(runArgs);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`twinmesh: ${err.message}\n(see twinmesh --help)`);
      return 2;
    }
    throw err;
  }
  if (parsed.help) {
    console.log(helpText());
    return 0;
  }
  let gateway;
  try {
    gateway = await createGateway(parsed.config);
  } catch (err) {
    console.error(`twinmesh: ${(err as Error).message}`);
    return 1;
  }
  const stopped = Promise.withResolvers<void>();
  const onSignal = (signal: Deno.Signal) => () => {
    gateway.log.info("signal received", { signal });
    const hardExit = setTimeout(() => {
      gateway.log.error("shutdown did not finish in time; exiting", { afterMs: HARD_EXIT_MS });
      Deno.exit(1);
    }, HARD_EXIT_MS);
    Deno.unrefTimer(hardExit);
    gateway.stop().then(stopped.resolve, stopped.resolve);
  };
  const handlers: Array<[Deno.Signal, () => void]> = [["SIGINT", onSignal("SIGINT")], [
    "SIGTERM",
    onSignal("SIGTERM"),
  ]];
  for (const [signal, handler] of handlers) Deno.addSignalListener(signal, handler);
  await stopped.promise;
  // Signal listeners keep the event loop alive; remove them so the process can end.
  for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  return 0;
}

if (import.meta.main) {
  const code = await main(Deno.args);
  if (code !== 0) Deno.exit(code);
}
