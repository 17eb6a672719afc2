/**
 * Assembles the gateway's libp2p 3 node: TCP + Noise + Yamux, identify, ping,
 * gossipsub, mDNS for the factory LAN, an optional pre-shared mesh key
 * (private network), and Prometheus metrics in the gateway's registry.
 */
import { createLibp2p, type Libp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { type Identify, identify } from "@libp2p/identify";
import { type Ping, ping } from "@libp2p/ping";
import { type GossipSub, gossipsub } from "@libp2p/gossipsub";
import { mdns } from "@libp2p/mdns";
import { preSharedKey } from "@libp2p/pnet";
import { prometheusMetrics } from "@libp2p/prometheus-metrics";
import type { PrivateKey } from "@libp2p/interface";
import type { Registry } from "prom-client";

export const TWINMESH_VERSION = "0.1.0";

/** The services every gateway node carries. */
export type MeshServices = {
  identify: Identify;
  ping: Ping;
  pubsub: GossipSub;
};
export type MeshNode = Libp2p<MeshServices>;

/**
 * mDNS query interval. Discovery mostly happens through the query each node
 * sends at start and the answers to it; the periodic query catches packets
 * lost on a busy LAN (several gateways answering one query at once); one small
 * multicast query per second per gateway is negligible on a factory LAN.
 */
export const MDNS_INTERVAL_MS = 1_000;
/** Connections kept at most: a factory has tens of gateways, plus region peers. */
export const MAX_CONNECTIONS = 300;
/** Inbound connection attempts accepted per second per remote host. */
export const INBOUND_CONNECTIONS_PER_S = 100;

export interface MeshNodeInit {
  privateKey: PrivateKey;
  listen: string[];
  /** Identify agent string; carries the gateway's name, factory and region. */
  userAgent: string;
  /** Factory name: scopes the mDNS service tag so factories do not mix on one LAN. */
  factory: string;
  mdns: boolean;
  /** Pre-shared key file contents (libp2p pnet format) or null for an open mesh. */
  meshKey: Uint8Array | null;
  /** Prometheus registry that receives libp2p's own metrics. */
  registry?: Registry;
}

/** Creates (but does not start) the node. */
export function createMeshNode(init: MeshNodeInit): Promise<MeshNode> {
  return createLibp2p<MeshServices>({
    privateKey: init.privateKey,
    start: false,
    nodeInfo: { userAgent: init.userAgent },
    addresses: { listen: init.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    ...(init.meshKey ? { connectionProtector: preSharedKey({ psk: init.meshKey }) } : {}),
    peerDiscovery: init.mdns
      ? [mdns({ interval: MDNS_INTERVAL_MS, serviceTag: mdnsServiceTag(init.factory) })]
      : [],
    // The default inbound threshold (5 connections per second per host) refuses
    // a restarted factory or a local mesh whose gateways all share one address.
    connectionManager: {
      maxConnections: MAX_CONNECTIONS,
      inboundConnectionThreshold: INBOUND_CONNECTIONS_PER_S,
    },
    ...(init.registry
      ? { metrics: prometheusMetrics({ registry: init.registry, collectDefaultMetrics: false }) }
      : {}),
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        // Twin batches are published even when no peer is subscribed yet (a
        // lone gateway still works); the sync protocol fills gaps later.
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
      }),
    },
  });
}

/** `_twinmesh-<factory>._udp.local`: gateways only discover their own factory. */
export function mdnsServiceTag(factory: string): string {
  return `_twinmesh-${factory.toLowerCase()}._udp.local`;
}
