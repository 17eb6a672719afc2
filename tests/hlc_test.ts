import fc from "fast-check";
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import {
  ClockOffsetError,
  compareTimestamps,
  decodeTimestamp,
  encodeTimestamp,
  formatTimestamp,
  HybridLogicalClock,
  InvalidTimestampError,
  parseTimestamp,
  SharedClockState,
  type Timestamp,
} from "../protocols/hlc.ts";

const START_MS = 1_700_000_000_000;

function fakeWall(startMs = START_MS) {
  const wall = { nowMs: startMs, read: () => wall.nowMs };
  return wall;
}

const timestampArb: fc.Arbitrary<Timestamp> = fc.record({
  wallMs: fc.integer({ min: 0, max: 2 ** 48 - 1 }),
  logical: fc.integer({ min: 0, max: 0xffff_ffff }),
  node: fc.string({ minLength: 1, maxLength: 60, unit: "grapheme-ascii" }),
}).map((t) => ({ ...t }));

Deno.test("now() is strictly monotonic even when the wall clock jumps backwards", () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: -5_000, max: 5_000 }), { maxLength: 200 }), (jumps) => {
      const wall = fakeWall();
      const clock = new HybridLogicalClock({ node: "a", wallClockMs: wall.read });
      let previous = clock.now();
      for (const jumpMs of jumps) {
        wall.nowMs += jumpMs;
        const next = clock.now();
        ok(compareTimestamps(next, previous) > 0, "each stamp is above the previous one");
        previous = next;
      }
    }),
  );
});

Deno.test("now() follows the wall clock again once it catches up", () => {
  const wall = fakeWall();
  const clock = new HybridLogicalClock({ node: "a", wallClockMs: wall.read });
  clock.now();
  wall.nowMs -= 1_000;
  const held = clock.now();
  equal(held.wallMs, START_MS);
  equal(held.logical, 1);
  wall.nowMs = START_MS + 10;
  deepStrictEqual(clock.now(), { wallMs: START_MS + 10, logical: 0, node: "a" });
});

Deno.test("update() returns a stamp above both the remote stamp and every local one", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          localJumpMs: fc.integer({ min: -200, max: 200 }),
          remoteAheadMs: fc.integer({ min: -1_000, max: 400 }),
          remoteLogical: fc.integer({ min: 0, max: 1_000 }),
        }),
        { maxLength: 100 },
      ),
      (events) => {
        const wall = fakeWall();
        const clock = new HybridLogicalClock({ node: "a", wallClockMs: wall.read });
        let last = clock.now();
        for (const event of events) {
          wall.nowMs += event.localJumpMs;
          const remote = {
            wallMs: wall.nowMs + event.remoteAheadMs,
            logical: event.remoteLogical,
            node: "b",
          };
          const merged = clock.update(remote);
          ok(compareTimestamps(merged, remote) > 0, "dominates the remote stamp");
          ok(compareTimestamps(merged, last) > 0, "dominates the previous local stamp");
          last = merged;
        }
      },
    ),
  );
});

Deno.test("update() rejects and counts a remote stamp beyond the max offset", () => {
  const wall = fakeWall();
  const clock = new HybridLogicalClock({ node: "a", wallClockMs: wall.read, maxOffsetMs: 500 });
  const before = clock.now();
  throws(
    () => clock.update({ wallMs: START_MS + 501, logical: 0, node: "b" }),
    ClockOffsetError,
  );
  equal(clock.rejectedRemote, 1);
  deepStrictEqual(clock.last, before, "a rejected stamp is not adopted");
  // Exactly at the limit is accepted.
  const merged = clock.update({ wallMs: START_MS + 500, logical: 7, node: "b" });
  deepStrictEqual(merged, { wallMs: START_MS + 500, logical: 8, node: "a" });
  equal(clock.rejectedRemote, 1);
});

Deno.test("update() refuses malformed remote stamps", () => {
  const clock = new HybridLogicalClock({ node: "a" });
  throws(() => clock.update({ wallMs: -1, logical: 0, node: "b" }), InvalidTimestampError);
  throws(() => clock.update({ wallMs: 1, logical: 1.5, node: "b" }), InvalidTimestampError);
  throws(() => clock.update({ wallMs: 1, logical: 0, node: "" }), InvalidTimestampError);
});

Deno.test("a clock restarted from the persisted mark never issues a stamp at or below the old ones", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 3_000 }), { minLength: 1, maxLength: 50 }),
      fc.integer({ min: 0, max: 100_000 }),
      (stepsMs, setBackMs) => {
        const wall = fakeWall();
        let persisted: number | undefined;
        const first = new HybridLogicalClock({
          node: "a",
          wallClockMs: wall.read,
          persist: (wallMs) => (persisted = wallMs),
        });
        let highest = first.now();
        for (const stepMs of stepsMs) {
          wall.nowMs += stepMs;
          highest = first.now();
        }
        ok(
          persisted !== undefined && persisted > highest.wallMs,
          "the mark is above issued stamps",
        );
        // Restart with the wall clock set back.
        wall.nowMs -= setBackMs;
        const second = new HybridLogicalClock({
          node: "a",
          wallClockMs: wall.read,
          persistedWallMs: persisted,
        });
        for (let i = 0; i < 5; i++) {
          ok(compareTimestamps(second.now(), highest) > 0, "above everything the old clock issued");
        }
      },
    ),
  );
});

Deno.test("persist is called about once per window, not per stamp", () => {
  const wall = fakeWall();
  let writes = 0;
  const clock = new HybridLogicalClock({
    node: "a",
    wallClockMs: wall.read,
    persist: () => writes++,
    persistWindowMs: 1_000,
  });
  for (let i = 0; i < 10_000; i++) {
    wall.nowMs += 1;
    clock.now();
  }
  ok(writes >= 10 && writes <= 11, `10 s of stamps persisted ${writes} times`);
});

Deno.test("binary encoding round-trips and preserves order byte-wise for one node", () => {
  fc.assert(
    fc.property(timestampArb, (t) => {
      const bytes = encodeTimestamp(t);
      const decoded = decodeTimestamp(bytes);
      deepStrictEqual(decoded.timestamp, t);
      equal(decoded.size, bytes.length);
    }),
  );
  fc.assert(
    fc.property(timestampArb, timestampArb, (a, b) => {
      const sameNode = { ...b, node: a.node };
      const byBytes = compareBytes(encodeTimestamp(a), encodeTimestamp(sameNode));
      equal(Math.sign(byBytes), Math.sign(compareTimestamps(a, sameNode)));
    }),
  );
});

Deno.test("decodeTimestamp() reads at an offset and rejects truncated input", () => {
  const t = { wallMs: START_MS, logical: 3, node: "12D3KooWnode" };
  const bytes = new Uint8Array([9, 9, ...encodeTimestamp(t)]);
  deepStrictEqual(decodeTimestamp(bytes, 2).timestamp, t);
  throws(() => decodeTimestamp(bytes.subarray(0, 8)), InvalidTimestampError);
  throws(() => decodeTimestamp(bytes.subarray(2, bytes.length - 1)), InvalidTimestampError);
});

Deno.test("text encoding round-trips and sorts in timestamp order", () => {
  fc.assert(
    fc.property(timestampArb, timestampArb, (a, b) => {
      deepStrictEqual(parseTimestamp(formatTimestamp(a)), a);
      const byText = formatTimestamp(a) < formatTimestamp(b)
        ? -1
        : formatTimestamp(a) > formatTimestamp(b)
        ? 1
        : 0;
      if (a.wallMs !== b.wallMs || a.logical !== b.logical) {
        equal(byText, compareTimestamps(a, b));
      }
    }),
  );
  throws(() => parseTimestamp("not-a-stamp"), InvalidTimestampError);
});

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  }
  return a.length - b.length;
}

/** Runs `task` on a test worker thread and returns its answer. */
function onWorker<T>(task: unknown): Promise<T> {
  const worker = new Worker(new URL("./workers/shared_memory_worker.ts", import.meta.url), {
    type: "module",
  });
  return new Promise<T>((resolve, reject) => {
    worker.onmessage = (event) => {
      worker.terminate();
      resolve(event.data as T);
    };
    worker.onerror = (event) => {
      event.preventDefault();
      worker.terminate();
      reject(new Error(event.message));
    };
    worker.postMessage(task);
  });
}

Deno.test("clocks on two threads sharing their state issue unique, increasing stamps", async () => {
  const shared = new SharedClockState();
  const clock = new HybridLogicalClock({ node: "gw", shared });
  const count = 20_000;
  const fromWorker = onWorker<string[]>({ kind: "hlc", buffer: shared.buffer, count });
  const here: string[] = [];
  // Interleave with the worker: yield now and then so both threads issue at once.
  for (let i = 0; i < count; i++) {
    here.push(formatTimestamp(clock.now()));
    if (i % 1000 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  const there = await fromWorker;
  for (const stamps of [here, there]) {
    for (let i = 1; i < stamps.length; i++) {
      ok(stamps[i - 1]! < stamps[i]!, "increasing per thread");
    }
  }
  equal(new Set([...here, ...there]).size, 2 * count, "no stamp issued twice across the threads");
  const highest = [...here, ...there].sort().at(-1)!;
  ok(formatTimestamp(clock.last) >= highest, "last covers both threads' stamps");
});

Deno.test("a clock joining shared state raises it to its persisted high-water mark", () => {
  const wall = fakeWall();
  const shared = new SharedClockState();
  const first = new HybridLogicalClock({ node: "gw", shared, wallClockMs: wall.read });
  equal(first.now().wallMs, START_MS);
  // The e-stop thread's file remembers a mark ahead of the main thread's (its last run).
  new HybridLogicalClock({
    node: "gw",
    shared,
    wallClockMs: wall.read,
    persistedWallMs: START_MS + 60_000,
  });
  const next = first.now();
  ok(next.wallMs >= START_MS + 60_000, "stamps stay above the other thread's mark");
});
