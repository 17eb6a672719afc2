import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import { generateKeyPair } from "@libp2p/crypto/keys";
import {
  createMeshNode,
  GOSSIP_SEEN_TTL_MS,
  gossipDuplicateKey,
  type MeshNode,
} from "../node/libp2p.ts";
import { eventually } from "./twin_test_util.ts";

/** The implementation's parts the GossipSub interface does not show. */
type GossipInternals = {
  getMeshPeers(topic: string): string[];
  /** Duplicate keys of validated messages; only kept when a `fastMsgIdFn` is set. */
  fastMsgIdCache?: { size: number };
  seenCache: { size: number; validityMs: number };
  /** The library's delivery records hold a `records` map; keepNoDeliveryRecords' have none. */
  score: { deliveryRecords: { records?: Map<string, unknown> } };
};
const internals = (node: MeshNode) => node.services.pubsub as unknown as GossipInternals;
const meshPeers = (node: MeshNode, topic: string) => internals(node).getMeshPeers(topic);

const bytes = (...values: number[]) => new Uint8Array(values);

Deno.test("gossipDuplicateKey: one key per author and sequence number", () => {
  const seqno = (n: number) => bytes(0, 0, 0, 0, 0, 0, 0, n);
  const a = gossipDuplicateKey({ from: bytes(1, 2, 3), seqno: seqno(7) });
  equal(gossipDuplicateKey({ from: bytes(1, 2, 3), seqno: seqno(7) }), a);
  notEqual(gossipDuplicateKey({ from: bytes(1, 2, 3), seqno: seqno(8) }), a);
  notEqual(gossipDuplicateKey({ from: bytes(1, 2, 4), seqno: seqno(7) }), a);
  // Messages validation will refuse never share a key, and an impossible
  // length is not read at all: the fields are unvalidated peer input.
  notEqual(gossipDuplicateKey({}), gossipDuplicateKey({}));
  notEqual(gossipDuplicateKey({ from: bytes(1) }), gossipDuplicateKey({ from: bytes(1) }));
  const short = { from: bytes(1, 2, 3), seqno: bytes(7) };
  notEqual(gossipDuplicateKey(short), gossipDuplicateKey(short));
  const huge = { from: new Uint8Array(4 << 20), seqno: seqno(7) };
  const hugeKey = gossipDuplicateKey(huge);
  notEqual(gossipDuplicateKey(huge), hugeKey);
  ok(hugeKey.length < 100, "no key is built from megabytes of author");
});

Deno.test("gossip: three linked nodes deliver every message once, duplicates dropped by key", async () => {
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
    // The receivers recognise copies by author and sequence number, before
    // verifying their signatures again.
    for (const receiver of [nodes[1]!, nodes[2]!]) {
      ok((internals(receiver).fastMsgIdCache?.size ?? 0) >= sent.length, "keys remembered");
      // Ids are remembered for GOSSIP_SEEN_TTL_MS, and peer scoring keeps no
      // per-message delivery records (keepNoDeliveryRecords).
      ok(internals(receiver).seenCache.size >= sent.length, "message ids remembered");
      equal(internals(receiver).seenCache.validityMs, GOSSIP_SEEN_TTL_MS);
      const records = internals(receiver).score.deliveryRecords;
      equal(records.records?.size ?? 0, 0, "no delivery record kept");
    }
  } finally {
    for (const node of nodes) await node.stop();
  }
});
