import {
  assert,
  assertEquals,
  assertGreater,
  assertLessOrEqual,
  assertThrows,
} from "./detect_assert.ts";
import { DetectInputError } from "../detect/errors.ts";
import { AssetDetector } from "../detect/pipeline.ts";
import { DenseModel } from "../detect/tflite_dense.ts";
import type { AnomalyEvent, TelemetrySample } from "../detect/types.ts";
import { type SimFault, WeldArmSimulator } from "../detect/weld_sim.ts";

const T0 = 1_700_000_000_000;

function run(
  faults: SimFault[],
  seconds: number,
  options: Partial<ConstructorParameters<typeof AssetDetector<number>>[0]> = {},
) {
  const sim = new WeldArmSimulator({ seed: 21, faults, startMs: T0 });
  let stamps = 0;
  const det = new AssetDetector<number>({ assetId: "arm-1", stamp: () => ++stamps, ...options });
  const events: AnomalyEvent<number>[] = [];
  for (let i = 0; i < seconds * 100; i++) {
    det.push(sim.next());
    events.push(...det.drain(16));
  }
  return { det, events };
}

Deno.test("normal weld telemetry raises no anomaly event", () => {
  const { det, events } = run([], 150);
  assertEquals(events.map((e) => `${e.kind}:${e.channel}@${e.atMs - T0}`), []);
  assertEquals(det.counters.samplesIn, 15000);
  assertEquals(det.counters.samplesProcessed, 15000);
});

Deno.test("an injected current spike yields a spike event on the current channel", () => {
  const { events } = run(
    [{ kind: "current-spike", fromMs: T0 + 100_000, toMs: T0 + 100_500 }],
    110,
  );
  const spike = events.find((e) => e.kind === "spike" && e.channel === "current");
  assert(spike, `a current spike event among ${JSON.stringify(events.map((e) => e.kind))}`);
  assert(
    spike.atMs >= T0 + 100_000 && spike.atMs < T0 + 100_100,
    "raised within 0.1 s of the fault",
  );
  assertGreater(spike.score, 0.5);
  assertEquals(spike.assetId, "arm-1");
  assertEquals(spike.stop, false, "the default policy never stops");
});

Deno.test("a temperature drift yields a drift event and a stuck joint a stuck event", () => {
  const drift = run([{ kind: "temperature-drift", fromMs: T0 + 90_000, degPerS: 0.2 }], 150).events;
  assert(
    drift.some((e) => e.kind === "drift" && e.channel === "temperature"),
    "temperature drift found",
  );
  const stuck = run([{ kind: "joint-stuck", fromMs: T0 + 90_000, joint: 4 }], 100).events;
  const first = stuck.find((e) => e.kind === "stuck");
  assert(first && first.channel === "joint4", "joint4 reported stuck");
  assertLessOrEqual(first.atMs - (T0 + 90_000), 1000, "within a second");
});

Deno.test("events of one persistent fault are debounced", () => {
  const { det, events } = run([{ kind: "joint-stuck", fromMs: T0 + 90_000, joint: 1 }], 100, {
    debounceMs: 5000,
  });
  const stuck = events.filter((e) => e.kind === "stuck");
  // 10 s of a stuck joint at 100 Hz, at most one event per 5 s.
  assertLessOrEqual(stuck.length, 2);
  assertGreater(det.counters.eventsSuppressed, 100);
  assertEquals(det.counters.eventsOut, events.length);
});

Deno.test("the shouldStop policy marks events that demand an e-stop", () => {
  const { events } = run(
    [{ kind: "current-spike", fromMs: T0 + 100_000, toMs: T0 + 100_500 }],
    105,
    {
      shouldStop: (e) => e.kind === "spike" && e.score >= 0.5,
    },
  );
  assert(events.some((e) => e.stop), "a spike event carries stop = true");
});

Deno.test("the input queue never exceeds its bound and counts dropped samples", () => {
  const sim = new WeldArmSimulator({ seed: 2 });
  const det = new AssetDetector({ assetId: "arm-1", stamp: () => 0, maxQueue: 64 });
  let rejected = 0;
  for (let i = 0; i < 1000; i++) {
    if (!det.push(sim.next())) rejected++;
    assertLessOrEqual(det.queued, 64);
    if (i % 10 === 0) det.drain(5);
  }
  assertEquals(det.counters.samplesDropped, rejected);
  assertGreater(rejected, 0);
  assertEquals(det.counters.samplesIn, 1000);
  det.drain();
  assertEquals(det.counters.samplesProcessed + det.counters.samplesDropped, 1000);
});

Deno.test("a malformed or foreign sample is refused with a typed error naming the field", () => {
  const det = new AssetDetector({ assetId: "arm-1", stamp: () => 0 });
  const good = new WeldArmSimulator({ seed: 1 }).next();
  const bad: TelemetrySample = { ...good, joints: [0, 1, 2] };
  const error = assertThrows(() => det.push(bad), DetectInputError);
  assert(error.message.includes("joints"), error.message);
  assertThrows(() => det.push({ ...good, current: Number.NaN }), DetectInputError);
  assertThrows(() => det.push({ ...good, assetId: "arm-2" }), DetectInputError);
  assertEquals(det.queued, 0);
});

Deno.test("with the shipped autoencoder normal telemetry stays quiet and a fault is still reported", async () => {
  const bytes = await Deno.readFile(
    new URL("../detect/models/weld_autoencoder.tflite", import.meta.url),
  );
  const autoencoder = DenseModel.fromTflite(bytes);
  const normal = run([], 120, { autoencoder }).events;
  assertEquals(normal.filter((e) => e.kind === "reconstruction").length, 0);
  const faulty = run([{ kind: "current-spike", fromMs: T0 + 100_000, toMs: T0 + 102_000 }], 110, {
    autoencoder,
  }).events;
  assert(faulty.some((e) => e.channel === "current"), JSON.stringify(faulty.map((e) => e.kind)));
});
