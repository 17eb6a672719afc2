/**
 * `deno task bench history`: what a long-lived twin costs a peer. An owner
 * writes an arm's measured state (6 joint angles and a runtime counter) every
 * 5 s of simulated time; a peer receives each change as gossip. The figure is
 * the peer's time to take one change in (decode, check, apply), over the whole
 * simulated span, with epochs (as gateways run) and, for contrast and over a
 * shorter span, without them (history never trimmed).
 *
 * Applying a remote change costs time that grows with the ops of the key it
 * writes (in Automerge 3.5, of the map it writes), so without epochs the cost
 * climbs all day; with them it stays flat. Prints a table, then as the last
 * line one JSON object.
 *
 * Options: `--hours n` (24, with epochs), `--hours-without n` (4),
 * `--interval-s n` (5, the gateway's default `--twin-summary-ms`).
 *
 * @example
 * ```ts ignore
 * import { main } from "./bench_history.ts";
 * await main(["--hours", "2", "--hours-without", "1"]);
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import { decodeGossip, encodeGossip } from "../protocols/twin_codec.ts";
import { type TwinWrite, WELDING_ARM_AXES } from "../protocols/twin_model.ts";
import { TwinReplica } from "../protocols/twin_replica.ts";

interface Run {
  hours: number;
  writes: number;
  /** Peer's time per received change, ms, in write order. */
  applyMs: number[];
  docOpsMax: number;
  epochs: number;
  seconds: number;
}

function replica(name: string, wall: { nowMs: number }, epochs: boolean): TwinReplica {
  const clock = new HybridLogicalClock({ node: name, wallClockMs: () => wall.nowMs });
  const init = epochs ? {} : { rebaseAfterOps: Number.MAX_SAFE_INTEGER };
  return new TwinReplica(init, { clock, gatewayName: name, factory: "plant-a" });
}

function measuredWrite(i: number, intervalS: number): TwinWrite[] {
  const joints = WELDING_ARM_AXES.map((axis, a) => ({
    op: "set" as const,
    field: `joints.${axis}`,
    value: Math.round(Math.sin(i * 0.01 + a) * 3000) / 1000,
  }));
  return [...joints, { op: "increment", field: "runtimeMs", delta: intervalS * 1000 }];
}

function simulate(hours: number, intervalS: number, epochs: boolean, label: string): Run {
  const wall = { nowMs: 1_700_000_000_000 };
  const owner = replica("gw-owner", wall, epochs);
  const peer = replica("gw-peer", wall, epochs);
  owner.create("arm-1", "welding-arm");
  const writes = Math.round((hours * 3600) / intervalS);
  const applyMs: number[] = [];
  let docOpsMax = 0;
  const started = performance.now();
  for (let i = 0; i < writes; i++) {
    wall.nowMs += intervalS * 1000;
    owner.write("arm-1", measuredWrite(i, intervalS), "owner");
    for (const { docId, factory, changes } of owner.flush()) {
      const bytes = encodeGossip({ factory, docs: [{ docId, changes }] });
      const t = performance.now();
      peer.ingestGossip(decodeGossip(bytes));
      applyMs.push(performance.now() - t);
    }
    docOpsMax = Math.max(docOpsMax, peer.doc("arm-1").opCount());
    if ((i + 1) % Math.ceil(writes / 10) === 0) {
      const done = Math.round(((i + 1) / writes) * 100);
      console.error(`bench history (${label}): ${done}% of ${hours} h simulated`);
    }
  }
  const expected = writes * intervalS * 1000;
  const got = peer.state("arm-1").fields.runtimeMs?.value;
  if (got !== expected) throw new Error(`bench history: peer runtime ${got}, expected ${expected}`);
  return {
    hours,
    writes,
    applyMs,
    docOpsMax,
    epochs: peer.epochOf("arm-1"),
    seconds: (performance.now() - started) / 1000,
  };
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;

/** Entry point for `deno task bench history`. */
export function main(args: string[]): void {
  const { values } = parseArgs({
    args: args.filter((a) => a !== "history"),
    options: {
      hours: { type: "string", default: "24" },
      "hours-without": { type: "string", default: "4" },
      "interval-s": { type: "string", default: "5" },
    },
  });
  const number = (name: string, text: string) => {
    const value = Number(text);
    if (!(value > 0)) throw new Error(`--${name}: expected a positive number, got ${text}`);
    return value;
  };
  const hours = number("hours", values.hours);
  const hoursWithout = number("hours-without", values["hours-without"]);
  const intervalS = number("interval-s", values["interval-s"]);
  simulate(0.2, intervalS, true, "warm-up"); // JIT and wasm, not reported
  const withEpochs = simulate(hours, intervalS, true, "epochs");
  const without = simulate(hoursWithout, intervalS, false, "no epochs");

  const lastHour = (run: Run) => run.applyMs.slice(-Math.round(3600 / intervalS));
  console.log(
    `\n# twin history: one arm written every ${intervalS} s (6 joints + a counter), ` +
      "peer's time per received change",
  );
  console.log(
    "| | simulated | writes | epochs | max ops | p50 ms | p99 ms | last hour p99 ms | run s |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const [name, run] of [["with epochs", withEpochs], ["without", without]] as const) {
    console.log(
      `| ${name} | ${run.hours} h | ${run.writes} | ${run.epochs} | ${run.docOpsMax} | ` +
        `${round(percentile(run.applyMs, 50))} | ${round(percentile(run.applyMs, 99))} | ` +
        `${round(percentile(lastHour(run), 99))} | ${run.seconds.toFixed(1)} |`,
    );
  }
  console.log(JSON.stringify({
    hours: withEpochs.hours,
    writes: withEpochs.writes,
    apply_p50_ms: round(percentile(withEpochs.applyMs, 50)),
    apply_p99_ms: round(percentile(withEpochs.applyMs, 99)),
    apply_last_hour_p99_ms: round(percentile(lastHour(withEpochs), 99)),
    doc_ops_max: withEpochs.docOpsMax,
    epochs: withEpochs.epochs,
    without_epochs_hours: without.hours,
    without_epochs_last_hour_p99_ms: round(percentile(lastHour(without), 99)),
    without_epochs_doc_ops_max: without.docOpsMax,
  }));
}

if (import.meta.main) main(Deno.args);
