/**
 * `deno task bench NAME [args]`: runs one benchmark. Each prints a human
 * table and, as its last stdout line, one JSON object with the figures its
 * issue names.
 */
const BENCHMARKS: Record<string, string> = {
  foundation: "./bench_foundation.ts",
  twins: "./bench_twins.ts",
  reconcile: "./bench_reconcile.ts",
  estop: "./bench_estop.ts",
  detect: "./bench_detect.ts",
  partition: "./bench_partition.ts",
  history: "./bench_history.ts",
};

const [name, ...args] = Deno.args;
if (!name || name === "--help" || !(name in BENCHMARKS)) {
  console.error(`usage: deno task bench <${Object.keys(BENCHMARKS).join("|")}> [args]`);
  Deno.exit(name === "--help" ? 0 : 2);
}
const module = await import(BENCHMARKS[name]!);
const code = await module.main(args);
Deno.exit(typeof code === "number" ? code : 0);
