/**
 * Mesh membership over two real libp2p nodes, driven by mDNS answers: a
 * peer whose first dial failed is dialled again on the next answer, and a
 * peer that is connected but never identified (its identify exchange was
 * missed) is identified again.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { multiaddr } from "@multiformats/multiaddr";
import { createMeshNode, MdnsSightings, type MeshNode } from "../node/libp2p.ts";
import { freePort } from "../scripts/mesh_processes.ts";
import { formatAgent, Mesh, REIDENTIFY_AFTER_MS } from "../node/mesh.ts";
import { silentLogger } from "../node/log.ts";
import { waitUntil } from "./wait.ts";

async function node(name: string, port = 0, key?: PrivateKey): Promise<MeshNode> {
  const libp2p = await createMeshNode({
    privateKey: key ?? await generateKeyPair("Ed25519"),
    listen: [`/ip4/127.0.0.1/tcp/${port}`],
    userAgent: formatAgent({ name, factory: "f", region: "r" }),
    factory: "f",
    mdns: false,
    meshKey: null,
  });
  await libp2p.start();
  return libp2p;
}

Deno.test("a connected peer whose identify was missed is identified again on rediscovery", async () => {
  const a = await node("a");
  const b = await node("b");
  let mesh: Mesh | undefined;
  try {
    // Connect and let libp2p's own identify finish before the mesh listens:
    // the mesh has missed it, as when the exchange fails on a busy host.
    await a.dial(b.getMultiaddrs()[0]!);
    await waitUntil(() => a.getPeers().length === 1, 5_000, "a connected to b", 20);
    await new Promise((resolve) => setTimeout(resolve, 200));
    mesh = new Mesh({ self: { name: "a", factory: "f", region: "r" }, peers: [] }, {
      libp2p: a,
      logger: silentLogger,
    });
    mesh.start();
    const rediscover = () =>
      a.dispatchEvent(
        new CustomEvent("peer:discovery", { detail: { id: b.peerId, multiaddrs: [] } }),
      );

    rediscover(); // too soon after the connection opened: identify may still be running
    assertEquals(mesh.peers(), []);
    assertEquals(mesh.stats.reidentified, 0);

    await new Promise((resolve) => setTimeout(resolve, REIDENTIFY_AFTER_MS));
    rediscover();
    await waitUntil(() => mesh!.peers().length === 1, 5_000, "b listed after identify", 20);
    assertEquals(mesh.peers()[0]!.name, "b");
    assertEquals(mesh.stats.reidentified, 1);
  } finally {
    mesh?.stop();
    await a.stop();
    await b.stop();
  }
});

Deno.test("a peer whose first dial failed is dialled again on the next mDNS answer", async () => {
  const a = await node("a");
  const port = freePort();
  const address = multiaddr(`/ip4/127.0.0.1/tcp/${port}`);
  const bKey = await generateKeyPair("Ed25519");
  let b = await node("b", port, bKey);
  const bId = b.peerId;
  await b.stop(); // not listening yet: the first dial fails
  const sightings = new MdnsSightings();
  const mesh = new Mesh({ self: { name: "a", factory: "f", region: "r" }, peers: [] }, {
    libp2p: a,
    sightings,
    logger: silentLogger,
  });
  const answer = () =>
    sightings.dispatchEvent(
      new CustomEvent("peer", { detail: { id: bId, multiaddrs: [address] } }),
    );
  try {
    await a.peerStore.merge(bId, { multiaddrs: [address] }); // as libp2p does on the first answer
    mesh.start();
    answer();
    await waitUntil(() => mesh.stats.dialFailures === 1, 10_000, "the first dial to fail", 20);
    b = await node("b", port, bKey); // now listening
    answer(); // the next answer (about a second later on a LAN)
    await waitUntil(() => mesh.peers().length === 1, 10_000, "b listed after the redial", 20);
    assertEquals(mesh.peers()[0]!.name, "b");
  } finally {
    mesh.stop();
    await a.stop();
    await b.stop();
  }
});
