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
  console.error(
    `usage: deno task bench <${
      Object.keys(BENCHMARKS).join("|")
    }> [args]  (NAME --help: its options)`,
  );
  Deno.exit(name === "--help" ? 0 : 2);
}
if (args.includes("--help") || args.includes("-h")) {
  console.log(moduleDoc(new URL(BENCHMARKS[name]!, import.meta.url)));
  Deno.exit(0);
}
const module = await import(BENCHMARKS[name]!);
const code = await module.main(args);
Deno.exit(typeof code === "number" ? code : 0);

/** A benchmark's options are in its module comment: the text before `@example`/`@module`. */
function moduleDoc(url: URL): string {
  const source = Deno.readTextFileSync(url);
  const comment = /^\/\*\*([\s\S]*?)\*\//.exec(source)?.[1] ?? "";
  const lines = comment.split("\n").map((line) => line.replace(/^\s*\* ?/, ""));
  const end = lines.findIndex((line) => /^@(example|module)/.test(line));
  return lines.slice(0, end < 0 ? undefined : end).join("\n").trim();
}
