// The multi-region testbed itself on a small topology (2 regions × 2 hosts): reachability,
// isolation, mDNS scope, relay delay, cut/heal, and a teardown that leaves nothing behind.
// Skips with a clear message where namespaces cannot be made (not root, no `ip netns add`,
// wireguard-go missing). Takes a few seconds.

import { checkPrerequisites, setupTestbed } from "../scripts/testbed/setup.ts";
import { listTestbedNamespaces, teardownTestbed } from "../scripts/testbed/teardown.ts";
import {
  checkIsolation,
  checkMulticastScope,
  checkReachability,
  measureCutHeal,
  measureWan,
} from "../scripts/testbed/verify.ts";
import {
  findMarkedPids,
  isAlive,
  killHard,
  restartProcess,
  spawnProcess,
} from "../scripts/testbed/procs.ts";
import { statePaths } from "../scripts/testbed/state.ts";
import { TestbedBusyError, TestbedUnavailableError } from "../scripts/testbed/errors.ts";
import { acquireTestbedLock, type TestbedLock } from "../scripts/testbed/lock.ts";

/** How long to wait for another run (a scenario, someone else's test) to free the testbed. */
const LOCK_WAIT_MS = 5 * 60_000;

async function unavailableReason(): Promise<string | undefined> {
  try {
    await checkPrerequisites();
    return undefined;
  } catch (error) {
    if (error instanceof TestbedUnavailableError) return error.message;
    throw error;
  }
}

const skipReason = await unavailableReason();
if (skipReason !== undefined) {
  console.log(`testbed_infra_test: SKIPPED (network namespaces unavailable): ${skipReason}`);
}

function check(condition: unknown, what: string): asserts condition {
  if (!condition) throw new Error(`expected ${what}`);
}

Deno.test({
  name: "testbed: 2×2 setup gives LAN, tunnel, isolation, mDNS scope, delay and cut/heal",
  ignore: skipReason !== undefined,
  // Daemons are spawned detached on purpose (they outlive a setup CLI); teardown kills them.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const paths = statePaths();
    let lock: TestbedLock;
    try {
      lock = await acquireTestbedLock("testbed_infra_test", LOCK_WAIT_MS);
    } catch (error) {
      if (!(error instanceof TestbedBusyError)) throw error;
      console.log(`testbed_infra_test: SKIPPED: ${error.message}`);
      return;
    }
    try {
      const startedMs = performance.now();
      const topology = await setupTestbed({ regions: 2, hostsPerRegion: 2 }, paths);
      const setupMs = performance.now() - startedMs;
      console.log(`setup ${setupMs.toFixed(0)} ms`);
      check(setupMs < 10_000, `setup within 10 s (took ${setupMs.toFixed(0)} ms)`);

      await t.step("every host reaches its LAN and the other region", async () => {
        for (const result of await checkReachability(topology)) {
          check(result.ok, `${result.name}: ${result.detail}`);
        }
      });
      await t.step("regions are linked only through the tunnel", async () => {
        const result = await checkIsolation(topology);
        check(result.ok, result.detail);
      });
      await t.step("mDNS multicast reaches the LAN peer and not the other region", async () => {
        const region = topology.regions[0];
        check(region !== undefined, "region r1");
        const result = await checkMulticastScope(topology, region);
        console.log(result.detail);
        check(result.ok, result.detail);
        check(result.heardBy.join() === "r1-g2", `only r1-g2 hears it: ${result.detail}`);
      });
      await t.step("the relay adds the configured one-way delay", async () => {
        const delayed = await measureWan(topology, { delayMs: 20, jitterMs: 0, loss: 0 }, {
          count: 10,
          intervalS: 0.02,
        });
        console.log(`RTT with 20 ms one-way: avg ${delayed.rttAvgMs.toFixed(1)} ms`);
        check(delayed.received === 10, `10 replies, got ${delayed.received}`);
        check(delayed.rttMinMs >= 40, `RTT ≥ 2 × 20 ms, got ${delayed.rttMinMs}`);
        check(delayed.rttAvgMs < 70, `RTT close to 40 ms, got ${delayed.rttAvgMs}`);
      });
      await t.step("cutting a region blocks the WAN, keeps its LAN, and heals", async () => {
        const region = topology.regions[1];
        check(region !== undefined, "region r2");
        const result = await measureCutHeal(topology, region, 800);
        console.log(JSON.stringify(result));
        check(!result.crossDuringCutOk, "no cross-region reply during the cut");
        check(result.lanDuringCutOk, "LAN works during the cut");
        check(
          result.healEffectMs < 3000,
          `traffic resumes < 3 s after heal: ${result.healEffectMs}`,
        );
      });
      await t.step("a tracked process can be killed -9 and restarted", async () => {
        // A plain process: restarting wireguard-go right after kill -9 can race the
        // removal of its tun device, which says nothing about the process tracking.
        const before = await spawnProcess(paths, {
          name: "probe-sleep",
          ns: "tm-r1-g1",
          argv: ["sleep", "300"],
        });
        check(isAlive(before), "the probe runs");
        check(await killHard(paths, "probe-sleep"), "kill -9 reported a kill");
        check(!isAlive(before), "the probe is gone");
        const after = await restartProcess(paths, "probe-sleep");
        check(isAlive(after) && after.pid !== before.pid && after.starts === 2, "restarted");
      });
    } finally {
      const report = await teardownTestbed(paths);
      console.log(`teardown ${report.elapsedMs} ms`);
      await lock.release();
    }
    check((await listTestbedNamespaces()).length === 0, "no tm-* namespaces left");
    const strays = findMarkedPids();
    check(strays.length === 0, `no testbed processes left: ${JSON.stringify(strays)}`);
  },
});
