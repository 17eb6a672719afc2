import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import fc from "fast-check";
import { EstopLatch } from "../protocols/estop_latch.ts";
import type { Timestamp } from "../protocols/hlc.ts";

const NOW_MS = 1_700_000_000_000;
const at = (wallMs: number, node = "gw-x", logical = 0): Timestamp => ({ wallMs, logical, node });
const id = (n: number) => n.toString(16).padStart(32, "0");
const stop = (n: number, wallMs: number) => ({
  id: id(n),
  hlc: at(wallMs),
  origin: "gw-x",
  reason: "r",
});
const reset = (n: number, wallMs: number, stopIds: string[]) => ({
  id: id(n),
  hlc: at(wallMs, "ctl"),
  origin: "ctl",
  reason: "ok",
  stopIds,
});

Deno.test("a stop latches every covered asset and a duplicate changes nothing", () => {
  const latch = new EstopLatch();
  const first = latch.applyStop(stop(1, NOW_MS), ["a", "b"], NOW_MS);
  assertEquals([first.outcome, first.added.length], ["latched", 2]);
  assert(latch.isLatched("a") && latch.isLatched("b"));
  const again = latch.applyStop(stop(1, NOW_MS), ["a", "b"], NOW_MS);
  assertEquals([again.outcome, again.added.length], ["duplicate", 0]);
});

Deno.test("a reset clears only the stops it names whose HLC precedes it", () => {
  const latch = new EstopLatch();
  latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS);
  latch.applyStop(stop(2, NOW_MS + 10), ["a"], NOW_MS);
  const concurrent = latch.applyReset(reset(9, NOW_MS + 5, [id(1), id(2)]), true, NOW_MS);
  assertEquals(concurrent.cleared.map((e) => e.stopId), [id(1)]);
  assertEquals(concurrent.keptConcurrent, [id(2)]);
  assertEquals(concurrent.released, []);
  assert(latch.isLatched("a"), "the stop the reset did not see keeps the asset stopped");
  const later = latch.applyReset(reset(10, NOW_MS + 20, [id(2)]), true, NOW_MS);
  assertEquals(later.released, ["a"]);
  assert(!latch.isLatched("a"));
});

Deno.test("a reset from a non-operator is refused and clears nothing, also on retry", () => {
  const latch = new EstopLatch();
  latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS);
  const refused = latch.applyReset(reset(9, NOW_MS + 5, [id(1)]), false, NOW_MS);
  assertEquals([refused.outcome, refused.cleared.length], ["refused-not-operator", 0]);
  assertEquals(
    latch.applyReset(reset(9, NOW_MS + 5, [id(1)]), true, NOW_MS).status,
    "refused-not-operator",
  );
  assert(latch.isLatched("a"));
});

Deno.test("a stop replayed after its reset does not latch again", () => {
  const latch = new EstopLatch();
  latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS);
  latch.applyReset(reset(9, NOW_MS + 5, [id(1)]), true, NOW_MS);
  assertEquals(latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS).outcome, "duplicate");
  assert(!latch.isLatched("a"));
});

Deno.test("a reset arriving before the stop it saw pre-clears it; one that did not see it cannot", () => {
  const latch = new EstopLatch();
  const early = latch.applyReset(reset(9, NOW_MS + 5, [id(1), id(2)]), true, NOW_MS);
  assertEquals(early.precleared, [id(1), id(2)]);
  assertEquals(latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS).outcome, "precleared");
  // Stop 2 carries an HLC after the reset: the reset cannot have seen it.
  assertEquals(latch.applyStop(stop(2, NOW_MS + 50), ["a"], NOW_MS).outcome, "latched");
  assert(latch.isLatched("a"));
});

Deno.test("commands older than the replay window are refused as expired", () => {
  const latch = new EstopLatch({ commandMaxAgeMs: 1_000 });
  assertEquals(latch.applyStop(stop(1, NOW_MS - 2_000), ["a"], NOW_MS).outcome, "expired");
  assert(!latch.isLatched("a"));
});

Deno.test("when the id memory overflows, commands as old as the forgotten ones are refused", () => {
  const latch = new EstopLatch({ maxKnownCommands: 2 });
  latch.applyStop(stop(1, NOW_MS), [], NOW_MS);
  latch.applyStop(stop(2, NOW_MS + 1), [], NOW_MS);
  latch.applyStop(stop(3, NOW_MS + 2), [], NOW_MS);
  assertEquals(latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS).outcome, "expired");
});

Deno.test("load() restores latched assets and known ids", () => {
  const latch = new EstopLatch();
  const decision = latch.applyStop(stop(1, NOW_MS), ["a"], NOW_MS);
  const restored = new EstopLatch();
  restored.load(decision.added, decision.known ? [decision.known] : []);
  assert(restored.isLatched("a"));
  assertEquals(restored.applyStop(stop(1, NOW_MS), ["a"], NOW_MS).outcome, "duplicate");
});

Deno.test("any interleaving of stops and resets keeps every unnamed or later stop latched", () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant("stop" as const), n: fc.nat(20), dt: fc.nat(100) }),
    fc.record({
      kind: fc.constant("reset" as const),
      n: fc.nat(20),
      dt: fc.nat(100),
      names: fc.array(fc.nat(20), { minLength: 1, maxLength: 4 }),
      operator: fc.boolean(),
    }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
      const latch = new EstopLatch();
      const stopHlc = new Map<string, number>();
      for (const [i, o] of ops.entries()) {
        const wallMs = NOW_MS + o.dt;
        if (o.kind === "stop") {
          const s = { ...stop(o.n, wallMs), id: id(1000 + o.n) };
          if (latch.applyStop(s, ["a"], NOW_MS).outcome === "latched") stopHlc.set(s.id, wallMs);
          continue;
        }
        const before = new Set(latch.entriesFor("a").map((e) => e.stopId));
        const names = o.names.map((n) => id(1000 + n));
        const r = { ...reset(5000 + i, wallMs, names) };
        latch.applyReset(r, o.operator, NOW_MS);
        for (const stopId of before) {
          const clearable: boolean = o.operator && names.includes(stopId) &&
            stopHlc.get(stopId)! < wallMs;
          const still = latch.entriesFor("a").some((e) => e.stopId === stopId);
          assert(clearable || still, "a latched stop stays latched unless validly reset");
        }
      }
    }),
    { numRuns: 300, seed: 3 },
  );
});
