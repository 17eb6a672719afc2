// Pure parts of the multi-region testbed: topology, the relay's delay line, the seeded PRNG,
// condition parsing and ping parsing. No namespaces needed.

import { allHosts, allNamespaces, buildTopology, hostByName } from "../scripts/testbed/topology.ts";
import { conditionsFor, DelayLine, parseConditions } from "../scripts/testbed/wan_relay.ts";
import { deriveSeed, seededRandom } from "../scripts/testbed/prng.ts";
import { parsePing } from "../scripts/testbed/verify.ts";
import { relayEndpointFor } from "../scripts/testbed/setup.ts";
import { TestbedInputError } from "../scripts/testbed/errors.ts";

function assertEquals(actual: unknown, expected: unknown, what = "value"): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

function assert(condition: unknown, what: string): asserts condition {
  if (!condition) throw new Error(`expected ${what}`);
}

Deno.test("buildTopology() lays out 3 regions of 3 hosts with the documented addresses", () => {
  const topology = buildTopology();
  assertEquals(topology.regions.length, 3);
  assertEquals(allHosts(topology).length, 9);
  assertEquals(allNamespaces(topology).length, 2 + 3 * 4);
  const host = hostByName(topology, "r2-g3");
  assertEquals(host.ns, "tm-r2-g3");
  assertEquals(host.lanIp, "10.77.2.13");
  assertEquals(host.isTunnelHost, false);
  assertEquals(topology.regions[2]?.tunnel.ip, "10.99.0.3");
  assertEquals(topology.links.map((l) => l.name), ["r1-r2", "r1-r3", "r2-r3"]);
  const mgmt = allHosts(topology).map((h) => h.mgmtIp);
  assertEquals(new Set(mgmt).size, mgmt.length, "unique management addresses");
});

Deno.test("buildTopology() rejects sizes outside the address plan", () => {
  for (const init of [{ regions: 4 }, { regions: 0 }, { hostsPerRegion: 4 }, { regions: 1.5 }]) {
    let thrown: unknown;
    try {
      buildTopology(init);
    } catch (error) {
      thrown = error;
    }
    assert(thrown instanceof TestbedInputError, `TestbedInputError for ${JSON.stringify(init)}`);
  }
});

Deno.test("relayEndpointFor() gives each side of a link its own relay port", () => {
  const topology = buildTopology({ regions: 3 });
  assertEquals(relayEndpointFor(topology, 1, 3), "10.77.101.1:40013");
  assertEquals(relayEndpointFor(topology, 3, 1), "10.77.103.1:41013");
});

Deno.test("DelayLine releases each datagram after the configured delay, in order", () => {
  const line = new DelayLine({ random: seededRandom(7) });
  line.setConditions({ delayMs: 40, jitterMs: 0, loss: 0 });
  line.offer(0, new Uint8Array([1]));
  line.offer(5, new Uint8Array([2]));
  assertEquals(line.takeDue(39).length, 0);
  assertEquals(line.takeDue(40).map((b) => b[0]), [1]);
  assertEquals(line.nextReleaseAtMs(), 45);
  assertEquals(line.takeDue(100).map((b) => b[0]), [2]);
  assertEquals(line.size, 0);
});

Deno.test("DelayLine jitter stays within delay ± jitter and never reorders", () => {
  const line = new DelayLine({ random: seededRandom(3) });
  line.setConditions({ delayMs: 40, jitterMs: 10, loss: 0 });
  let previous = -Infinity;
  for (let i = 0; i < 1000; i++) {
    line.offer(i * 20, new Uint8Array([i & 0xff]));
    const releaseAtMs = line.nextReleaseAtMs();
    assert(releaseAtMs !== undefined, "a queued datagram");
    const delayMs = releaseAtMs - i * 20;
    assert(delayMs >= 30 && delayMs <= 50, `delay ${delayMs} within 40 ± 10`);
    assert(releaseAtMs >= previous, "release times never go backwards");
    previous = releaseAtMs;
    line.takeDue(releaseAtMs);
  }
});

Deno.test("DelayLine loss matches the probability and replays from the seed", () => {
  const outcomes = (seed: number) => {
    const line = new DelayLine({ random: seededRandom(seed), queueMax: 100_000 });
    line.setConditions({ delayMs: 0, jitterMs: 0, loss: 0.01 });
    return Array.from({ length: 20_000 }, (_, i) => line.offer(i, new Uint8Array(1)));
  };
  const first = outcomes(11);
  const lost = first.filter((o) => o === "lost").length;
  assert(lost > 140 && lost < 260, `about 200 of 20000 lost at 1 %, got ${lost}`);
  assertEquals(outcomes(11), first, "same seed, same drops");
});

Deno.test("DelayLine drops and reports overflow past its queue maximum", () => {
  const line = new DelayLine({ random: seededRandom(1), queueMax: 3 });
  line.setConditions({ delayMs: 10, jitterMs: 0, loss: 0 });
  const outcomes = [0, 1, 2, 3].map((i) => line.offer(i, new Uint8Array(1)));
  assertEquals(outcomes, ["queued", "queued", "queued", "overflow"]);
});

Deno.test("seededRandom() is uniform-ish and deriveSeed() separates streams", () => {
  const random = seededRandom(42);
  let sum = 0;
  for (let i = 0; i < 10_000; i++) {
    const x = random();
    assert(x >= 0 && x < 1, "values in [0, 1)");
    sum += x;
  }
  assert(Math.abs(sum / 10_000 - 0.5) < 0.02, "mean near 0.5");
  assert(deriveSeed(1, "r1-r2:a>b") !== deriveSeed(1, "r1-r2:b>a"), "distinct seeds");
});

Deno.test("parseConditions() validates fields and applies per-link overrides", () => {
  const conditions = parseConditions({
    delayMs: 40,
    jitterMs: 5,
    loss: 0.01,
    links: { "r1-r2": { loss: 0.5 } },
  });
  assertEquals(conditionsFor(conditions, "r1-r2"), { delayMs: 40, jitterMs: 5, loss: 0.5 });
  assertEquals(conditionsFor(conditions, "r2-r3"), { delayMs: 40, jitterMs: 5, loss: 0.01 });
  for (const bad of [{ loss: 2 }, { delayMs: -1 }, { jitterMs: "5" }, null]) {
    let thrown: unknown;
    try {
      parseConditions(bad);
    } catch (error) {
      thrown = error;
    }
    assert(thrown instanceof TestbedInputError, `rejects ${JSON.stringify(bad)}`);
  }
});

Deno.test("parsePing() reads replies, loss and RTT percentiles from ping -D output", () => {
  const output = [
    "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.",
    "[1700000000.100000] 64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=80.5 ms",
    "[1700000000.200000] 64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=81.5 ms",
    "",
    "--- 10.99.0.2 ping statistics ---",
    "3 packets transmitted, 2 received, 33.3333% packet loss, time 200ms",
  ].join("\n");
  const stats = parsePing(output);
  assertEquals([stats.sent, stats.received], [3, 2]);
  assert(Math.abs(stats.lossPct - 33.33) < 0.01, "loss 33.3 %");
  assertEquals([stats.rttMinMs, stats.rttMaxMs], [80.5, 81.5]);
  assertEquals(stats.replyAtMs, [1700000000100, 1700000000200]);
});
