/**
 * WAN conditions of a running testbed: delay, jitter and loss (through the relay's conditions
 * file) and full cut/heal of one region (an nft drop table in the region's router namespace,
 * which drops everything forwarded through its WAN interface; the LAN keeps working).
 *
 * Run:
 * - `scripts/deno.sh run -A scripts/testbed/wan.ts set --delay-ms 40 --jitter-ms 5 --loss 0.01 [--link r1-r2]`
 * - `scripts/deno.sh run -A scripts/testbed/wan.ts clean`
 * - `scripts/deno.sh run -A scripts/testbed/wan.ts cut r2` / `heal r2` / `heal-all`
 * - `scripts/deno.sh run -A scripts/testbed/wan.ts stats`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { CUT_TABLE, ROUTER_WAN_IF } from "./constants.ts";
import { TestbedInputError, TestbedUnavailableError } from "./errors.ts";
import { runIn } from "./exec.ts";
import { readJsonIfExists, type StatePaths, statePaths, writeJsonAtomic } from "./state.ts";
import { buildTopology, regionByName, type RegionSpec, type Topology } from "./topology.ts";
import {
  CLEAN_CONDITIONS,
  type LinkConditions,
  parseConditions,
  type WanConditions,
} from "./wan_relay.ts";

/**
 * The topology of the running testbed, from its `testbed.json`; throws when none runs.
 *
 * @example
 * ```ts
 * const topology = await loadTopology();
 * ```
 */
export async function loadTopology(paths: StatePaths = statePaths()): Promise<Topology> {
  const record = await readJsonIfExists(paths.testbedFile) as
    | { regions?: number; hostsPerRegion?: number }
    | undefined;
  if (record === undefined) {
    throw new TestbedUnavailableError(
      `no testbed in ${paths.root}: run scripts/testbed/setup.ts first`,
    );
  }
  const init: { regions?: number; hostsPerRegion?: number } = {};
  if (record.regions !== undefined) init.regions = record.regions;
  if (record.hostsPerRegion !== undefined) init.hostsPerRegion = record.hostsPerRegion;
  return buildTopology(init);
}

/**
 * Replaces the WAN conditions; the relay applies them within 100 ms.
 *
 * @example
 * ```ts
 * await setWanConditions({ delayMs: 40, jitterMs: 5, loss: 0.01 });
 * ```
 */
export async function setWanConditions(
  conditions: WanConditions,
  paths: StatePaths = statePaths(),
): Promise<void> {
  await writeJsonAtomic(paths.conditionsFile, parseConditions(conditions));
}

/** The WAN conditions currently in the conditions file. */
export async function getWanConditions(paths: StatePaths = statePaths()): Promise<WanConditions> {
  const value = await readJsonIfExists(paths.conditionsFile);
  return value === undefined ? { ...CLEAN_CONDITIONS } : parseConditions(value);
}

/**
 * Cuts `region` off the WAN: its router drops everything it forwards to or from its WAN
 * interface. Idempotent. Measured to take effect within a few ms.
 *
 * @example
 * ```ts
 * await cutRegion(region);
 * ```
 */
export async function cutRegion(region: RegionSpec): Promise<void> {
  const script = [
    `table inet ${CUT_TABLE}`,
    `delete table inet ${CUT_TABLE}`,
    `table inet ${CUT_TABLE} {`,
    "  chain forward {",
    "    type filter hook forward priority 0; policy accept;",
    `    iifname "${ROUTER_WAN_IF}" drop`,
    `    oifname "${ROUTER_WAN_IF}" drop`,
    "  }",
    "}",
  ].join("\n");
  await runIn(region.routerNs, ["nft", "-f", "-"], { stdin: script + "\n" });
}

/** Heals a cut of `region`. Idempotent. */
export async function healRegion(region: RegionSpec): Promise<void> {
  const script = `table inet ${CUT_TABLE}\ndelete table inet ${CUT_TABLE}\n`;
  await runIn(region.routerNs, ["nft", "-f", "-"], { stdin: script });
}

/** True when `region` is currently cut. */
export async function isCut(region: RegionSpec): Promise<boolean> {
  const result = await runIn(region.routerNs, ["nft", "list", "tables"], { allowFailure: true });
  return result.stdout.includes(CUT_TABLE);
}

/** The relay's counters, as last written by it. */
export async function readRelayStats(paths: StatePaths = statePaths()): Promise<unknown> {
  return await readJsonIfExists(paths.relayStatsFile);
}

if (import.meta.main) {
  const { positionals, values } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      "delay-ms": { type: "string" },
      "jitter-ms": { type: "string" },
      loss: { type: "string" },
      link: { type: "string" },
    },
  });
  const [verb, target] = positionals;
  const topology = await loadTopology();
  switch (verb) {
    case "set": {
      const current = await getWanConditions();
      const change: Partial<LinkConditions> = {};
      if (values["delay-ms"] !== undefined) change.delayMs = Number(values["delay-ms"]);
      if (values["jitter-ms"] !== undefined) change.jitterMs = Number(values["jitter-ms"]);
      if (values.loss !== undefined) change.loss = Number(values.loss);
      const next: WanConditions = values.link === undefined
        ? { ...current, ...change }
        : { ...current, links: { ...current.links, [values.link]: change } };
      await setWanConditions(next);
      console.log(`wan: conditions ${JSON.stringify(next)}`);
      break;
    }
    case "clean":
      await setWanConditions({ ...CLEAN_CONDITIONS });
      console.log("wan: clean");
      break;
    case "cut":
    case "heal": {
      if (target === undefined) throw new TestbedInputError(verb, target, "a region like r2");
      const region = regionByName(topology, target);
      await (verb === "cut" ? cutRegion(region) : healRegion(region));
      console.log(`wan: ${target} ${verb === "cut" ? "cut" : "healed"}`);
      break;
    }
    case "heal-all":
      for (const region of topology.regions) await healRegion(region);
      console.log("wan: all regions healed");
      break;
    case "stats":
      console.log(JSON.stringify(await readRelayStats(), null, 2));
      break;
    case "status": {
      for (const region of topology.regions) {
        console.log(`${region.name}: ${(await isCut(region)) ? "CUT" : "connected"}`);
      }
      console.log(`conditions: ${JSON.stringify(await getWanConditions())}`);
      break;
    }
    default:
      console.error("usage: wan.ts set|clean|cut <r>|heal <r>|heal-all|stats|status");
      Deno.exit(2);
  }
}
