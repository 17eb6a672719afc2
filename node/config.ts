/**
 * Gateway configuration: embedded defaults, overridden by a JSON config file,
 * then by `TWINMESH_*` environment variables, then by command-line flags.
 * Everything is validated before the gateway starts; a bad value produces a
 * {@link ConfigError} that names the field and the expected form.
 */
import { multiaddr } from "@multiformats/multiaddr";
import { LOG_LEVELS, type LogLevel } from "./log.ts";

export type SafeState = "stop" | "hold";

/** The whole configuration of one gateway. */
export interface GatewayConfig {
  /** Gateway name, unique in its factory; asset ids are `<name>.arm-<i>`. */
  name: string;
  factory: string;
  region: string;
  /** Holds the identity key, the SQLite database and the lock file. */
  dataDir: string;
  /** libp2p listen multiaddrs. */
  listen: string[];
  /** HTTP API address `host:port`; port 0 picks a free port. */
  http: string;
  /** Configured peers (other regions, through the WireGuard tunnel). */
  peers: string[];
  /** Pre-shared mesh key file (libp2p private network); none = open mesh. */
  meshKeyFile: string | null;
  /** Discover the factory's other gateways on the LAN. */
  mdns: boolean;
  /** Number of simulated welding arms this gateway drives. */
  assets: number;
  /** Telemetry rate per simulated arm. */
  telemetryHz: number;
  /**
   * Interval of the owner's measured-state twin write (joints, counters, a
   * min/mean/max summary of the interval). Every write is an Automerge
   * change that each replica applies and keeps, so this sets the mesh's
   * steady twin load.
   */
  twinSummaryMs: number;
  /** Probability per second that a simulated arm develops a fault. */
  faultRatePerS: number;
  logLevel: LogLevel;
  /**
   * TCP port of the e-stop thread's own libp2p node (0 = any free port). It
   * listens on the hosts of `listen` and is announced to peers in identify.
   */
  estopPort: number;
  /**
   * Run the e-stop thread at raised priority (nice -20) so a stop preempts
   * other work; needs CAP_SYS_NICE, else it warns and runs normally. (The
   * name is from when this meant Linux's real-time class; see estop_worker.ts.)
   */
  estopRealtime: boolean;
  /** Peer IDs holding the operator role (may reset e-stops). */
  operators: string[];
  /** Peer IDs of safety supervisors watched by the e-stop watchdog. */
  supervisors: string[];
  /** Time without any supervisor link before the safe state is entered; 0 = off. */
  watchdogMs: number;
  safeState: SafeState;
  /** Factories whose twins this gateway replicates besides its own. */
  replicate: string[];
  /** Raise an e-stop when a detector reports an anomaly (off by default). */
  stopOnAnomaly: boolean;
}

/** Embedded defaults: a gateway starts with no config at all. */
export function defaultConfig(): GatewayConfig {
  return {
    name: sanitizeName(safeHostname()),
    factory: "factory-1",
    region: "region-1",
    dataDir: "./twinmesh-data",
    listen: ["/ip4/0.0.0.0/tcp/4001"],
    http: "127.0.0.1:8080",
    peers: [],
    meshKeyFile: null,
    mdns: true,
    assets: 4,
    telemetryHz: 100,
    twinSummaryMs: 5_000,
    faultRatePerS: 0.002,
    logLevel: "info",
    estopPort: 0,
    estopRealtime: true,
    operators: [],
    supervisors: [],
    watchdogMs: 0,
    safeState: "stop",
    replicate: [],
    stopOnAnomaly: false,
  };
}

/** A configuration value that is missing, malformed or out of range. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly field: string, readonly expected: string, readonly got?: unknown) {
    super(
      got === undefined
        ? `config: ${field}: expected ${expected}`
        : `config: ${field}: expected ${expected}, got ${JSON.stringify(got)}`,
    );
  }
}

/** The command-line surface: each flag, its config field and help text. */
interface FlagSpec {
  flag: string;
  field: keyof GatewayConfig;
  kind: "string" | "number" | "list" | "bool" | "negate";
  arg?: string;
  help: string;
}

/**
 * V8 flags every gateway runs with (`deno run --v8-flags=…`, baked into the
 * compiled binary). A 2 MB young-generation semi-space instead of V8's 16 MB:
 * the gateway's allocations are short-lived telemetry and frames, so a small
 * young generation is scavenged often and quickly. Idle RSS of one gateway:
 * 159 MB with the default, 143 MB with this; idle CPU unchanged (0.04 cores).
 * deno.json's `gateway` and `compile` tasks repeat it (a test checks).
 */
export const GATEWAY_V8_FLAGS = "--max-semi-space-size=2";

/**
 * glibc malloc arenas a gateway process may use (environment
 * `MALLOC_ARENA_MAX`, read by glibc at process start, so it is set by whoever
 * starts the gateway: the `gateway` task, the mesh and benchmark scripts, the
 * service unit in the README). By default glibc lets a process's threads
 * spread over up to 8 arenas per core, and an arena keeps much of what was
 * freed in it: after 30 s idle a gateway held 20 MB in thread arenas besides
 * the main one, and its RSS had risen 6-9 MB since the 10th second, all of it
 * in arenas. With 2 arenas `bench foundation`'s steady idle RSS is 147.6 MB
 * instead of 153.5 (1 arena: 145.3; `bench estop` unchanged).
 */
export const GATEWAY_MALLOC_ARENA_MAX = "2";

export const FLAGS: readonly FlagSpec[] = [
  { flag: "--name", field: "name", kind: "string", arg: "<name>", help: "gateway name" },
  {
    flag: "--factory",
    field: "factory",
    kind: "string",
    arg: "<name>",
    help: "factory (LAN) it belongs to",
  },
  {
    flag: "--region",
    field: "region",
    kind: "string",
    arg: "<name>",
    help: "region it belongs to",
  },
  {
    flag: "--data-dir",
    field: "dataDir",
    kind: "string",
    arg: "<dir>",
    help: "identity, database, lock",
  },
  {
    flag: "--listen",
    field: "listen",
    kind: "list",
    arg: "<multiaddr>",
    help: "libp2p listen address (repeatable)",
  },
  { flag: "--http", field: "http", kind: "string", arg: "<host:port>", help: "HTTP API address" },
  {
    flag: "--peer",
    field: "peers",
    kind: "list",
    arg: "<multiaddr>",
    help: "configured peer (repeatable)",
  },
  {
    flag: "--mesh-key",
    field: "meshKeyFile",
    kind: "string",
    arg: "<file>",
    help: "pre-shared mesh key file",
  },
  { flag: "--no-mdns", field: "mdns", kind: "negate", help: "disable LAN discovery" },
  { flag: "--assets", field: "assets", kind: "number", arg: "<n>", help: "simulated welding arms" },
  {
    flag: "--telemetry-hz",
    field: "telemetryHz",
    kind: "number",
    arg: "<hz>",
    help: "telemetry rate per arm",
  },
  {
    flag: "--twin-summary-ms",
    field: "twinSummaryMs",
    kind: "number",
    arg: "<ms>",
    help: "measured-state twin write interval (summary window)",
  },
  {
    flag: "--fault-rate",
    field: "faultRatePerS",
    kind: "number",
    arg: "<p>",
    help: "injected faults per arm per second",
  },
  {
    flag: "--log-level",
    field: "logLevel",
    kind: "string",
    arg: "<level>",
    help: LOG_LEVELS.join("|"),
  },
  {
    flag: "--estop-port",
    field: "estopPort",
    kind: "number",
    arg: "<port>",
    help: "e-stop thread's libp2p TCP port (0 = any free port, announced to peers)",
  },
  {
    flag: "--no-estop-realtime",
    field: "estopRealtime",
    kind: "negate",
    help: "keep the e-stop thread at normal priority",
  },
  {
    flag: "--operator",
    field: "operators",
    kind: "list",
    arg: "<peerId>",
    help: "peer allowed to reset stops (repeatable)",
  },
  {
    flag: "--supervisor",
    field: "supervisors",
    kind: "list",
    arg: "<peerId>",
    help: "safety supervisor (repeatable)",
  },
  {
    flag: "--watchdog-ms",
    field: "watchdogMs",
    kind: "number",
    arg: "<ms>",
    help: "supervisor-loss time before safe state (0 = off)",
  },
  {
    flag: "--safe-state",
    field: "safeState",
    kind: "string",
    arg: "stop|hold",
    help: "watchdog safe state",
  },
  {
    flag: "--replicate",
    field: "replicate",
    kind: "list",
    arg: "<factory>",
    help: "also replicate this factory's twins (repeatable)",
  },
  {
    flag: "--stop-on-anomaly",
    field: "stopOnAnomaly",
    kind: "bool",
    help: "raise an e-stop on detected anomalies",
  },
];

/** Environment variable for a field: `dataDir` → `TWINMESH_DATA_DIR`. */
export function envName(field: string): string {
  return "TWINMESH_" + field.replace(/[A-Z]/g, (c) => "_" + c).toUpperCase();
}

/** Result of parsing a command line: the config, or a request for help. */
export interface ParsedArgs {
  config: GatewayConfig;
  help: boolean;
}

/**
 * Builds the configuration from defaults, `--config <file>` (JSON), the
 * environment and flags, then validates it. Throws {@link ConfigError}.
 */
export function loadConfig(
  args: string[],
  env: Record<string, string> = Deno.env.toObject(),
): ParsedArgs {
  const config = defaultConfig();
  const flagValues: Partial<Record<keyof GatewayConfig, unknown>> = {};
  let configFile: string | undefined = env["TWINMESH_CONFIG"];
  let help = false;

  for (let i = 0; i < args.length; i++) {
    const raw = args[i]!;
    if (raw === "--help" || raw === "-h") {
      help = true;
      continue;
    }
    const eq = raw.indexOf("=");
    const flag = eq > 0 ? raw.slice(0, eq) : raw;
    const inlineValue = eq > 0 ? raw.slice(eq + 1) : undefined;
    const takeValue = (): string => {
      if (inlineValue !== undefined) return inlineValue;
      const value = args[++i];
      if (value === undefined) throw new ConfigError(flag, "a value after the flag");
      return value;
    };
    if (flag === "--config") {
      configFile = takeValue();
      continue;
    }
    const spec = FLAGS.find((f) => f.flag === flag);
    if (!spec) {
      throw new ConfigError(raw, `a known flag (see --help)`);
    }
    if (spec.kind === "negate") flagValues[spec.field] = false;
    else if (spec.kind === "bool") flagValues[spec.field] = true;
    else if (spec.kind === "list") {
      const list = (flagValues[spec.field] as string[] | undefined) ?? [];
      list.push(takeValue());
      flagValues[spec.field] = list;
    } else if (spec.kind === "number") flagValues[spec.field] = parseNumber(spec.flag, takeValue());
    else flagValues[spec.field] = takeValue();
  }
  if (help) return { config, help };

  if (configFile !== undefined) Object.assign(config, readConfigFile(configFile));
  Object.assign(config, readEnv(env));
  Object.assign(config, flagValues);
  validateConfig(config);
  return { config, help };
}

function parseNumber(field: string, text: string): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value)) throw new ConfigError(field, "a number", text);
  return value;
}

function readConfigFile(path: string): Partial<GatewayConfig> {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    throw new ConfigError("--config", `a readable JSON file (${(err as Error).message})`, path);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(path, `valid JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError(path, "a JSON object of config fields");
  }
  const known = new Set(Object.keys(defaultConfig()));
  for (const key of Object.keys(parsed)) {
    if (!known.has(key)) {
      throw new ConfigError(`${path}: ${key}`, `one of ${[...known].join(", ")}`);
    }
  }
  return parsed as Partial<GatewayConfig>;
}

function readEnv(env: Record<string, string>): Partial<GatewayConfig> {
  const out: Record<string, unknown> = {};
  for (const [field, fallback] of Object.entries(defaultConfig())) {
    const value = env[envName(field)];
    if (value === undefined) continue;
    const name = envName(field);
    if (Array.isArray(fallback)) out[field] = value.split(",").map((s) => s.trim()).filter(Boolean);
    else if (typeof fallback === "number") out[field] = parseNumber(name, value);
    else if (typeof fallback === "boolean") {
      if (!["true", "false", "1", "0"].includes(value)) {
        throw new ConfigError(name, "true or false", value);
      }
      out[field] = value === "true" || value === "1";
    } else out[field] = value;
  }
  return out;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const NAME_FORM = "1-63 letters, digits, '-' or '_'";

/** Throws {@link ConfigError} naming the first bad field. */
export function validateConfig(c: GatewayConfig): void {
  for (const field of ["name", "factory", "region"] as const) {
    if (typeof c[field] !== "string" || !NAME_PATTERN.test(c[field])) {
      throw new ConfigError(field, NAME_FORM, c[field]);
    }
  }
  if (typeof c.dataDir !== "string" || c.dataDir === "") {
    throw new ConfigError("dataDir", "a directory path", c.dataDir);
  }
  checkMultiaddrs("listen", c.listen, 1);
  checkMultiaddrs("peers", c.peers, 0);
  parseHostPort(c.http);
  if (c.meshKeyFile !== null && typeof c.meshKeyFile !== "string") {
    throw new ConfigError("meshKeyFile", "a file path or null", c.meshKeyFile);
  }
  if (typeof c.mdns !== "boolean") throw new ConfigError("mdns", "true or false", c.mdns);
  if (typeof c.estopRealtime !== "boolean") {
    throw new ConfigError("estopRealtime", "true or false", c.estopRealtime);
  }
  checkRange("assets", c.assets, 0, 1000, true);
  checkRange("telemetryHz", c.telemetryHz, 0.1, 1000, false);
  checkRange("twinSummaryMs", c.twinSummaryMs, 100, 60_000, true);
  checkRange("faultRatePerS", c.faultRatePerS, 0, 1, false);
  checkRange("watchdogMs", c.watchdogMs, 0, 3_600_000, true);
  checkRange("estopPort", c.estopPort, 0, 65_535, true);
  if (!LOG_LEVELS.includes(c.logLevel)) {
    throw new ConfigError("logLevel", LOG_LEVELS.join(" | "), c.logLevel);
  }
  if (c.safeState !== "stop" && c.safeState !== "hold") {
    throw new ConfigError("safeState", "stop | hold", c.safeState);
  }
  for (const field of ["operators", "supervisors", "replicate"] as const) {
    const list = c[field];
    if (!Array.isArray(list) || list.some((v) => typeof v !== "string" || v === "")) {
      throw new ConfigError(field, "a list of non-empty strings", list);
    }
  }
  if (typeof c.stopOnAnomaly !== "boolean") {
    throw new ConfigError("stopOnAnomaly", "true or false", c.stopOnAnomaly);
  }
}

function checkRange(
  field: string,
  value: unknown,
  min: number,
  max: number,
  integer: boolean,
): void {
  const ok = typeof value === "number" && Number.isFinite(value) && value >= min && value <= max &&
    (!integer || Number.isInteger(value));
  if (!ok) {
    throw new ConfigError(
      field,
      `${integer ? "an integer" : "a number"} in [${min}, ${max}]`,
      value,
    );
  }
}

function checkMultiaddrs(field: string, list: unknown, minCount: number): void {
  if (!Array.isArray(list) || list.length < minCount) {
    throw new ConfigError(field, `a list of at least ${minCount} multiaddr(s)`, list);
  }
  for (const item of list) {
    try {
      const ma = multiaddr(String(item));
      if (!ma.toString().includes("/tcp/")) throw new Error("no /tcp/ part");
    } catch (err) {
      throw new ConfigError(
        field,
        `a TCP multiaddr like /ip4/10.0.0.2/tcp/4001 (${(err as Error).message})`,
        item,
      );
    }
  }
}

/** Splits `host:port` (IPv6 as `[::1]:8080`); throws {@link ConfigError}. */
export function parseHostPort(text: unknown): { hostname: string; port: number } {
  const match = typeof text === "string"
    ? /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text)
    : null;
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new ConfigError("http", "host:port like 127.0.0.1:8080", text);
  return { hostname: match[1]!.replace(/^\[|\]$/g, ""), port };
}

function safeHostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "gateway";
  }
}

function sanitizeName(text: string): string {
  const cleaned = text.replace(/[^A-Za-z0-9_-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 63);
  return cleaned === "" ? "gateway" : cleaned;
}

/** The `--help` text, with every flag and its default. */
export function helpText(): string {
  const defaults = defaultConfig();
  const lines = [
    "twinmesh — digital-twin mesh gateway for industrial assets",
    "",
    "Usage:",
    "  twinmesh [run] [flags]        start a gateway (default)",
    "  twinmesh mesh-key <file>      write a new pre-shared mesh key",
    "  twinmesh help                 this text",
    "",
    "Flags (precedence: flag > TWINMESH_* env > --config file > default):",
    `  ${"--config <file>".padEnd(28)} JSON file of config fields (env TWINMESH_CONFIG)`,
  ];
  for (const f of FLAGS) {
    const left = `${f.flag}${f.arg ? " " + f.arg : ""}`;
    const value = defaults[f.field];
    const shown = f.kind === "negate"
      ? `${f.field} ${value ? "on" : "off"}`
      : f.field === "name"
      ? `host name (${value})`
      : Array.isArray(value)
      ? (value.length ? value.join(",") : "none")
      : String(value);
    lines.push(`  ${left.padEnd(28)} ${f.help} [default: ${shown}] (env ${envName(f.field)})`);
  }
  lines.push(`  ${"--help".padEnd(28)} show this help`);
  lines.push("", "HTTP API: /health /peers /metrics /twins /estop /anomalies (see README.md)");
  return lines.join("\n");
}
