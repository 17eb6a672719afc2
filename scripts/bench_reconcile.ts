/**
 * Reconcile benchmark: two replicas of the same twins diverge by N twin
 * field writes each (while partitioned), then heal with one real sync
 * session (`/twinmesh/twin-sync/6.0.0` frames over an in-process libp2p
 * stream pair). Prints a table, then as the last line one JSON object for the
 * largest N.
 *
 * What a "change" is: a twin field write (one joint angle, one setpoint...).
 * Writes are batched as the service batches them: every publish interval each
 * arm commits one Automerge change holding that interval's writes (here a
 * 6-axis joint update = 6 field writes). Both units are reported.
 *
 * Epochs are off by default, so the figure is Automerge's history sync of
 * every divergent change, comparable across versions. With `--epochs`, both
 * replicas start new epochs as gateways do (TwinReplica's REBASE_AFTER_OPS):
 * the side behind then adopts the other's short document and carries its own
 * state over, instead of syncing the whole history.
 *
 * Usage: `deno task bench reconcile [--n 10000,100000] [--quick] [--arms 20] [--writes-per-change 6] [--epochs]`
 *
 * @example
 * ```ts ignore
 * import { main } from "./bench_reconcile.ts";
 * await main(["--quick"]);
 * ```
 */
import { streamPair } from "@libp2p/utils";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import { WELDING_ARM_AXES } from "../protocols/twin_model.ts";
import { TwinReplica } from "../protocols/twin_replica.ts";
import { runTwinSyncSession, TwinSyncSession } from "../protocols/twin_sync.ts";

interface Options {
  sizes: number[];
  arms: number;
  writesPerChange: number;
  epochs: boolean;
}

interface Row {
  writesPerSide: number;
  divergentWrites: number;
  divergentChanges: number;
  reconcileS: number;
  writesPerS: number;
  changesPerS: number;
  wireBytes: number;
  buildS: number;
}

function parseArgs(args: string[]): Options {
  const options: Options = {
    sizes: [10_000, 100_000],
    arms: 20,
    writesPerChange: 6,
    epochs: false,
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const value = args[i + 1];
    if (arg === "--quick") options.sizes = [2_000, 10_000];
    else if (arg === "--epochs") options.epochs = true;
    else if (arg === "--n" && value) {
      options.sizes = value.split(",").map(Number);
      i++;
    } else if (arg === "--arms" && value) {
      options.arms = Number(value);
      i++;
    } else if (arg === "--writes-per-change" && value) {
      options.writesPerChange = Number(value);
      i++;
    } else throw new Error(`bench reconcile: unknown argument ${arg}`);
  }
  for (const n of [...options.sizes, options.arms, options.writesPerChange]) {
    if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`bench reconcile: bad number ${n}`);
  }
  if (options.writesPerChange > WELDING_ARM_AXES.length) {
    throw new Error(`--writes-per-change is at most ${WELDING_ARM_AXES.length} (one per axis)`);
  }
  return options;
}

function replica(name: string, wall: { nowMs: number }, epochs: boolean): TwinReplica {
  const clock = new HybridLogicalClock({ node: name, wallClockMs: () => wall.nowMs });
  // Without epochs: a bound no run reaches.
  const init = epochs ? {} : { rebaseAfterOps: Number.MAX_SAFE_INTEGER };
  return new TwinReplica(init, { clock, gatewayName: name, factory: "plant-a" });
}

async function syncOverStream(a: TwinReplica, b: TwinReplica): Promise<number> {
  // A high capacity keeps the mock stream from modelling a slow link; the
  // session's own round limit does the flow control.
  const [outbound, inbound] = await streamPair({ delay: 0, capacity: 1_000_000 });
  const [left, right] = await Promise.all([
    runTwinSyncSession(outbound, new TwinSyncSession("initiator", a)),
    runTwinSyncSession(inbound, new TwinSyncSession("responder", b)),
  ]);
  return left.bytesSent + right.bytesSent;
}

/** Writes `writes` field writes per replica, batched like the service does. */
function diverge(sides: TwinReplica[], arms: string[], writes: number, perChange: number): number {
  let changes = 0;
  sides.forEach((side, s) => {
    let done = 0;
    let tick = 0;
    while (done < writes) {
      for (const arm of arms) {
        if (done >= writes) break;
        const count = Math.min(perChange, writes - done);
        const batch = [];
        for (let axis = 0; axis < count; axis++) {
          const value = Math.sin(tick * 0.01 + axis + s) * 3;
          batch.push({ op: "set" as const, field: `joints.${WELDING_ARM_AXES[axis]}`, value });
        }
        side.write(arm, batch, "owner");
        done += count;
      }
      changes += side.flush().reduce((n, f) => n + f.changes.length, 0);
      tick++;
    }
  });
  return changes;
}

async function runOnce(n: number, options: Options): Promise<Row> {
  const wall = { nowMs: 1_700_000_000_000 };
  const a = replica("gw-a", wall, options.epochs);
  const b = replica("gw-b", wall, options.epochs);
  const arms = Array.from({ length: options.arms }, (_, i) => `arm-${i}`);
  for (const arm of arms) a.create(arm, "welding-arm");
  a.flush();
  await syncOverStream(a, b); // both start from the same twins
  const buildStart = performance.now();
  const changes = diverge([a, b], arms, n, options.writesPerChange);
  const buildS = (performance.now() - buildStart) / 1000;
  const start = performance.now();
  const wireBytes = await syncOverStream(a, b);
  const reconcileS = (performance.now() - start) / 1000;
  for (const arm of arms) {
    if (a.doc(arm).heads().join() !== b.doc(arm).heads().join()) {
      throw new Error(`bench reconcile: ${arm} did not converge`);
    }
  }
  return {
    writesPerSide: n,
    divergentWrites: 2 * n,
    divergentChanges: changes,
    reconcileS,
    writesPerS: (2 * n) / reconcileS,
    changesPerS: changes / reconcileS,
    wireBytes,
    buildS,
  };
}

function table(rows: Row[], options: Options): string {
  const header = [
    "writes/side",
    "divergent writes",
    "automerge changes",
    "reconcile s",
    "writes/s",
    "changes/s",
    "wire MB",
    "build s",
  ];
  const lines = rows.map((r) => [
    String(r.writesPerSide),
    String(r.divergentWrites),
    String(r.divergentChanges),
    r.reconcileS.toFixed(2),
    Math.round(r.writesPerS).toString(),
    Math.round(r.changesPerS).toString(),
    (r.wireBytes / 1e6).toFixed(2),
    r.buildS.toFixed(2),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join("  ");
  return [
    `twin reconcile: ${options.arms} arms, ${options.writesPerChange} field writes per Automerge change, ` +
    `one sync session over a libp2p stream pair, epochs ${options.epochs ? "on" : "off"}`,
    fmt(header),
    ...lines.map(fmt),
  ].join("\n");
}

/** Entry point for `deno task bench reconcile`. */
export async function main(args: string[]): Promise<void> {
  const options = parseArgs(args);
  await runOnce(1_000, options); // warm-up: wasm compilation and JIT, not reported
  const rows: Row[] = [];
  for (const n of options.sizes) rows.push(await runOnce(n, options));
  console.log(table(rows, options));
  const largest = rows.reduce((best, r) => (r.writesPerSide > best.writesPerSide ? r : best));
  console.log(JSON.stringify({
    divergent_changes: largest.divergentWrites,
    reconcile_s: Number(largest.reconcileS.toFixed(3)),
    changes_per_s: Math.round(largest.writesPerS),
    wire_bytes: largest.wireBytes,
    unit: "twin field writes",
    automerge_changes: largest.divergentChanges,
    automerge_changes_per_s: Math.round(largest.changesPerS),
    arms: options.arms,
    writes_per_change: options.writesPerChange,
    epochs: options.epochs,
  }));
}

if (import.meta.main) await main(Deno.args);
