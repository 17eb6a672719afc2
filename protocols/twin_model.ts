/**
 * Typed twin definitions: one {@link TwinModel} per asset kind names every
 * field, its value type, unit, range and CRDT kind, and who may write it.
 * Every write is validated here before it touches a document; a bad write is
 * refused with a {@link TwinValidationError} that names the field.
 *
 * @example
 * ```ts
 * import { WELDING_ARM_MODEL, parseCommand } from "./twin_model.ts";
 * const writes = parseCommand(WELDING_ARM_MODEL, { setpoints: { weldCurrentA: 180 } });
 * console.assert(writes[0]?.field === "setpoints.weldCurrentA");
 * ```
 */

/** How concurrent writes to a field merge. */
export type CrdtKind =
  /** Last writer wins, ordered by HLC (highest HLC wins, also among concurrent values). */
  | "lww"
  /** Grow-only counter: one total per writing gateway, the value is their sum. */
  | "g-counter"
  /** Observed-remove set: each add carries a unique tag; a concurrent add beats a remove. */
  | "or-set";

/** Value types a field can hold. */
export type ValueType = "number" | "integer" | "element" | "summary" | "text";

/** Who may write a field. */
export type WriterRole =
  /** Measured state: only the gateway attached to the asset, through `writeMeasured`. */
  | "owner"
  /** Commands, setpoints, modes: any gateway in the mesh. */
  | "any";

/** Definition of one field. */
export interface FieldSpec {
  readonly crdt: CrdtKind;
  readonly type: ValueType;
  /** SI-style unit of the stored value ("rad", "A", "m/s", "ms", "count", "none"). */
  readonly unit: string;
  readonly writer: WriterRole;
  /** Inclusive range for numbers (for counters: of one increment). */
  readonly min?: number;
  readonly max?: number;
  /** Allowed elements of an or-set. */
  readonly elements?: readonly string[];
  /** Longest allowed text, in UTF-16 code units (for `text`). */
  readonly maxLength?: number;
  /** Allowed channels of a summary. */
  readonly channels?: readonly string[];
}

/** Definition of one asset kind. */
export interface TwinModel {
  readonly kind: string;
  readonly fields: Readonly<Record<string, FieldSpec>>;
}

/** One validated write to a twin field. */
export type TwinWrite =
  | { readonly op: "set"; readonly field: string; readonly value: TwinValue }
  | { readonly op: "increment"; readonly field: string; readonly delta: number }
  | { readonly op: "add"; readonly field: string; readonly element: string }
  | { readonly op: "remove"; readonly field: string; readonly element: string };

/** A one-window statistics summary of one telemetry channel. */
export interface ChannelSummary {
  readonly min: number;
  readonly mean: number;
  readonly max: number;
  readonly count: number;
}

/** Recent-telemetry summary written by the owning gateway at a low rate. */
export interface TelemetrySummary {
  readonly windowMs: number;
  readonly channels: Readonly<Record<string, ChannelSummary>>;
}

/** Values a twin field holds after resolution. */
export type TwinValue = number | string | readonly string[] | TelemetrySummary;

/** A write that failed validation; `field` names the offending field or key. */
export class TwinValidationError extends Error {
  override name = "TwinValidationError";
  constructor(readonly field: string, expected: string) {
    super(`twin field "${field}": ${expected}`);
  }
}

/** A model for an asset kind this build does not know. */
export class UnknownTwinKindError extends Error {
  override name = "UnknownTwinKindError";
  constructor(readonly kind: string) {
    super(`twin kind "${kind.slice(0, 64)}": not a known asset kind`);
  }
}

/** Six axes, named as robot controllers name them. */
export const WELDING_ARM_AXES = ["a1", "a2", "a3", "a4", "a5", "a6"] as const;
/** Operating modes and flags of a welding arm. */
export const WELDING_ARM_MODES = ["auto", "manual", "maintenance", "hold", "estop"] as const;
/** Telemetry channels summarised once per window. */
export const WELDING_ARM_CHANNELS = [
  "weldCurrentA",
  "arcVoltageV",
  "wireFeedMps",
  "travelSpeedMmps",
  "torchTemperatureC",
] as const;
/** One full turn either way: wrist axes of welding arms turn up to ±360°. */
const JOINT_LIMIT_RAD = 2 * Math.PI;
/** An e-stop record is a small JSON object; a reason is at most 500 characters. */
const ESTOP_RECORD_MAX_CHARS = 2_048;
/** One day of runtime per report: a larger delta is a unit mistake, not a measurement. */
const RUNTIME_DELTA_MAX_MS = 86_400_000;
/** Far above any arm's welds per report, low enough to catch garbage counters. */
const WELD_COUNT_DELTA_MAX = 1_000_000;

function jointSpec(): FieldSpec {
  return {
    crdt: "lww",
    type: "number",
    unit: "rad",
    writer: "owner",
    min: -JOINT_LIMIT_RAD,
    max: JOINT_LIMIT_RAD,
  };
}

function setpointSpec(unit: string, max: number): FieldSpec {
  return { crdt: "lww", type: "number", unit, writer: "any", min: 0, max };
}

/** The welding arm (`kind: "welding-arm"`). */
export const WELDING_ARM_MODEL: TwinModel = {
  kind: "welding-arm",
  fields: {
    ...Object.fromEntries(WELDING_ARM_AXES.map((axis) => [`joints.${axis}`, jointSpec()])),
    runtimeMs: {
      crdt: "g-counter",
      type: "integer",
      unit: "ms",
      writer: "owner",
      min: 0,
      max: RUNTIME_DELTA_MAX_MS,
    },
    weldCount: {
      crdt: "g-counter",
      type: "integer",
      unit: "count",
      writer: "owner",
      min: 0,
      max: WELD_COUNT_DELTA_MAX,
    },
    modes: {
      crdt: "or-set",
      type: "element",
      unit: "none",
      writer: "any",
      elements: WELDING_ARM_MODES,
    },
    // Ranges cover GMAW/MIG process windows with margin; the adapter enforces
    // the tighter limits of the actual power source.
    "setpoints.weldCurrentA": setpointSpec("A", 500),
    "setpoints.weldVoltageV": setpointSpec("V", 50),
    "setpoints.wireFeedMps": setpointSpec("m/s", 0.4),
    "setpoints.travelSpeedMmps": setpointSpec("mm/s", 200),
    // The latest e-stop event at the owner (JSON: id, kind, origin, hlc, reason,
    // latencyMs), so the twin tells who stopped the arm and when.
    "estop.last": {
      crdt: "lww",
      type: "text",
      unit: "none",
      writer: "owner",
      maxLength: ESTOP_RECORD_MAX_CHARS,
    },
    summary: {
      crdt: "lww",
      type: "summary",
      unit: "none",
      writer: "owner",
      channels: WELDING_ARM_CHANNELS,
    },
  },
};

/** Models known to this build, by kind. */
export const TWIN_MODELS: ReadonlyMap<string, TwinModel> = new Map([
  [WELDING_ARM_MODEL.kind, WELDING_ARM_MODEL],
]);

/** Field names are short dotted identifiers; they are also document keys. */
const FIELD_NAME = /^[A-Za-z][A-Za-z0-9]{0,31}(\.[A-Za-z][A-Za-z0-9]{0,31})?$/;
/** Summary windows from 100 ms to one minute. */
const SUMMARY_WINDOW_MS_MIN = 100;
const SUMMARY_WINDOW_MS_MAX = 60_000;

/** The model for `kind`; throws {@link UnknownTwinKindError}. */
export function modelFor(kind: string): TwinModel {
  const model = TWIN_MODELS.get(kind);
  if (!model) throw new UnknownTwinKindError(kind);
  return model;
}

/** The spec of `field` in `model`; throws {@link TwinValidationError} naming it. */
export function fieldSpec(model: TwinModel, field: string): FieldSpec {
  const spec = Object.hasOwn(model.fields, field) ? model.fields[field] : undefined;
  if (!spec) {
    throw new TwinValidationError(field, `not a field of kind "${model.kind}"`);
  }
  return spec;
}

/**
 * Checks one write against the model and the writer's role; returns it
 * unchanged or throws {@link TwinValidationError} naming the field.
 */
export function validateWrite(model: TwinModel, write: TwinWrite, role: WriterRole): TwinWrite {
  const spec = fieldSpec(model, write.field);
  if (spec.writer === "owner" && role !== "owner") {
    throw new TwinValidationError(
      write.field,
      "measured by the owning gateway; not writable by command",
    );
  }
  switch (write.op) {
    case "set":
      expectCrdt(write.field, spec, "lww");
      validateValue(write.field, spec, write.value);
      return write;
    case "increment":
      expectCrdt(write.field, spec, "g-counter");
      validateNumber(write.field, spec, write.delta);
      return write;
    case "add":
    case "remove":
      expectCrdt(write.field, spec, "or-set");
      validateElement(write.field, spec, write.element);
      return write;
  }
}

function expectCrdt(field: string, spec: FieldSpec, crdt: CrdtKind): void {
  if (spec.crdt !== crdt) {
    throw new TwinValidationError(field, `is a ${spec.crdt} field; this write needs ${crdt}`);
  }
}

/** Throws unless `value` fits the field; used for local writes and for stored values. */
export function validateValue(field: string, spec: FieldSpec, value: unknown): TwinValue {
  if (spec.type === "summary") return validateSummary(field, spec, value);
  if (spec.type === "element") return validateElement(field, spec, value);
  if (spec.type === "text") return validateText(field, spec, value);
  return validateNumber(field, spec, value);
}

function validateNumber(field: string, spec: FieldSpec, value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TwinValidationError(field, `expected a finite number in ${spec.unit}`);
  }
  if (spec.type === "integer" && !Number.isSafeInteger(value)) {
    throw new TwinValidationError(field, `expected an integer in ${spec.unit}, got ${value}`);
  }
  const min = spec.min ?? -Infinity;
  const max = spec.max ?? Infinity;
  if (value < min || value > max) {
    throw new TwinValidationError(field, `${value} ${spec.unit} is outside [${min}, ${max}]`);
  }
  return value;
}

function validateText(field: string, spec: FieldSpec, value: unknown): string {
  const max = spec.maxLength ?? 0;
  if (typeof value !== "string" || value.length > max) {
    throw new TwinValidationError(field, `expected a text of at most ${max} characters`);
  }
  return value;
}

function validateElement(field: string, spec: FieldSpec, value: unknown): string {
  if (typeof value !== "string" || !(spec.elements ?? []).includes(value)) {
    throw new TwinValidationError(
      field,
      `expected one of ${(spec.elements ?? []).join(", ")}, got ${describe(value)}`,
    );
  }
  return value;
}

function validateSummary(field: string, spec: FieldSpec, value: unknown): TelemetrySummary {
  if (!isRecord(value) || !isRecord(value.channels)) {
    throw new TwinValidationError(field, "expected {windowMs, channels: {name: {min,mean,max}}}");
  }
  const windowMs = value.windowMs;
  if (
    typeof windowMs !== "number" || !Number.isSafeInteger(windowMs) ||
    windowMs < SUMMARY_WINDOW_MS_MIN || windowMs > SUMMARY_WINDOW_MS_MAX
  ) {
    throw new TwinValidationError(
      `${field}.windowMs`,
      `expected an integer in [${SUMMARY_WINDOW_MS_MIN}, ${SUMMARY_WINDOW_MS_MAX}] ms`,
    );
  }
  const channels: Record<string, ChannelSummary> = {};
  for (const [name, stats] of Object.entries(value.channels)) {
    const path = `${field}.channels.${name}`;
    if (!(spec.channels ?? []).includes(name)) {
      throw new TwinValidationError(path, `not a channel (${(spec.channels ?? []).join(", ")})`);
    }
    channels[name] = validateChannel(path, stats);
  }
  return { windowMs, channels };
}

function validateChannel(path: string, stats: unknown): ChannelSummary {
  if (!isRecord(stats)) throw new TwinValidationError(path, "expected {min, mean, max, count}");
  const { min, mean, max, count } = stats;
  for (const [name, v] of [["min", min], ["mean", mean], ["max", max]] as const) {
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new TwinValidationError(`${path}.${name}`, "expected a finite number");
    }
  }
  if (typeof count !== "number" || !Number.isSafeInteger(count) || count < 1) {
    throw new TwinValidationError(`${path}.count`, "expected a positive integer");
  }
  const [lo, mid, hi] = [min, mean, max] as number[];
  if (!(lo! <= mid! && mid! <= hi!)) {
    throw new TwinValidationError(path, "expected min <= mean <= max");
  }
  return { min: lo!, mean: mid!, max: hi!, count };
}

/** Accepts `180` or `{value: 180, unit: "A"}`; the unit must be the field's own. */
function numberWithUnit(field: string, spec: FieldSpec, input: unknown): number {
  if (isRecord(input)) {
    if (input.unit !== spec.unit) {
      throw new TwinValidationError(
        field,
        `unit ${describe(input.unit)} given; expected "${spec.unit}"`,
      );
    }
    return validateNumber(field, spec, input.value);
  }
  return validateNumber(field, spec, input);
}

/**
 * Turns an operator command body (untrusted JSON) into validated writes.
 * Shape: `{setpoints?: {name: number | {value, unit}}, modes?: {add?: [], remove?: []}}`.
 */
export function parseCommand(model: TwinModel, body: unknown): TwinWrite[] {
  if (!isRecord(body)) throw new TwinValidationError("body", "expected a JSON object");
  const writes: TwinWrite[] = [];
  for (const key of Object.keys(body)) {
    if (key !== "setpoints" && key !== "modes") {
      throw new TwinValidationError(key, "not a command section (setpoints, modes)");
    }
  }
  if (body.setpoints !== undefined) {
    if (!isRecord(body.setpoints)) {
      throw new TwinValidationError("setpoints", "expected an object of name: value");
    }
    for (const [name, input] of Object.entries(body.setpoints)) {
      const field = `setpoints.${name}`;
      const spec = fieldSpec(model, field);
      const value = numberWithUnit(field, spec, input);
      writes.push(validateWrite(model, { op: "set", field, value }, "any"));
    }
  }
  if (body.modes !== undefined) writes.push(...parseModes(model, body.modes));
  if (writes.length === 0) throw new TwinValidationError("body", "expected at least one write");
  return writes;
}

function parseModes(model: TwinModel, modes: unknown): TwinWrite[] {
  if (!isRecord(modes)) throw new TwinValidationError("modes", "expected {add?: [], remove?: []}");
  const writes: TwinWrite[] = [];
  for (const [op, list] of Object.entries(modes)) {
    if ((op !== "add" && op !== "remove") || !Array.isArray(list)) {
      throw new TwinValidationError(`modes.${op}`, "expected modes.add or modes.remove arrays");
    }
    for (const element of list) {
      writes.push(validateWrite(model, { op, field: "modes", element }, "any"));
    }
  }
  return writes;
}

/** Measured state the owning gateway reports (see `writeMeasured`). */
export interface MeasuredUpdate {
  /** Joint positions in radians, one per axis in order a1..a6. */
  readonly joints?: readonly number[];
  /** Counter increments since the last report (not totals). */
  readonly counters?: Readonly<Record<string, number>>;
  readonly summary?: TelemetrySummary;
  /** The latest e-stop event at this owner, as JSON text (`estop.last`). */
  readonly estop?: string;
}

/** Turns a measured update into validated owner writes. */
export function parseMeasured(model: TwinModel, update: MeasuredUpdate): TwinWrite[] {
  if (!isRecord(update)) throw new TwinValidationError("measured", "expected an object");
  const writes: TwinWrite[] = [];
  if (update.joints !== undefined) {
    if (!Array.isArray(update.joints) || update.joints.length !== WELDING_ARM_AXES.length) {
      throw new TwinValidationError("joints", `expected ${WELDING_ARM_AXES.length} numbers (rad)`);
    }
    update.joints.forEach((value, axis) => {
      const field = `joints.${WELDING_ARM_AXES[axis]}`;
      writes.push(validateWrite(model, { op: "set", field, value }, "owner"));
    });
  }
  for (const [field, delta] of Object.entries(update.counters ?? {})) {
    if (delta === 0) continue;
    writes.push(validateWrite(model, { op: "increment", field, delta }, "owner"));
  }
  if (update.summary !== undefined) {
    const value = update.summary as TwinValue; // validated by validateWrite
    writes.push(validateWrite(model, { op: "set", field: "summary", value }, "owner"));
  }
  if (update.estop !== undefined) {
    writes.push(
      validateWrite(
        model,
        { op: "set", field: "estop.last", value: update.estop as TwinValue },
        "owner",
      ),
    );
  }
  return writes;
}

/** True for field names that may be used as document keys. */
export function isFieldName(name: string): boolean {
  return FIELD_NAME.test(name);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}
