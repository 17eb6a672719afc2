import { deepEqual, equal, notEqual } from "node:assert/strict";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { createMeshNode, gossipDuplicateKey, type MeshNode } from "../node/libp2p.ts";
import { eventually } from "./twin_test_util.ts";

/** The implementation has it; the GossipSub interface does not. */
const meshPeers = (node: MeshNode, topic: string) =>
  (node.services.pubsub as unknown as { getMeshPeers(topic: string): string[] })
    .getMeshPeers(topic);

const bytes = (...values: number[]) => new Uint8Array(values);

Deno.test("gossipDuplicateKey: one key per author and sequence number", () => {
  const a = gossipDuplicateKey({ from: bytes(1, 2, 3), seqno: bytes(0, 0, 7) });
  equal(gossipDuplicateKey({ from: bytes(1, 2, 3), seqno: bytes(0, 0, 7) }), a);
  notEqual(gossipDuplicateKey({ from: bytes(1, 2, 3), seqno: bytes(0, 0, 8) }), a);
  notEqual(gossipDuplicateKey({ from: bytes(1, 2, 4), seqno: bytes(0, 0, 7) }), a);
  // The same bytes split differently between author and sequence number.
  notEqual(
    gossipDuplicateKey({ from: bytes(1, 2), seqno: bytes(3, 4) }),
    gossipDuplicateKey({ from: bytes(1), seqno: bytes(2, 3, 4) }),
  );
  // Messages validation will refuse never share a key.
  notEqual(gossipDuplicateKey({}), gossipDuplicateKey({}));
  notEqual(gossipDuplicateKey({ from: bytes(1) }), gossipDuplicateKey({ from: bytes(1) }));
});

Deno.test("gossip: three linked nodes deliver every message once, duplicates dropped", async () => {
  const nodes: MeshNode[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      nodes.push(
        await createMeshNode({
          privateKey: await generateKeyPair("Ed25519"),
          listen: ["/ip4/127.0.0.1/tcp/0"],
          userAgent: "twinmesh-test",
          factory: "dup-test",
          mdns: false,
          meshKey: null,
        }),
      );
    }
    for (const node of nodes) await node.start();
    const topic = "twinmesh/dup-test/probe/1";
    const received = nodes.map(() => [] as string[]);
    nodes.forEach((node, i) => {
      node.services.pubsub.subscribe(topic);
      node.services.pubsub.addEventListener("message", (event) => {
        if (event.detail.topic === topic) {
          received[i]!.push(new TextDecoder().decode(event.detail.data));
        }
      });
    });
    // A full mesh, as a factory's gateways are: every receiver also gets the
    // other receiver's forwarded copy.
    await nodes[0]!.dial(nodes[1]!.getMultiaddrs()[0]!);
    await nodes[0]!.dial(nodes[2]!.getMultiaddrs()[0]!);
    await nodes[1]!.dial(nodes[2]!.getMultiaddrs()[0]!);
    await eventually(() => nodes.every((node) => meshPeers(node, topic).length === 2));
    const sent = Array.from({ length: 40 }, (_, i) => `m${i}`);
    for (const text of sent) {
      await nodes[0]!.services.pubsub.publish(topic, new TextEncoder().encode(text));
    }
    await eventually(() =>
      received[1]!.length >= sent.length && received[2]!.length >= sent.length
    );
    // Late duplicates would arrive within a few ms on loopback.
    await new Promise((resolve) => setTimeout(resolve, 200));
    deepEqual(received[1]!.toSorted(), sent.toSorted());
    deepEqual(received[2]!.toSorted(), sent.toSorted());
    deepEqual(received[0], []);
  } finally {
    for (const node of nodes) await node.stop();
  }
});
