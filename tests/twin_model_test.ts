import { deepStrictEqual, equal, throws } from "node:assert/strict";
import {
  parseCommand,
  parseMeasured,
  type TwinValidationError,
  validateWrite,
  WELDING_ARM_MODEL,
} from "../protocols/twin_model.ts";

function rejectsNaming(field: string, run: () => unknown): void {
  throws(run, (error: unknown) => {
    equal((error as Error).name, "TwinValidationError");
    equal((error as TwinValidationError).field, field);
    equal((error as Error).message.includes(`"${field}"`), true, "the message names the field");
    return true;
  });
}

Deno.test("parseCommand() turns setpoints and modes into writes", () => {
  const writes = parseCommand(WELDING_ARM_MODEL, {
    setpoints: { weldCurrentA: 180, wireFeedMps: { value: 0.12, unit: "m/s" } },
    modes: { add: ["hold"], remove: ["auto"] },
  });
  deepStrictEqual(writes, [
    { op: "set", field: "setpoints.weldCurrentA", value: 180 },
    { op: "set", field: "setpoints.wireFeedMps", value: 0.12 },
    { op: "add", field: "modes", element: "hold" },
    { op: "remove", field: "modes", element: "auto" },
  ]);
});

Deno.test("parseCommand() rejects an unknown setpoint, naming it", () => {
  rejectsNaming(
    "setpoints.laserPowerW",
    () => parseCommand(WELDING_ARM_MODEL, { setpoints: { laserPowerW: 1 } }),
  );
});

Deno.test("parseCommand() rejects a wrong type, naming the field", () => {
  rejectsNaming(
    "setpoints.weldCurrentA",
    () => parseCommand(WELDING_ARM_MODEL, { setpoints: { weldCurrentA: "180" } }),
  );
  rejectsNaming(
    "setpoints.weldCurrentA",
    () => parseCommand(WELDING_ARM_MODEL, { setpoints: { weldCurrentA: Number.NaN } }),
  );
});

Deno.test("parseCommand() rejects a wrong unit, naming the field", () => {
  rejectsNaming("setpoints.travelSpeedMmps", () =>
    parseCommand(WELDING_ARM_MODEL, {
      setpoints: { travelSpeedMmps: { value: 0.01, unit: "m/s" } },
    }));
});

Deno.test("parseCommand() rejects values outside the range, naming the field", () => {
  rejectsNaming(
    "setpoints.weldCurrentA",
    () => parseCommand(WELDING_ARM_MODEL, { setpoints: { weldCurrentA: 5_000 } }),
  );
});

Deno.test("parseCommand() rejects unknown modes and sections", () => {
  rejectsNaming("modes", () => parseCommand(WELDING_ARM_MODEL, { modes: { add: ["turbo"] } }));
  rejectsNaming("joints", () => parseCommand(WELDING_ARM_MODEL, { joints: [0, 0, 0, 0, 0, 0] }));
  rejectsNaming("body", () => parseCommand(WELDING_ARM_MODEL, "weld!"));
  rejectsNaming("body", () => parseCommand(WELDING_ARM_MODEL, {}));
});

Deno.test("measured fields are not writable by command", () => {
  rejectsNaming(
    "joints.a1",
    () => validateWrite(WELDING_ARM_MODEL, { op: "set", field: "joints.a1", value: 0 }, "any"),
  );
});

Deno.test("parseMeasured() validates joints, counter deltas and the summary", () => {
  const writes = parseMeasured(WELDING_ARM_MODEL, {
    joints: [0, 0.5, -0.5, 1, 2, 3],
    counters: { weldCount: 2, runtimeMs: 1_000 },
    summary: {
      windowMs: 1_000,
      channels: { weldCurrentA: { min: 170, mean: 180, max: 190, count: 1_000 } },
    },
  });
  equal(writes.length, 9);
  rejectsNaming("joints", () => parseMeasured(WELDING_ARM_MODEL, { joints: [0, 1] }));
  rejectsNaming(
    "joints.a3",
    () => parseMeasured(WELDING_ARM_MODEL, { joints: [0, 0, 99, 0, 0, 0] }),
  );
  rejectsNaming(
    "weldCount",
    () => parseMeasured(WELDING_ARM_MODEL, { counters: { weldCount: -1 } }),
  );
  rejectsNaming(
    "runtimeMs",
    () => parseMeasured(WELDING_ARM_MODEL, { counters: { runtimeMs: 0.5 } }),
  );
  rejectsNaming("summary.channels.weldCurrentA", () =>
    parseMeasured(WELDING_ARM_MODEL, {
      summary: {
        windowMs: 1_000,
        channels: { weldCurrentA: { min: 200, mean: 180, max: 190, count: 3 } },
      },
    }));
  rejectsNaming("summary.channels.coffee", () =>
    parseMeasured(WELDING_ARM_MODEL, {
      summary: { windowMs: 1_000, channels: { coffee: { min: 1, mean: 1, max: 1, count: 1 } } },
    }));
});
