import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { SupervisorWatchdog } from "../protocols/estop_watchdog.ts";

Deno.test("the watchdog trips once after the timeout without any supervisor", () => {
  const watchdog = new SupervisorWatchdog({ supervisors: ["s1", "s2"], timeoutMs: 1_000 }, 0);
  watchdog.heard("s1", 500);
  assertEquals(watchdog.tick(1_400), undefined);
  assertEquals(watchdog.tick(1_501)?.type, "trip");
  assertEquals(watchdog.tick(3_000), undefined);
  assert(watchdog.tripped);
});

Deno.test("any one supervisor keeps the watchdog quiet; hearing one after a trip recovers", () => {
  const watchdog = new SupervisorWatchdog({ supervisors: ["s1", "s2"], timeoutMs: 1_000 }, 0);
  watchdog.heard("s2", 900);
  assertEquals(watchdog.tick(1_800), undefined);
  watchdog.tick(2_000);
  assertEquals(watchdog.heard("other", 2_100), undefined);
  assertEquals(watchdog.heard("s1", 2_500), {
    type: "recover",
    supervisor: "s1",
    trippedForMs: 500,
  });
});

Deno.test("without supervisors or timeout the watchdog never trips", () => {
  assertEquals(new SupervisorWatchdog({ supervisors: [], timeoutMs: 10 }, 0).tick(1e9), undefined);
  assertEquals(
    new SupervisorWatchdog({ supervisors: ["s"], timeoutMs: 0 }, 0).tick(1e9),
    undefined,
  );
});
