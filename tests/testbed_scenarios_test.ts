// Short `partition` and `crash` scenarios against real gateways on a 2×2 testbed (≈ 20 s each
// on an idle machine; a short run is killed after 3 min by the scenario runner). Skips with a clear message where
// network namespaces cannot be made (not root, no `ip netns add`, wireguard-go missing), the
// gateway (`mod.ts`) does not exist yet, or another run holds the machine-wide testbed for
// longer than LOCK_WAIT_MS.
//
// Gateways run with 2 assets, 10 Hz telemetry and no injected faults (see gateways.ts) to keep
// the load on shared CI cores low.

import { checkPrerequisites } from "../scripts/testbed/setup.ts";
import { gatewayUnavailableReason } from "../scripts/testbed/gateways.ts";
import { printResult, runScenario } from "../scripts/testbed/scenarios.ts";
import { TestbedUnavailableError } from "../scripts/testbed/errors.ts";
import { listTestbedNamespaces } from "../scripts/testbed/teardown.ts";
import { findMarkedPids } from "../scripts/testbed/procs.ts";

/** How long to wait for another run (a bench, someone else's test) to free the testbed. */
const LOCK_WAIT_MS = 5 * 60_000;

async function unavailableReason(): Promise<string | undefined> {
  try {
    await checkPrerequisites();
  } catch (error) {
    if (error instanceof TestbedUnavailableError) {
      return `network namespaces unavailable: ${error.message}`;
    }
    throw error;
  }
  return await gatewayUnavailableReason();
}

const skipReason = await unavailableReason();
if (skipReason !== undefined) console.log(`testbed_scenarios_test: SKIPPED: ${skipReason}`);

async function assertNothingLeft(): Promise<void> {
  const namespaces = await listTestbedNamespaces();
  if (namespaces.length > 0) throw new Error(`namespaces left: ${namespaces.join(" ")}`);
  const strays = findMarkedPids();
  if (strays.length > 0) throw new Error(`processes left: ${JSON.stringify(strays)}`);
}

for (const name of ["partition", "crash"] as const) {
  Deno.test({
    name: `scenario ${name} --short loses nothing and converges`,
    ignore: skipReason !== undefined,
    // Gateways run detached in namespaces; the scenario's teardown kills them.
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const result = await runScenario(name, { short: true, seed: 1, lockWaitMs: LOCK_WAIT_MS });
      printResult(result);
      if (result.verdict === "SKIP") {
        console.log(`testbed_scenarios_test: ${name} SKIPPED: ${result.reasons.join("; ")}`);
        return;
      }
      await assertNothingLeft();
      if (result.verdict !== "PASS") {
        throw new Error(`${name}: ${result.verdict}: ${result.reasons.join("; ")}`);
      }
      for (const key of ["lost_writes", "lost_stops"]) {
        if (result.figures[key] !== 0) throw new Error(`${name}: ${key} = ${result.figures[key]}`);
      }
    },
  });
}
