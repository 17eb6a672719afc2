/**
 * Assembles the gateway's libp2p 3 node: TCP + Noise + Yamux, identify, ping,
 * gossipsub, mDNS for the factory LAN, an optional pre-shared mesh key
 * (private network), and Prometheus metrics in the gateway's registry.
 */
import { createLibp2p, type Libp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { type Identify, identify } from "@libp2p/identify";
import { type Ping, ping } from "@libp2p/ping";
import { type GossipSub, gossipsub } from "@libp2p/gossipsub";
import { mdns } from "@libp2p/mdns";
import { preSharedKey } from "@libp2p/pnet";
import { prometheusMetrics } from "@libp2p/prometheus-metrics";
import type { PrivateKey } from "@libp2p/interface";
import type { Registry } from "prom-client";
import { yamuxMuxer } from "./yamux_window.ts";

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
/**
 * Extra queries right after start, in ms. Gateways of a factory often start
 * together (a power-up, the local mesh): the query sent at start then finds
 * nobody listening yet, and discovery waits a full interval.
 */
export const MDNS_START_BURST_MS: readonly number[] = [150, 350, 600];

type Discovery = ReturnType<ReturnType<typeof mdns>>;
/** The lifecycle and socket of the @libp2p/mdns class, which its declared type hides. */
interface MdnsInternals {
  start(): Promise<void>;
  stop(): Promise<void>;
  mdns?: { query(query: unknown): void };
}

/**
 * @libp2p/mdns with {@link MDNS_START_BURST_MS}. The module has no option for
 * it, so the burst reuses its multicast socket (`mdns`, a field of the pinned
 * 12.x class); if a future version renames it, the burst is skipped and
 * discovery falls back to the interval.
 */
function mdnsWithStartBurst(serviceTag: string, sightings: MdnsSightings | undefined) {
  const create = mdns({ interval: MDNS_INTERVAL_MS, serviceTag });
  return (components: Parameters<typeof create>[0]): Discovery => {
    const discovery = create(components);
    discovery.addEventListener("peer", (event) => {
      sightings?.dispatchEvent(new CustomEvent("peer", { detail: event.detail }));
    });
    const internals = discovery as unknown as MdnsInternals;
    const start = internals.start.bind(discovery);
    const timers: ReturnType<typeof setTimeout>[] = [];
    internals.start = async () => {
      await start();
      for (const ms of MDNS_START_BURST_MS) {
        timers.push(setTimeout(() => {
          internals.mdns?.query({ questions: [{ name: serviceTag, type: "PTR" }] });
        }, ms));
      }
    };
    const stop = internals.stop.bind(discovery);
    internals.stop = async () => {
      for (const timer of timers) clearTimeout(timer);
      await stop();
    };
    return discovery;
  };
}
/** Connections kept at most: a factory has tens of gateways, plus region peers. */
export const MAX_CONNECTIONS = 300;
/** Inbound connection attempts accepted per second per remote host. */
export const INBOUND_CONNECTIONS_PER_S = 100;

/**
 * Every mDNS answer, as a `peer` event (`CustomEvent<PeerInfo>`). libp2p turns
 * an answer into `peer:discovery` only the first time it sees the peer, so a
 * gateway whose first dial failed (a busy moment) would never be dialled
 * again; the mesh listens here instead, once per answer (about a second).
 */
export class MdnsSightings extends EventTarget {}

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
  /** Receives every mDNS answer (see {@link MdnsSightings}). */
  sightings?: MdnsSightings;
}

/** Creates (but does not start) the node. */
export async function createMeshNode(init: MeshNodeInit): Promise<MeshNode> {
  const node = await createLibp2p<MeshServices>({
    privateKey: init.privateKey,
    start: false,
    nodeInfo: { userAgent: init.userAgent },
    addresses: { listen: init.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamuxMuxer()],
    ...(init.meshKey ? { connectionProtector: preSharedKey({ psk: init.meshKey }) } : {}),
    peerDiscovery: init.mdns
      ? [mdnsWithStartBurst(mdnsServiceTag(init.factory), init.sightings)]
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
        ...GOSSIP_MESH_DEGREE,
        idontwantMinDataSize: GOSSIP_IDONTWANT_MIN_BYTES,
        fastMsgIdFn: gossipDuplicateKey,
        seenTTL: GOSSIP_SEEN_TTL_MS,
      }),
    },
  });
  keepNoDeliveryRecords(node);
  return node;
}

/**
 * Gossipsub mesh degree, lower than the library's (D 6, Dlo 4, Dhi 12, Dlazy 6).
 * A factory's gateways are all linked to each other, and a publisher already
 * sends its own message to every subscribed peer (flood publish), so mesh
 * forwarding mostly delivers duplicates: with D 6 each of N gateways passes a
 * message to ~5 peers that have it. Measured with 10 gateways on 2 cores
 * (`bench estop`): p99 e-stop latency 384-530 ms with the defaults, 235-282 ms
 * with these. Three mesh peers still give every message a second path, and
 * IHAVE gossip and twin sync sessions repair what is missed.
 */
export const GOSSIP_MESH_DEGREE = { D: 3, Dlo: 2, Dhi: 5, Dout: 1, Dlazy: 3 } as const;

/**
 * Messages smaller than this get no IDONTWANT (gossipsub 1.2; the library's
 * threshold is 512 B). A twin batch of one write is ~620 B, so with the
 * library's threshold every received batch made one more RPC to each other
 * mesh peer: as many control RPCs as data RPCs, each encoded and encrypted on
 * its own. On a factory LAN the peer has usually forwarded its copy before
 * the IDONTWANT arrives, so they saved little. (`bench twins` CPU per write
 * did not move beyond its ±8% run-to-run noise either way.) Large messages,
 * such as catch-up batches, still get them.
 */
export const GOSSIP_IDONTWANT_MIN_BYTES = 16 * 1024;

/**
 * How long gossipsub remembers a message's id to drop its copies (the
 * library's default is 2 minutes). Copies in a factory mesh come within a
 * second, peers answer IWANT only from the last few heartbeats' messages,
 * and a twin change seen again later is dropped by its hash. Two minutes of
 * ids (~400 messages/s under `bench twins`) grew every gateway's old
 * generation for two minutes (see keepNoDeliveryRecords).
 */
export const GOSSIP_SEEN_TTL_MS = 20_000;

/**
 * Gossipsub's peer scoring keeps a delivery record of every message for 2
 * minutes (a library constant) to score peers by per-topic parameters. This
 * mesh sets none, so nothing reads them: they only fill the old generation
 * (with 2-minute seen caches, ~50 MB live after two minutes of `bench
 * twins`, ~32 MB with both at 10 s), which makes full garbage collections
 * longer and more frequent. The scoring code still gets a record per call,
 * but none is kept. The library's shape is checked, so a version that moves
 * the records fails here, loudly.
 */
function keepNoDeliveryRecords(node: MeshNode): void {
  const score = (node.services.pubsub as unknown as { score?: { deliveryRecords?: unknown } })
    .score;
  const records = score?.deliveryRecords as { ensureRecord?: unknown } | undefined;
  if (!score || typeof records?.ensureRecord !== "function") {
    throw new Error(
      "@libp2p/gossipsub: its score's deliveryRecords moved; see keepNoDeliveryRecords",
    );
  }
  score.deliveryRecords = {
    // status 0: DeliveryRecordStatus.unknown, what a new record starts with
    ensureRecord: () => ({ status: 0, firstSeenTsMs: Date.now(), validated: 0, peers: new Set() }),
    getRecord: () => undefined,
    gc: () => {},
    clear: () => {},
  };
}

let unkeyedMessages = 0;

/** Longest author (peer id bytes) keyed; Ed25519, secp256k1 and RSA peer ids are 34-39 bytes. */
const MAX_KEYED_AUTHOR_BYTES = 64;
/** Gossipsub's sequence numbers are 8 bytes. */
const KEYED_SEQNO_BYTES = 8;

/**
 * Gossipsub's local duplicate check before validation (`fastMsgIdFn`): the
 * author and sequence number, which under the strict-sign policy are the
 * message id itself. Without it a duplicate is only recognised after its
 * signature is verified (~35 µs), and a factory mesh delivers most messages
 * twice. A key is remembered only for messages that passed validation, so a
 * forged copy cannot shadow the real one. The fields are unvalidated peer
 * input: a message whose author or sequence number has an impossible length
 * (or none) gets a key of its own and is left to validation, which refuses
 * it cheaply, rather than a key built from megabytes.
 */
export function gossipDuplicateKey(message: { from?: Uint8Array; seqno?: Uint8Array }): string {
  const { from, seqno } = message;
  if (
    !from || !seqno || from.length > MAX_KEYED_AUTHOR_BYTES || seqno.length !== KEYED_SEQNO_BYTES
  ) {
    return `unkeyed:${unkeyedMessages++}`;
  }
  return String.fromCharCode(...from, ...seqno); // seqno's fixed length makes the split unique
}

/** `_twinmesh-<factory>._udp.local`: gateways only discover their own factory. */
export function mdnsServiceTag(factory: string): string {
  return `_twinmesh-${factory.toLowerCase()}._udp.local`;
}
