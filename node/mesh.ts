/**
 * Mesh membership: who is who, and staying connected.
 *
 * - Gateways of the factory are found by mDNS; @libp2p/mdns reports peers
 *   but does not dial them, so we dial on every mDNS answer from a peer we
 *   are not connected to (libp2p's `peer:discovery` fires only the first
 *   time, which would leave a failed first dial unretried).
 * - Configured peers (other regions, through the WireGuard tunnel) are
 *   dialled at start and redialled with capped exponential back-off whenever
 *   the link drops.
 * - Every gateway announces `name`, `factory` and `region` in its identify
 *   agent string; a connected peer that never identifies as a twinmesh
 *   gateway is not listed.
 * - Names are unique in the mesh: asset ids, and so e-stop routing, hang on
 *   them. A name moves to a new peer ID when the peer ID that held it is not
 *   connected (a gateway replaced, or its data dir and key renewed), at the
 *   new one's identify or at the old one's disconnection. A name two
 *   connected gateways (or this one) claim at once is a misconfiguration:
 *   logged as an error at every identify and counted, and kept on both while
 *   both are connected, so a stop for its assets goes to both.
 * - Round-trip times come from libp2p ping, refreshed periodically.
 */
import type { Connection, PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { type Multiaddr, multiaddr } from "@multiformats/multiaddr";
import type { MeshNode } from "./libp2p.ts";
import { TWINMESH_VERSION } from "./libp2p.ts";
import type { Logger } from "./log.ts";

/** Back-off for redialling a configured peer: 250 ms doubling to 5 s. */
export const REDIAL_MIN_MS = 250;
export const REDIAL_MAX_MS = 5_000;
/** One dial attempt may take this long before it counts as failed. */
export const DIAL_TIMEOUT_MS = 5_000;
/** RTT refresh period; pings are tiny, and the view is for humans. */
export const PING_INTERVAL_MS = 5_000;
export const PING_TIMEOUT_MS = 2_000;
/**
 * libp2p identifies a peer once, when the connection opens. If that exchange
 * fails (it has a timeout, and a gateway starting among many on a busy host
 * can miss it), the peer stays connected but unnamed: never listed, never
 * linked for e-stop, and never dialled again because it is connected. So a
 * peer rediscovered by mDNS while connected this long without an identity is
 * identified again.
 */
export const REIDENTIFY_AFTER_MS = 3_000;

export type Via = "mdns" | "configured";

/** What a gateway says about itself. */
export interface GatewayIdentity {
  name: string;
  factory: string;
  region: string;
  /** TCP port of its e-stop thread's libp2p node (same host addresses, same peer ID). */
  estopPort?: number;
}

/** A connected gateway as shown by `GET /peers`. */
export interface PeerView extends GatewayIdentity {
  peerId: string;
  via: Via;
  rttMs: number | null;
}

const AGENT_PREFIX = "twinmesh/";

/** `twinmesh/0.1.0 name=g1 factory=f1 region=r1 estop=40123` */
export function formatAgent(identity: GatewayIdentity): string {
  const estop = identity.estopPort === undefined ? "" : ` estop=${identity.estopPort}`;
  return `${AGENT_PREFIX}${TWINMESH_VERSION} name=${identity.name} factory=${identity.factory} region=${identity.region}${estop}`;
}

/** Inverse of {@link formatAgent}; undefined for anything else. */
export function parseAgent(agent: string | undefined): GatewayIdentity | undefined {
  if (!agent?.startsWith(AGENT_PREFIX)) return undefined;
  const fields = new Map<string, string>();
  for (const part of agent.split(" ").slice(1)) {
    const eq = part.indexOf("=");
    if (eq > 0) fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const name = fields.get("name"), factory = fields.get("factory"), region = fields.get("region");
  if (!name || !factory || !region) return undefined;
  const estopPort = Number(fields.get("estop"));
  return Number.isInteger(estopPort) && estopPort > 0 && estopPort < 65536
    ? { name, factory, region, estopPort }
    : { name, factory, region };
}

interface KnownPeer {
  identity?: GatewayIdentity;
  via?: Via;
  rttMs: number | null;
}

interface ConfiguredPeer {
  address: Multiaddr;
  peerId?: string;
  attempt: number;
  timer?: ReturnType<typeof setTimeout>;
  dialing: boolean;
}

export interface MeshInit {
  self: GatewayIdentity;
  /** Configured peer multiaddrs (with or without /p2p/<id>). */
  peers: string[];
}

export interface MeshComponents {
  libp2p: MeshNode;
  logger: Logger;
  /** Every mDNS answer (node/libp2p.ts MdnsSightings); without it only first discoveries count. */
  sightings?: EventTarget;
}

/** Events other services care about. */
export interface MeshEvents {
  /** A gateway connected and identified itself (again on every reconnection). */
  onGateway?: (peerId: string, identity: GatewayIdentity) => void;
  /** knownGateways() lost a name's claim other than at an identify (see #forgetStaleClaims). */
  onRosterChanged?: () => void;
}

/** Membership service; see the module comment. */
export class Mesh {
  readonly #init: MeshInit;
  readonly #libp2p: MeshNode;
  readonly #log: Logger;
  readonly #known = new Map<string, KnownPeer>();
  readonly #configured: ConfiguredPeer[];
  #pingTimer?: ReturnType<typeof setInterval>;
  #running = false;
  #listeners: Array<[string, EventListener]> = [];
  readonly #reidentifying = new Set<string>();
  readonly #dialing = new Set<string>();
  /** When a failed mDNS dial to a peer was last logged as a warning. */
  readonly #dialFailedAt = new Map<string, number>();
  readonly #sightings: EventTarget | undefined;
  readonly stats = {
    dialFailures: 0,
    reconnects: 0,
    discoveries: 0,
    reidentified: 0,
    /** Names taken over from a peer ID that was not connected (see the module comment). */
    namesMoved: 0,
    /** Identifies of a name that a connected gateway, or this one, holds too. */
    nameConflicts: 0,
  };
  events: MeshEvents = {};

  constructor(init: MeshInit, components: MeshComponents) {
    this.#init = init;
    this.#libp2p = components.libp2p;
    this.#sightings = components.sightings;
    this.#log = components.logger;
    this.#configured = init.peers.map((text) => {
      const address = multiaddr(text);
      return {
        address,
        peerId: address.getComponents().find((c) => c.name === "p2p")?.value,
        attempt: 0,
        dialing: false,
      };
    });
  }

  start(): void {
    this.#running = true;
    const found: EventListener = (event) =>
      this.#found((event as CustomEvent<{ id: PeerId }>).detail.id);
    this.#on("peer:discovery", found);
    if (this.#sightings) {
      this.#sightings.addEventListener("peer", found);
      this.#listeners.push(["sighting", found]);
    }
    this.#on("peer:identify", (event) => {
      const result = (event as CustomEvent<{ peerId: PeerId; agentVersion?: string }>).detail;
      const identity = parseAgent(result.agentVersion);
      const id = result.peerId.toString();
      if (!identity) {
        this.#log.debug("connected peer is not a twinmesh gateway", {
          remote: id,
          agent: result.agentVersion,
        });
        return;
      }
      const entry = this.#entry(id);
      const isNew = entry.identity === undefined;
      this.#claimName(id, identity);
      entry.identity = identity;
      entry.via ??= identity.factory === this.#init.self.factory ? "mdns" : "configured";
      if (isNew) {
        this.#log.info("gateway joined", { remote: id, ...identity, via: entry.via });
      }
      this.events.onGateway?.(id, identity);
    });
    this.#on("peer:disconnect", (event) => {
      const id = (event as CustomEvent<PeerId>).detail.toString();
      const entry = this.#known.get(id);
      if (entry?.identity) {
        const { name } = entry.identity;
        this.#log.info("gateway left", { remote: id, name });
        // A claimant that was still connected when this one identified keeps the name now.
        const holder = [...this.#known].find(([other, e]) =>
          other !== id && e.identity?.name === name && this.#connected(other)
        );
        if (holder && this.#forgetStaleClaims(holder[0], name) > 0) this.events.onRosterChanged?.();
      }
      if (entry) entry.rttMs = null;
      for (const peer of this.#configured) {
        if (peer.peerId === id) {
          peer.attempt = 0;
          this.#scheduleDial(peer, 0);
        }
      }
    });
    for (const peer of this.#configured) this.#scheduleDial(peer, 0);
    this.#pingTimer = setInterval(() => void this.#refreshRtt(), PING_INTERVAL_MS);
  }

  stop(): void {
    this.#running = false;
    clearInterval(this.#pingTimer);
    for (const peer of this.#configured) clearTimeout(peer.timer);
    for (const [type, listener] of this.#listeners) {
      if (type === "sighting") this.#sightings?.removeEventListener("peer", listener);
      else this.#libp2p.removeEventListener(type as "peer:connect", listener);
    }
    this.#listeners = [];
  }

  /** Connected, identified gateways. */
  peers(): PeerView[] {
    const out: PeerView[] = [];
    for (const peerId of this.#libp2p.getPeers()) {
      const id = peerId.toString();
      const entry = this.#known.get(id);
      if (!entry?.identity) continue;
      out.push({
        peerId: id,
        ...entry.identity,
        via: entry.via ?? "configured",
        rttMs: entry.rttMs,
      });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Identity of a peer that identified itself (connected or not). */
  identityOf(peerId: string): GatewayIdentity | undefined {
    return this.#known.get(peerId)?.identity;
  }

  /** How a peer was found ("mdns": LAN discovery in this factory), if known. */
  viaOf(peerId: string): Via | undefined {
    return this.#known.get(peerId)?.via;
  }

  /** All gateways ever identified (connected or not), by peer ID. */
  knownGateways(): Map<string, GatewayIdentity> {
    const out = new Map<string, GatewayIdentity>();
    for (const [id, entry] of this.#known) if (entry.identity) out.set(id, entry.identity);
    return out;
  }

  /** A peer seen by mDNS: dial it unless linked (one dial at a time), identify it again if stuck. */
  #found(id: PeerId): void {
    if (id.equals(this.#libp2p.peerId)) return;
    const key = id.toString();
    const entry = this.#entry(key);
    if (entry.via === undefined) this.stats.discoveries++; // first heard of (answers repeat)
    entry.via ??= "mdns";
    const connections = this.#libp2p.getConnections(id);
    if (connections.length > 0) {
      if (!entry.identity) this.#reidentifyIfStuck(connections[0]!);
      return;
    }
    if (this.#dialing.has(key)) return;
    this.#dialing.add(key);
    this.#libp2p.dial(id, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) }).then(() => {
      this.#dialFailedAt.delete(key);
    }, (err) => {
      this.stats.dialFailures++;
      // A peer that answers mDNS but cannot be reached is retried on every answer:
      // say so once a minute, not at every attempt.
      const last = this.#dialFailedAt.get(key);
      const now = performance.now();
      const level = last === undefined || now - last > 60_000 ? "warn" : "debug";
      if (level === "warn") this.#dialFailedAt.set(key, now);
      this.#log[level]("dial after mDNS discovery failed", {
        remote: key,
        error: describeDialError(err),
      });
    }).finally(() => this.#dialing.delete(key));
  }

  /** See {@link REIDENTIFY_AFTER_MS}; success arrives as a `peer:identify` event. */
  #reidentifyIfStuck(connection: Connection): void {
    const id = connection.remotePeer.toString();
    const openForMs = Date.now() - connection.timeline.open;
    if (openForMs < REIDENTIFY_AFTER_MS || this.#reidentifying.has(id)) return;
    this.#reidentifying.add(id);
    this.stats.reidentified++;
    this.#libp2p.services.identify.identify(connection, {
      signal: AbortSignal.timeout(DIAL_TIMEOUT_MS),
    }).catch((err) => {
      this.#log.warn("identify of a connected peer failed", {
        remote: id,
        error: String(err),
      });
    }).finally(() => this.#reidentifying.delete(id));
  }

  /** Settles who else holds `identity.name` now that peer `id` claims it (see the module comment). */
  #claimName(id: string, identity: GatewayIdentity): void {
    const conflict = (holder: string) => {
      this.stats.nameConflicts++;
      this.#log.error("two gateways claim one name; give each its own --name", {
        name: identity.name,
        remote: id,
        holder,
      });
    };
    if (identity.name === this.#init.self.name) conflict("this gateway");
    for (const [otherId, other] of this.#known) {
      if (otherId !== id && other.identity?.name === identity.name && this.#connected(otherId)) {
        conflict(otherId);
      }
    }
    this.#forgetStaleClaims(id, identity.name);
  }

  /**
   * Drops the claims on `name` of peers not connected while connected
   * `holder` claims it; returns how many.
   */
  #forgetStaleClaims(holder: string, name: string): number {
    let dropped = 0;
    for (const [otherId, other] of this.#known) {
      if (otherId === holder || other.identity?.name !== name || this.#connected(otherId)) continue;
      this.stats.namesMoved++;
      this.#log.warn("gateway name moved to a new peer ID (replaced or re-keyed)", {
        name,
        remote: holder,
        previous: otherId,
      });
      other.identity = undefined;
      dropped++;
    }
    return dropped;
  }

  #connected(peerId: string): boolean {
    return this.#libp2p.getConnections(peerIdFromString(peerId)).length > 0;
  }

  #entry(id: string): KnownPeer {
    let entry = this.#known.get(id);
    if (!entry) {
      entry = { rttMs: null };
      this.#known.set(id, entry);
    }
    return entry;
  }

  #on(type: string, listener: EventListener): void {
    this.#libp2p.addEventListener(type as "peer:connect", listener);
    this.#listeners.push([type, listener]);
  }

  #scheduleDial(peer: ConfiguredPeer, delayMs: number): void {
    if (!this.#running || peer.dialing) return;
    clearTimeout(peer.timer);
    peer.timer = setTimeout(() => void this.#dialConfigured(peer), delayMs);
  }

  async #dialConfigured(peer: ConfiguredPeer): Promise<void> {
    if (!this.#running) return;
    if (peer.peerId && this.#connected(peer.peerId)) {
      peer.attempt = 0;
      return;
    }
    peer.dialing = true;
    try {
      const connection = await this.#libp2p.dial(peer.address, {
        signal: AbortSignal.timeout(DIAL_TIMEOUT_MS),
      });
      const id = connection.remotePeer.toString();
      if (peer.peerId === undefined) peer.peerId = id;
      this.#entry(id).via = "configured";
      if (peer.attempt > 0) this.stats.reconnects++;
      peer.attempt = 0;
      this.#log.info("connected to configured peer", {
        address: peer.address.toString(),
        remote: id,
      });
    } catch (err) {
      this.stats.dialFailures++;
      const delay = Math.min(REDIAL_MAX_MS, REDIAL_MIN_MS * 2 ** peer.attempt);
      // Log the first failure and then only every 10th, so a long outage does not flood the log.
      if (peer.attempt % 10 === 0) {
        const reason = await explainDialFailure(peer.address, err);
        this.#log.warn("configured peer unreachable; retrying", {
          address: peer.address.toString(),
          error: reason,
          retryMs: delay,
          attempt: peer.attempt + 1,
        });
      }
      peer.attempt++;
      peer.dialing = false;
      this.#scheduleDial(peer, delay * (0.75 + Math.random() * 0.5));
      return;
    }
    peer.dialing = false;
  }

  async #refreshRtt(): Promise<void> {
    const peers = this.#libp2p.getPeers();
    await Promise.all(peers.map(async (peerId) => {
      const entry = this.#known.get(peerId.toString());
      if (!entry?.identity) return;
      try {
        entry.rttMs = await this.#libp2p.services.ping.ping(peerId, {
          signal: AbortSignal.timeout(PING_TIMEOUT_MS),
        });
      } catch {
        entry.rttMs = null;
      }
    }));
  }
}

/**
 * Dial errors, made readable. A private-network key mismatch shows up as a
 * failed encryption handshake, since the peer's bytes decrypt to garbage.
 */
export function describeDialError(err: unknown): string {
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  if (
    /decrypt|encryption|handshake|noise|psk|nonce|invalid.*(length|message)|unexpected end/i.test(
      message,
    )
  ) {
    return `${message} (mesh key mismatch, or not a twinmesh gateway)`;
  }
  return message;
}

/** A TCP connect probe may take this long (it only runs on logged failures). */
const TCP_PROBE_TIMEOUT_MS = 1_000;

/**
 * A timed-out dial says nothing about where it failed. If plain TCP to the
 * address works, the libp2p handshake is what failed: with a private network
 * that is the mesh key, so say so.
 */
async function explainDialFailure(address: Multiaddr, err: unknown): Promise<string> {
  const text = describeDialError(err);
  if (!/timeout|timed out|aborted/i.test(text)) return text;
  const match = /^\/(?:ip4|ip6|dns4|dns6|dns)\/([^/]+)\/tcp\/(\d+)/.exec(address.toString());
  if (!match) return text;
  try {
    const conn = await Deno.connect({
      hostname: match[1]!,
      port: Number(match[2]),
      signal: AbortSignal.timeout(TCP_PROBE_TIMEOUT_MS),
    });
    conn.close();
    return `${text}; TCP to ${match[1]}:${
      match[2]
    } works, so the libp2p handshake failed (mesh key mismatch, or not a twinmesh gateway)`;
  } catch {
    return `${text}; no TCP connection to ${match[1]}:${match[2]} either`;
  }
}
