/**
 * Reads that wait for a twin to change: the replica's versions and change
 * listener, the waiter registry, and `GET /twins/:id` with `If-None-Match` and
 * `Prefer: wait` on real gateway processes.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { MAX_TWIN_WATCHERS, TwinWatchers } from "../node/twin_watch.ts";
import { preferredWaitS } from "../node/routes.ts";
import { makeReplica, syncInMemory } from "./twin_test_util.ts";
import {
  eventually,
  startGateway,
  stopGateway,
  tempDir,
  uniqueFactory,
} from "./gateway_test_util.ts";
import { type GatewayProcess, postJson, sumMetrics } from "../scripts/mesh_processes.ts";

Deno.test("a twin's version changes with local writes, gossip and sync, and not with reads", () => {
  const changedA: string[] = [];
  const a = makeReplica("gw-a", { onChanged: (id) => changedA.push(id) });
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  a.create("arm-2", "welding-arm");
  syncInMemory(a, b);
  const before = a.version("arm-1");
  a.state("arm-1");
  a.flush();
  assertEquals(a.version("arm-1"), before, "reading and flushing change nothing");

  changedA.length = 0;
  a.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: 150 }], "any");
  const afterWrite = a.version("arm-1");
  assert(afterWrite !== before, "a local write gives a new version");
  assertEquals(changedA, ["arm-1"]);
  assertEquals(a.version("arm-2") < afterWrite, true, "other twins keep theirs");

  b.write("arm-1", [{ op: "set", field: "setpoints.weldVoltageV", value: 21 }], "any");
  changedA.length = 0;
  for (const { docId, factory, changes } of b.flush()) {
    a.ingestGossip({ factory, docs: [{ docId, changes }] });
  }
  assertEquals(changedA, ["arm-1"], "applied gossip tells the listener");
  const afterGossip = a.version("arm-1");
  assert(afterGossip > afterWrite);

  // The same changes again are duplicates: nothing changed, nobody woken.
  changedA.length = 0;
  b.write("arm-2", [{ op: "set", field: "setpoints.weldVoltageV", value: 22 }], "any");
  const fromB = b.flush();
  syncInMemory(b, a);
  assertEquals(changedA, ["arm-2"], "sync tells the listener");
  changedA.length = 0;
  for (const { docId, factory, changes } of fromB) {
    a.ingestGossip({ factory, docs: [{ docId, changes }] });
  }
  assertEquals(changedA, [], "a duplicate changes nothing");
});

Deno.test("waiting reads wake on their twin's change, time out, end when the client goes, and are all released on close", async () => {
  const watchers = new TwinWatchers();
  const onArm1 = watchers.wait("arm-1", 10_000)!;
  const alsoArm1 = watchers.wait("arm-1", 10_000)!;
  const onArm2 = watchers.wait("arm-2", 20)!;
  assertEquals(watchers.waiting, 3);
  watchers.changed("arm-3");
  watchers.changed("arm-1");
  assertEquals(await onArm1, "changed");
  assertEquals(await alsoArm1, "changed");
  assertEquals(await onArm2, "timeout");
  assertEquals(watchers.waiting, 0);

  const client = new AbortController();
  const goneAway = watchers.wait("arm-1", 60_000, client.signal)!;
  client.abort();
  assertEquals(await goneAway, "aborted");
  assertEquals(watchers.waiting, 0, "a client that went away frees its slot at once");

  const held = Array.from({ length: MAX_TWIN_WATCHERS }, (_, i) => watchers.wait(`t-${i}`, 60_000));
  assert(held.every((wait) => wait !== undefined));
  assertEquals(watchers.wait("one-more", 60_000), undefined, "the limit refuses, not queues");
  watchers.close();
  assertEquals(new Set(await Promise.all(held)), new Set(["closed"]));
  assertEquals(watchers.wait("after-close", 1_000), undefined);
  assertEquals(watchers.waiting, 0);
});

Deno.test("Prefer: wait=N is read as RFC 7240 says: seconds, capped, ignored when unreadable", () => {
  assertEquals(preferredWaitS(null), 0);
  assertEquals(preferredWaitS("wait=5"), 5);
  assertEquals(preferredWaitS("respond-async, wait = 2"), 2);
  assertEquals(preferredWaitS('wait="1.5"'), 1.5);
  assertEquals(preferredWaitS("wait=3600"), 60);
  assertEquals(preferredWaitS("wait=soon"), 0);
  assertEquals(preferredWaitS("return=minimal"), 0);
});

interface Read {
  status: number;
  etag: string | null;
  value?: unknown;
  ms: number;
}

async function read(gateway: GatewayProcess, id: string, headers: Record<string, string> = {}) {
  const startedAt = performance.now();
  const response = await fetch(`${gateway.http}/twins/${id}`, { headers });
  const body = response.status === 200
    ? await response.json() as { fields: Record<string, { value: unknown }> }
    : (await response.body?.cancel(), undefined);
  return {
    status: response.status,
    etag: response.headers.get("etag"),
    value: body?.fields["setpoints.weldCurrentA"]?.value,
    ms: performance.now() - startedAt,
  } satisfies Read;
}

Deno.test("GET /twins/:id answers 304 for a current ETag, and with Prefer: wait answers when a peer's write lands", async () => {
  const dir = tempDir("twin-watch");
  const factory = uniqueFactory("watch");
  // No telemetry summaries for a minute: the twins change only when the test writes.
  const extraArgs = ["--no-mdns", "--telemetry-hz", "10", "--twin-summary-ms", "60000"];
  const writer = await startGateway({ name: "w1", factory, dir, extraArgs });
  const watcher = await startGateway({
    name: "w2",
    factory,
    dir,
    extraArgs,
    peers: [`/ip4/127.0.0.1/tcp/${writer.spec.listenPort}`],
  });
  let stopped = false;
  try {
    const id = "w1.arm-0";
    let first: Read | undefined;
    for (let i = 0; i < 100 && first?.status !== 200; i++) {
      first = await read(watcher, id);
      if (first.status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assertEquals(first?.status, 200, "the watcher knows the writer's twin");
    const etag = first!.etag!;
    assert(/^"[0-9a-f]{8}-\d+"$/.test(etag), `an ETag: ${etag}`);
    const star = await read(watcher, id, { "if-none-match": "*", prefer: "wait=30" });
    assertEquals(star.status, 304, "`*` matches at once, without waiting");
    assert(star.ms < 5_000);

    // Unchanged: 304 at once without Prefer; 304 after the wait with it.
    const unchanged = await read(watcher, id, { "if-none-match": etag });
    assertEquals(unchanged.status, 304);
    assertEquals(unchanged.etag, etag);
    const waitedOut = await read(watcher, id, { "if-none-match": etag, prefer: "wait=1" });
    assertEquals(waitedOut.status, 304);
    assert(waitedOut.ms >= 900, `waited about a second, not ${waitedOut.ms} ms`);
    const other = await read(watcher, id, { "if-none-match": '"someone-else"' });
    assertEquals(other.status, 200, "another ETag gets the state");

    // A waiting read on the watcher is answered when the writer's command lands.
    const current = await read(watcher, id);
    const waiting = read(watcher, id, { "if-none-match": current.etag!, prefer: "wait=30" });
    await new Promise((r) => setTimeout(r, 200));
    const posted = await postJson(writer, `/twins/${id}/commands`, {
      setpoints: { weldCurrentA: 217 },
    });
    assertEquals(posted.status, 202);
    let answer = await waiting;
    // Another change (an e-stop record, say) may land first: read on until the command shows.
    const deadline = performance.now() + 10_000;
    while (answer.status === 200 && answer.value !== 217 && performance.now() < deadline) {
      answer = await read(watcher, id, { "if-none-match": answer.etag!, prefer: "wait=10" });
    }
    assertEquals({ status: answer.status, value: answer.value }, { status: 200, value: 217 });
    assert(answer.etag !== current.etag);

    // A client that goes away frees its slot; an answered read does not count either.
    const waitingNow = async () =>
      (await sumMetrics([watcher], /^twinmesh_twins_reads_waiting$/))[
        "twinmesh_twins_reads_waiting"
      ];
    const before = await read(watcher, id);
    const client = new AbortController();
    const abandoned = fetch(`${watcher.http}/twins/${id}`, {
      headers: { "if-none-match": before.etag!, prefer: "wait=60" },
      signal: client.signal,
    }).catch(() => "gone");
    const isWaiting = await eventually(async () => (await waitingNow()) === 1, 5_000);
    assert(isWaiting, "the read waits");
    client.abort();
    assertEquals(await abandoned, "gone");
    const freed = await eventually(async () => (await waitingNow()) === 0, 5_000);
    assert(freed, "the gateway let go of the abandoned read");

    // Stopping answers a waiting read at once instead of holding the shutdown.
    const latest = await read(watcher, id);
    const held = read(watcher, id, { "if-none-match": latest.etag!, prefer: "wait=60" });
    await new Promise((r) => setTimeout(r, 200));
    const stopStartedAt = performance.now();
    await stopGateway(watcher);
    stopped = true;
    const released = await held.catch(() => undefined);
    assert(performance.now() - stopStartedAt < 10_000, "the stop was not held by the read");
    if (released) assert([200, 304].includes(released.status), `answered ${released.status}`);
  } finally {
    if (!stopped) await stopGateway(watcher);
    await stopGateway(writer);
  }
});
