/**
 * The change header reader agrees with Automerge's own decoder on real
 * changes, and refuses what is not an uncompressed change chunk.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import * as Automerge from "@automerge/automerge";
import fc from "fast-check";
import { readChangeHeader } from "../protocols/change_header.ts";

const SEED = 20261123;

/** Changes by two actors with random messages, times and values, merged so that deps vary. */
function changesOf(steps: { actor: 0 | 1; message: string; time: number; value: string }[]) {
  const actors = ["a1b2c3d4", "0e0f1011121314"];
  const [first, second] = actors.map((actor) => Automerge.getBackend(Automerge.init({ actor })));
  const docs = [first!, second!];
  for (const step of steps) {
    const doc = docs[step.actor]!;
    doc.put("_root", `k${step.value.length % 5}`, step.value);
    doc.commit(step.message === "" ? undefined : step.message, step.time);
    const change = doc.getLastLocalChange()!;
    docs[1 - step.actor]!.applyChanges([change]);
  }
  return first!.getChanges([]);
}

Deno.test("the header of every change matches Automerge's decodeChange", () => {
  const step = fc.record({
    actor: fc.constantFrom(0 as const, 1 as const),
    message: fc.string({ maxLength: 300, unit: "grapheme" }),
    time: fc.integer({ min: -2_000_000_000_000, max: 4_000_000_000_000 }),
    value: fc.string({ maxLength: 40 }),
  });
  fc.assert(
    fc.property(fc.array(step, { minLength: 1, maxLength: 12 }), (steps) => {
      for (const change of changesOf(steps)) {
        const decoded = Automerge.decodeChange(change);
        const header = readChangeHeader(change);
        assertEquals(header, {
          hash: decoded.hash,
          deps: decoded.deps,
          actor: decoded.actor,
          seq: decoded.seq,
          startOp: decoded.startOp,
          time: decoded.time,
          message: decoded.message ?? null,
        });
      }
    }),
    { seed: SEED, numRuns: 60 },
  );
});

Deno.test("bytes that are no whole change chunk have no header", () => {
  const doc = Automerge.getBackend(Automerge.init());
  doc.put("_root", "x", 1);
  doc.commit("m", 0);
  const change = doc.getLastLocalChange()!;
  assertEquals(readChangeHeader(change)?.message, "m");
  assertEquals(readChangeHeader(change.subarray(0, change.length - 1)), undefined, "truncated");
  assertEquals(readChangeHeader(new Uint8Array([...change, 0])), undefined, "trailing byte");
  assertEquals(readChangeHeader(doc.save()), undefined, "a document chunk");
  assertEquals(readChangeHeader(new Uint8Array(0)), undefined, "empty");
  const wrongMagic = change.slice();
  wrongMagic[0] = 0;
  assertEquals(readChangeHeader(wrongMagic), undefined, "not Automerge");
});
