/**
 * Structured logging: one JSON object per line on stderr (level, time,
 * component, peer, message, fields), or a readable one-line form when stderr
 * is a terminal. Components get a child logger scoped to their name.
 *
 * @example
 * ```ts
 * import { createLogger } from "./log.ts";
 * const log = createLogger({ peer: "12D3KooW…", level: "info" });
 * log.child("mesh").info("peer connected", { name: "g2" });
 * ```
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
export const LOG_LEVELS = Object.keys(LEVEL_RANK) as LogLevel[];

export type LogFields = Record<string, unknown>;

/** The logging surface every service receives through its components. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  /** A logger for a sub-component (`gateway.mesh`). */
  child(component: string): Logger;
}

export interface LoggerInit {
  level?: LogLevel;
  /** The gateway's peer ID, stamped on every line once known. */
  peer?: string;
  component?: string;
  /** Force the output form; defaults to pretty on a terminal. */
  format?: "json" | "pretty";
  /** Where lines go; defaults to stderr. Tests capture here. */
  write?: (line: string) => void;
}

const encoder = new TextEncoder();
function writeStderr(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/** Creates the root logger. */
export function createLogger(init: LoggerInit = {}): Logger {
  const minRank = LEVEL_RANK[init.level ?? "info"];
  const format = init.format ?? (Deno.stderr.isTerminal() ? "pretty" : "json");
  const write = init.write ?? writeStderr;
  const base = { peer: init.peer, component: init.component ?? "gateway" };

  const make = (component: string): Logger => {
    const emit = (level: LogLevel, message: string, fields?: LogFields) => {
      if (LEVEL_RANK[level] < minRank) return;
      const time = new Date().toISOString();
      // Services log the remote side as `peer`; this gateway's own id keeps that key.
      if (fields && "peer" in fields) {
        const { peer: remote, ...rest } = fields;
        fields = { remote, ...rest };
      }
      if (format === "json") {
        write(
          JSON.stringify({ time, level, component, peer: base.peer, message, ...fields }, jsonSafe),
        );
      } else {
        const extra = fields && Object.keys(fields).length > 0
          ? " " + Object.entries(fields).map(([k, v]) => `${k}=${formatValue(v)}`).join(" ")
          : "";
        write(
          `${time.slice(11, 23)} ${
            level.toUpperCase().padEnd(5)
          } [${component}] ${message}${extra}`,
        );
      }
    };
    return {
      debug: (m, f) => emit("debug", m, f),
      info: (m, f) => emit("info", m, f),
      warn: (m, f) => emit("warn", m, f),
      error: (m, f) => emit("error", m, f),
      child: (sub) => make(`${component}.${sub}`),
    };
  };
  return make(base.component);
}

function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

function formatValue(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === "string") return /\s/.test(value) ? JSON.stringify(value) : value;
  return JSON.stringify(value, jsonSafe);
}

/** A logger that drops everything (for tests and benchmarks). */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child: () => silentLogger,
};
