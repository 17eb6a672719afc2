import { deepStrictEqual, equal } from "node:assert/strict";
import type { ArmTelemetry } from "../node/assets/adapter.ts";
import { MeasuredAccumulator } from "../node/measured.ts";

function sample(assetId: string, atMs: number, current: number, runtimeS: number): ArmTelemetry {
  return {
    assetId,
    atMs,
    joints: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    current,
    voltage: 20,
    temperature: 40,
    runtimeS,
    mode: "auto",
  };
}

Deno.test("an asset drained on its own keeps the others' windows for their turn", () => {
  const measured = new MeasuredAccumulator();
  for (const [i, current] of [150, 170, 160].entries()) {
    measured.add(sample("arm-1", 1_000 + 100 * i, current, 2 + i));
    measured.add(sample("arm-2", 1_000 + 100 * i, current + 1, 4 + i));
  }
  const one = measured.drainAsset("arm-1");
  deepStrictEqual(one?.summary?.channels.weldCurrentA, { min: 150, mean: 160, max: 170, count: 3 });
  equal(one?.counters?.runtimeMs, 2_000);
  equal(measured.drainAsset("arm-1"), undefined); // nothing new since
  // arm-2's window was not touched: all three samples are still in it.
  const rest = measured.drain();
  deepStrictEqual([...rest.keys()], ["arm-2"]);
  equal(rest.get("arm-2")?.summary?.channels.weldCurrentA?.count, 3);
  equal(rest.get("arm-2")?.counters?.weldCount, 1); // runtime 4 s → 6 s crosses a 5 s seam
  equal(measured.drainAsset("unknown"), undefined);
});
