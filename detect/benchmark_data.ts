/**
 * Parsers for the two public benchmarks' CSV formats (text in, arrays out;
 * the caller reads the files, so this module has no I/O).
 */
import { DetectInputError } from "./errors.ts";
import { parseNabTimestamp } from "./nab_scorer.ts";

/** One SKAB file: sensor rows and point labels. */
export interface SkabFile {
  readonly name: string;
  readonly channels: readonly string[];
  /** `rows[i][c]`: reading of channel c at row i. */
  readonly rows: readonly Float64Array[];
  /** 0/1 anomaly label per row (empty for the anomaly-free file). */
  readonly labels: Uint8Array;
}

/** SKAB's columns that are not sensor channels. */
const SKAB_NON_SENSOR = new Set(["datetime", "anomaly", "changepoint"]);

/** Parses a `;`-separated SKAB CSV. */
export function parseSkabCsv(name: string, text: string): SkabFile {
  const lines = text.split(/\r?\n/).filter((l) => l.trim().length > 0);
  const header = lines[0]?.split(";").map((h) => h.trim());
  if (!header || !header.includes("datetime")) {
    throw new DetectInputError(
      `${name} header`,
      lines[0] ?? "",
      "SKAB columns starting with datetime",
    );
  }
  const sensorCols = header.map((h, i) => [h, i] as const).filter(([h]) => !SKAB_NON_SENSOR.has(h));
  const labelCol = header.indexOf("anomaly");
  const rows: Float64Array[] = [];
  const labels = new Uint8Array(lines.length - 1);
  for (let r = 1; r < lines.length; r++) {
    const cells = lines[r]!.split(";");
    const row = new Float64Array(sensorCols.length);
    sensorCols.forEach(([h, i], k) => {
      const v = Number(cells[i]);
      if (!Number.isFinite(v)) {
        throw new DetectInputError(`${name} row ${r} ${h}`, cells[i], "a number");
      }
      row[k] = v;
    });
    rows.push(row);
    if (labelCol >= 0) labels[r - 1] = Number(cells[labelCol]) > 0 ? 1 : 0;
  }
  return { name, channels: sensorCols.map(([h]) => h), rows, labels };
}

/** One NAB series. */
export interface NabSeries {
  readonly name: string;
  readonly timestampsMs: Float64Array;
  readonly values: Float64Array;
}

/** Parses a NAB `timestamp,value` CSV. */
export function parseNabCsv(name: string, text: string): NabSeries {
  const lines = text.split(/\r?\n/).filter((l) => l.trim().length > 0);
  if (!lines[0]?.startsWith("timestamp")) {
    throw new DetectInputError(`${name} header`, lines[0] ?? "", "timestamp,value");
  }
  const n = lines.length - 1;
  const timestampsMs = new Float64Array(n);
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const line = lines[i + 1]!;
    const comma = line.indexOf(",");
    timestampsMs[i] = parseNabTimestamp(line.slice(0, comma));
    const v = Number(line.slice(comma + 1));
    if (!Number.isFinite(v)) {
      throw new DetectInputError(`${name} row ${i + 1} value`, line, "a number");
    }
    values[i] = v;
  }
  return { name, timestampsMs, values };
}

/** Parses NAB's windows.json into ms pairs per file. */
export function parseNabWindows(text: string): Map<string, [number, number][]> {
  const raw = JSON.parse(text) as Record<string, [string, string][]>;
  const out = new Map<string, [number, number][]>();
  for (const [file, windows] of Object.entries(raw)) {
    out.set(file, windows.map(([a, b]) => [parseNabTimestamp(a), parseNabTimestamp(b)]));
  }
  return out;
}
