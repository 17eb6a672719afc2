/**
 * Foundation, multi-process: real gateway processes, real sockets, real SQLite.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import {
  eventually,
  peersOf,
  runCli,
  spawn,
  startGateway,
  stopAll,
  stopGateway,
  tempDir,
  uniqueFactory,
  waitReady,
} from "./gateway_test_util.ts";
import { getJson } from "../scripts/mesh_processes.ts";

Deno.test("three gateways on one host find each other by mDNS and are all connected within 5 s", async () => {
  const dir = tempDir("mdns");
  const factory = uniqueFactory("mdns");
  const gateways = ["a", "b", "c"].map((name) => spawn({ name, factory, dir }));
  try {
    await Promise.all(gateways.map((g) => waitReady(g)));
    const started = performance.now();
    const connected = await eventually(async () => {
      const views = await Promise.all(gateways.map(peersOf));
      return views.every((peers) =>
        peers.length === 2 && peers.every((p) => p.via === "mdns" && p.factory === factory)
      );
    }, 5_000);
    assert(
      connected,
      `not fully connected within 5 s (waited ${Math.round(performance.now() - started)} ms)`,
    );
    const names = (await peersOf(gateways[0]!)).map((p) => p.name).sort();
    assertEquals(names, ["b", "c"]);
  } finally {
    await stopAll(gateways);
  }
});

Deno.test("two regions without mDNS link through configured peers and relink after a restart", async () => {
  const dir = tempDir("regions");
  const listenPort = 0; // chosen by spawn()
  void listenPort;
  const east = await startGateway({
    name: "east",
    factory: uniqueFactory("east"),
    region: "east",
    dir,
    extraArgs: ["--no-mdns"],
  });
  const eastAddr = `/ip4/127.0.0.1/tcp/${east.spec.listenPort}`;
  const west = await startGateway({
    name: "west",
    factory: uniqueFactory("west"),
    region: "west",
    dir,
    peers: [eastAddr],
    extraArgs: ["--no-mdns"],
  });
  let eastAgain;
  try {
    assert(
      await eventually(
        async () => (await peersOf(west)).some((p) => p.name === "east" && p.via === "configured"),
        5_000,
      ),
      "west never linked to east",
    );
    assert(
      await eventually(async () => (await peersOf(east)).some((p) => p.name === "west"), 5_000),
      "east never saw west",
    );
    await stopGateway(east);
    assert(
      await eventually(async () => (await peersOf(west)).length === 0, 5_000),
      "west did not notice east leaving",
    );
    // Same data dir and port: same identity, same address.
    eastAgain = await startGateway({
      name: "east",
      factory: east.spec.factory,
      region: "east",
      dir,
      listenPort: east.spec.listenPort,
      httpPort: east.spec.httpPort,
      extraArgs: ["--no-mdns"],
    });
    assert(
      await eventually(async () => (await peersOf(west)).some((p) => p.name === "east"), 8_000),
      "west did not relink after restart",
    );
  } finally {
    await stopAll([west, ...(eastAgain ? [eastAgain] : [])]);
  }
});

Deno.test("a gateway without the mesh key cannot connect to the mesh, and the mismatch is logged", async () => {
  const dir = tempDir("meshkey");
  const keyFile = `${dir}/mesh.key`;
  const otherKeyFile = `${dir}/other.key`;
  assertEquals((await runCli(["mesh-key", keyFile])).code, 0);
  assertEquals((await runCli(["mesh-key", otherKeyFile])).code, 0);
  const factory = uniqueFactory("key");
  const a = await startGateway({
    name: "keyed-a",
    factory,
    dir,
    extraArgs: ["--mesh-key", keyFile, "--no-mdns"],
  });
  const addr = `/ip4/127.0.0.1/tcp/${a.spec.listenPort}`;
  const b = await startGateway({
    name: "keyed-b",
    factory,
    dir,
    peers: [addr],
    extraArgs: ["--mesh-key", keyFile, "--no-mdns"],
  });
  const open = await startGateway({
    name: "open",
    factory,
    dir,
    peers: [addr],
    extraArgs: ["--no-mdns"],
  });
  const wrong = await startGateway({
    name: "wrong",
    factory,
    dir,
    peers: [addr],
    extraArgs: ["--mesh-key", otherKeyFile, "--no-mdns"],
  });
  try {
    assert(
      await eventually(async () => (await peersOf(b)).some((p) => p.name === "keyed-a"), 5_000),
      "keyed gateways did not connect",
    );
    // A failed handshake is logged once the dial gives up (at most the 5 s dial timeout).
    const logged = await eventually(
      () =>
        /configured peer unreachable.*mesh key mismatch/.test(
          Deno.readTextFileSync(wrong.spec.logFile),
        ),
      8_000,
      100,
    );
    assert(logged, "the wrong-key gateway did not log a mesh key mismatch");
    assertEquals((await peersOf(open)).length, 0);
    assertEquals((await peersOf(wrong)).length, 0);
    const names = (await peersOf(a)).map((p) => p.name);
    assertEquals(names, ["keyed-b"]);
  } finally {
    await stopAll([a, b, open, wrong]);
  }
});

Deno.test("the peer ID survives a restart and a second gateway on the same data dir fails clearly", async () => {
  const dir = tempDir("identity");
  const factory = uniqueFactory("id");
  const first = await startGateway({ name: "stable", factory, dir, extraArgs: ["--no-mdns"] });
  const firstId = (await getJson<{ peerId: string }>(first, "/health")).peerId;
  try {
    const clash = await runCli([
      "--name",
      "clash",
      "--data-dir",
      first.spec.dataDir,
      "--http",
      "127.0.0.1:0",
      "--listen",
      "/ip4/127.0.0.1/tcp/0",
      "--no-mdns",
    ]);
    assert(clash.code !== 0, "second gateway on the same data dir must fail");
    assertMatch(clash.stderr, /data dir .* is in use by another gateway/);
  } finally {
    await stopGateway(first);
  }
  const again = await startGateway({ name: "stable", factory, dir, extraArgs: ["--no-mdns"] });
  try {
    assertEquals((await getJson<{ peerId: string }>(again, "/health")).peerId, firstId);
  } finally {
    await stopGateway(again);
  }
});

Deno.test("SIGTERM stops a connected gateway, flushing storage, within 2 s", async () => {
  const dir = tempDir("shutdown");
  const factory = uniqueFactory("stop");
  const a = await startGateway({ name: "s1", factory, dir });
  const b = await startGateway({ name: "s2", factory, dir });
  try {
    assert(
      await eventually(async () => (await peersOf(a)).length === 1, 5_000),
      "gateways did not connect",
    );
    const started = performance.now();
    a.child.kill("SIGTERM");
    const status = await a.status;
    const tookMs = performance.now() - started;
    assert(status.success, `exit status ${status.code}`);
    assert(tookMs < 2_000, `shutdown took ${Math.round(tookMs)} ms`);
    assertMatch(Deno.readTextFileSync(a.spec.logFile), /gateway stopped/);
  } finally {
    await stopAll([a, b]);
  }
});
