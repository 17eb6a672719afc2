/**
 * `deno task mesh`: a local mesh of K factories × N gateways, each a separate
 * gateway process on this host with its own data directory and HTTP port.
 * Gateways of a factory find each other by mDNS; factories are linked through
 * configured peers (each factory's first gateway dials the others' first
 * gateways, as WireGuard tunnel endpoints would be configured). Shows a live
 * table; Ctrl-C stops every gateway cleanly.
 */
import { join } from "node:path";
import {
  delay,
  type GatewayProcess,
  getJson,
  REPO_ROOT,
  spawnGateway,
  stopGateway,
  waitReady,
} from "./mesh_processes.ts";

const HELP = `deno task mesh [options]

Starts a local twinmesh mesh: K factories x N gateways as separate processes.

Options:
  --factories <k>     factories (default 2)
  --gateways <n>      gateways per factory (default 3)
  --assets <a>        simulated welding arms per gateway (default 4)
  --listen-base <p>   first libp2p TCP port (default 4101)
  --http-base <p>     first HTTP port (default 8101)
  --data-dir <dir>    parent of the gateways' data dirs (default ./data/mesh)
  --duration <s>      stop after s seconds (default: run until Ctrl-C)
  --refresh <ms>      table refresh period (default 1000)
  --help              this text

Each gateway logs to <data-dir>/<name>.log; its API is at http://127.0.0.1:<http-port>.`;

interface Options {
  factories: number;
  gateways: number;
  assets: number;
  listenBase: number;
  httpBase: number;
  dataDir: string;
  durationS: number;
  refreshMs: number;
}

function parseOptions(args: string[]): Options | null {
  const options: Options = {
    factories: 2,
    gateways: 3,
    assets: 4,
    listenBase: 4101,
    httpBase: 8101,
    dataDir: join(REPO_ROOT, "data", "mesh"),
    durationS: 0,
    refreshMs: 1000,
  };
  const numeric: Record<string, keyof Options> = {
    "--factories": "factories",
    "--gateways": "gateways",
    "--assets": "assets",
    "--listen-base": "listenBase",
    "--http-base": "httpBase",
    "--duration": "durationS",
    "--refresh": "refreshMs",
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]!;
    if (flag === "--help" || flag === "-h") return null;
    const value = args[++i];
    if (value === undefined) throw new Error(`${flag}: expected a value`);
    if (flag === "--data-dir") options.dataDir = value;
    else if (numeric[flag]) {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) {
        throw new Error(`${flag}: expected a whole number, got ${value}`);
      }
      (options[numeric[flag]] as number) = n;
    } else throw new Error(`unknown option ${flag} (see --help)`);
  }
  if (options.factories < 1 || options.gateways < 1) {
    throw new Error("need at least 1 factory and 1 gateway");
  }
  return options;
}

interface Row {
  gateway: GatewayProcess;
  lastMessages?: number;
  lastAt?: number;
  status?: Record<string, unknown>;
  rate?: number;
  error?: string;
}

export async function runMesh(args: string[]): Promise<number> {
  let options: Options | null;
  try {
    options = parseOptions(args);
  } catch (err) {
    console.error(`mesh: ${(err as Error).message}`);
    return 2;
  }
  if (!options) {
    console.log(HELP);
    return 0;
  }
  Deno.mkdirSync(options.dataDir, { recursive: true });
  const rows: Row[] = [];
  const bridges: string[] = [];
  for (let f = 0; f < options.factories; f++) {
    for (let g = 0; g < options.gateways; g++) {
      const index = f * options.gateways + g;
      const name = `f${f + 1}-g${g + 1}`;
      const listenPort = options.listenBase + index;
      // A factory's first gateway is its bridge to the other factories.
      const peers = g === 0 ? bridges.slice() : [];
      if (g === 0) bridges.push(`/ip4/127.0.0.1/tcp/${listenPort}`);
      const gateway = spawnGateway({
        name,
        factory: `factory-${f + 1}`,
        region: `region-${f + 1}`,
        dataDir: join(options.dataDir, name),
        listenPort,
        httpPort: options.httpBase + index,
        peers,
        extraArgs: ["--assets", String(options.assets)],
        logFile: join(options.dataDir, `${name}.log`),
      });
      rows.push({ gateway });
    }
  }
  console.error(`mesh: starting ${rows.length} gateways (logs in ${options.dataDir})`);
  const ready = await Promise.allSettled(rows.map((r) => waitReady(r.gateway)));
  ready.forEach((r, i) => {
    if (r.status === "rejected") {
      console.error(`mesh: ${rows[i]!.gateway.spec.name}: ${(r.reason as Error).message}`);
    }
  });

  const stop = Promise.withResolvers<void>();
  const onSignal = () => stop.resolve();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const interactive = Deno.stdout.isTerminal();
  const deadline = options.durationS > 0 ? Date.now() + options.durationS * 1000 : Infinity;
  let stopping = false;
  stop.promise.then(() => (stopping = true));
  let lastPrint = 0;
  while (!stopping && Date.now() < deadline) {
    await Promise.all(rows.map(refresh));
    // Without a terminal, print every 5 s instead of redrawing.
    if (interactive || Date.now() - lastPrint >= 5_000) {
      const table = renderTable(rows);
      if (interactive) console.log("\x1b[2J\x1b[H" + table + "\n\nCtrl-C stops all gateways.");
      else console.log(table + "\n");
      lastPrint = Date.now();
    }
    await Promise.race([delay(options.refreshMs), stop.promise]);
  }
  console.error("mesh: stopping gateways");
  const statuses = await Promise.all(rows.map((r) => stopGateway(r.gateway)));
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  const failed = statuses.filter((s) => !s.success && s.signal === null);
  console.error(
    `mesh: all ${rows.length} gateways stopped${
      failed.length ? ` (${failed.length} with errors)` : ""
    }`,
  );
  return 0;
}

async function refresh(row: Row): Promise<void> {
  try {
    const status = await getJson<Record<string, unknown>>(row.gateway, "/status");
    const messages = messageCount(status);
    const now = performance.now();
    if (row.lastMessages !== undefined && row.lastAt !== undefined) {
      row.rate = (messages - row.lastMessages) / ((now - row.lastAt) / 1000);
    }
    row.lastMessages = messages;
    row.lastAt = now;
    row.status = status;
    row.error = undefined;
  } catch (err) {
    row.error = (err as Error).message.slice(0, 40);
  }
}

function messageCount(status: Record<string, unknown>): number {
  const stats = (status.stats ?? {}) as Record<string, number>;
  return (stats.pubsubMessagesIn ?? 0) + (stats.pubsubMessagesOut ?? 0) + (stats.estopFrames ?? 0);
}

const COLUMNS: Array<[string, number, (row: Row) => string]> = [
  ["gateway", 8, (r) => r.gateway.spec.name],
  ["factory", 10, (r) => r.gateway.spec.factory],
  ["http", 6, (r) => String(r.gateway.spec.httpPort)],
  ["peers", 5, (r) => String(r.status?.peers ?? "-")],
  ["assets", 6, (r) => String(r.status?.assets ?? "-")],
  ["msg/s", 7, (r) => (r.rate === undefined ? "-" : r.rate.toFixed(0))],
  ["twins", 5, (r) => String(r.status?.twins ?? "-")],
  ["latched", 7, (r) => String(r.status?.latched ?? "-")],
  ["anomalies", 9, (r) => String(r.status?.anomalies ?? "-")],
  ["state", 10, (r) => (r.error ? "DOWN" : r.status ? "up" : "starting")],
];

export function renderTable(rows: Row[]): string {
  const header = COLUMNS.map(([name, width]) => name.padEnd(width)).join("  ");
  const lines = rows.map((row) =>
    COLUMNS.map(([, width, cell]) => cell(row).padEnd(width)).join("  ")
  );
  return [
    `twinmesh local mesh — ${new Date().toISOString().slice(11, 19)}`,
    header,
    "-".repeat(header.length),
    ...lines,
  ]
    .join("\n");
}

if (import.meta.main) Deno.exit(await runMesh(Deno.args));
