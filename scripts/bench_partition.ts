/**
 * `deno task bench partition`: runs the testbed scenarios `partition`, `crash` and `wan`
 * (each on a fresh testbed), prints a human table, then as the LAST stdout line one JSON object
 * `{"writes","lost_writes","stops","lost_stops","converge_s","crash_restarts",
 * "lost_after_crash","wan_update_p99_ms","local_estop_p99_ms"}`.
 *
 * Targets: zero lost of anything; converge ≤ 10 s after the heal of a 30 s cut; local e-stop
 * p99 unchanged by WAN trouble. Needs root and network namespaces; where they are missing,
 * or the gateway (`mod.ts`) is not there, every figure is null and the table says why.
 *
 * Options: `--short` (CI-sized: 2×2 testbed, 5 s cut, 4 crashes), `--seed n`,
 * `--only partition,crash,wan`.
 *
 * @example
 * ```ts
 * import { main } from "./bench_partition.ts";
 * await main(["--short"]);
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  printResult,
  runScenario,
  type ScenarioName,
  type ScenarioResult,
  SCENARIOS,
} from "./testbed/scenarios.ts";

/** The report's JSON line. */
export interface PartitionReport {
  writes: number | null;
  lost_writes: number | null;
  stops: number | null;
  lost_stops: number | null;
  converge_s: number | null;
  crash_restarts: number | null;
  lost_after_crash: number | null;
  wan_update_p99_ms: number | null;
  local_estop_p99_ms: number | null;
}

function figure(result: ScenarioResult | undefined, key: string): number | null {
  const value = result?.figures[key];
  return typeof value === "number" ? value : null;
}

function sum(...values: Array<number | null>): number | null {
  const known = values.filter((v): v is number => v !== null);
  return known.length === 0 ? null : known.reduce((s, v) => s + v, 0);
}

/** Builds the report from the scenario results (writes and stops summed over partition+crash). */
export function buildReport(results: Map<ScenarioName, ScenarioResult>): PartitionReport {
  const partition = results.get("partition");
  const crash = results.get("crash");
  const wan = results.get("wan");
  return {
    writes: sum(figure(partition, "writes"), figure(crash, "writes")),
    lost_writes: sum(figure(partition, "lost_writes"), figure(crash, "lost_writes")),
    stops: sum(figure(partition, "stops"), figure(crash, "stops")),
    lost_stops: sum(figure(partition, "lost_stops"), figure(crash, "lost_stops")),
    converge_s: figure(partition, "converge_s"),
    crash_restarts: figure(crash, "crash_restarts"),
    lost_after_crash: figure(crash, "lost_after_crash"),
    wan_update_p99_ms: figure(wan, "wan_update_p99_ms"),
    local_estop_p99_ms: figure(wan, "local_estop_p99_ms"),
  };
}

/** Entry point for the bench dispatcher and for direct runs. */
export async function main(args: string[]): Promise<PartitionReport> {
  const { values } = parseArgs({
    args: args.filter((a) => a !== "partition"),
    options: {
      short: { type: "boolean", default: false },
      seed: { type: "string", default: "1" },
      only: { type: "string", default: SCENARIOS.join(",") },
    },
  });
  const names = values.only.split(",").filter((n): n is ScenarioName =>
    (SCENARIOS as readonly string[]).includes(n)
  );
  const results = new Map<ScenarioName, ScenarioResult>();
  for (const name of names) {
    const result = await runScenario(name, { short: values.short, seed: Number(values.seed) });
    results.set(name, result);
  }
  console.log("\n# partition bench" + (values.short ? " (short)" : ""));
  for (const result of results.values()) printResult(result);
  const report = buildReport(results);
  console.log("");
  console.log("| figure | value | target |");
  console.log("| --- | --- | --- |");
  const targets: Record<string, string> = {
    lost_writes: "0",
    lost_stops: "0",
    converge_s: "≤ 10",
    lost_after_crash: "0",
    local_estop_p99_ms: "= clean WAN",
  };
  for (const [key, value] of Object.entries(report)) {
    console.log(`| ${key} | ${value ?? "n/a"} | ${targets[key] ?? ""} |`);
  }
  console.log(JSON.stringify(report));
  // The JSON line stays last; a failed scenario still fails the command.
  if ([...results.values()].some((r) => r.verdict === "FAIL")) Deno.exitCode = 1;
  return report;
}

if (import.meta.main) {
  await main(Deno.args);
}
