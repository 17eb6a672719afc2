import { ok } from "node:assert/strict";
import dgram from "node:dgram";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { createMeshNode, MDNS_INTERVAL_MS, MDNS_START_BURST_MS } from "../node/libp2p.ts";

Deno.test("mDNS: a starting node repeats its query within its first interval", async () => {
  const factory = `burst-${crypto.randomUUID().slice(0, 8)}`;
  const label = new TextEncoder().encode(`_twinmesh-${factory}`);
  let queries = 0;
  const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
  socket.on("message", (packet: Uint8Array) => {
    const isQuery = (packet[2]! & 0x80) === 0;
    if (isQuery && indexOf(packet, label) >= 0) queries++;
  });
  await new Promise<void>((resolve) => socket.bind(5353, resolve));
  socket.addMembership("224.0.0.251");
  const node = await createMeshNode({
    privateKey: await generateKeyPair("Ed25519"),
    listen: ["/ip4/127.0.0.1/tcp/0"],
    userAgent: "twinmesh-test",
    factory,
    mdns: true,
    meshKey: null,
  });
  try {
    await node.start();
    // Before the first periodic query: only the start query and the burst.
    await new Promise((resolve) => setTimeout(resolve, MDNS_INTERVAL_MS - 100));
  } finally {
    await node.stop();
    socket.close();
  }
  ok(queries >= 1 + MDNS_START_BURST_MS.length, `saw ${queries} queries`);
});

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
