/**
 * In-process e-stop test mesh: minimal libp2p nodes (TCP on 127.0.0.1, Noise,
 * Yamux, Identify) each running the e-stop service over a fake adapter and a
 * shared directory. A connection gater lets tests cut and heal links.
 */
import { createLibp2p, type Libp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { DatabaseSync } from "node:sqlite";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import {
  createEstopService,
  type EstopEvent,
  type EstopService,
  type EstopServiceInit,
  type EstopTarget,
} from "../node/estop_service.ts";
import { waitUntil } from "./wait.ts";

/** Records every adapter stop: which assets, and when (wall ms, sub-ms). */
export interface FakeAdapter {
  stops: { assetIds: string[]; reason: string; atMs: number }[];
  holds: { assetIds: string[]; reason: string }[];
}

/** One gateway of the test mesh. */
export interface TestGateway {
  name: string;
  peerId: string;
  libp2p: Libp2p;
  privateKey: PrivateKey;
  db: DatabaseSync;
  clock: HybridLogicalClock;
  service: EstopService;
  adapter: FakeAdapter;
  events: EstopEvent[];
  /** Peers this gateway refuses to connect to (a partition). */
  blocked: Set<string>;
  assets: string[];
}

/** Asset ownership shared by every gateway of a test mesh. */
export class TestDirectory {
  readonly owners = new Map<string, string>();
  readonly gateways: string[] = [];

  ownersOf(assetId: string): string[] {
    const owner = this.owners.get(assetId);
    return owner ? [owner] : [];
  }

  gatewaysIn(target: EstopTarget): string[] {
    if (target.kind === "asset") {
      const owner = this.owners.get(target.id);
      return owner ? [owner] : [];
    }
    if (target.kind === "cell") {
      return [
        ...new Set(
          [...this.owners].filter(([a]) => a.startsWith(`${target.id}.`)).map(([, p]) => p),
        ),
      ];
    }
    return [...this.gateways];
  }

  localAssets(peerId: string, target: EstopTarget): string[] {
    const mine = [...this.owners].filter(([, p]) => p === peerId).map(([a]) => a);
    if (target.kind === "asset") return mine.filter((a) => a === target.id);
    if (target.kind === "cell") return mine.filter((a) => a.startsWith(`${target.id}.`));
    return mine;
  }
}

const silent = { debug() {}, info() {}, warn() {}, error() {} };
/** `ESTOP_TEST_LOG=1` prints the services' logs (debugging a failing test). */
const testLogger = Deno.env.get("ESTOP_TEST_LOG")
  ? {
    debug: (m: string, f?: unknown) => console.log("D", m, JSON.stringify(f)),
    info: (m: string, f?: unknown) => console.log("I", m, JSON.stringify(f)),
    warn: (m: string, f?: unknown) => console.log("W", m, JSON.stringify(f)),
    error: (m: string, f?: unknown) => console.log("E", m, JSON.stringify(f)),
  }
  : silent;

/** Options for {@link createTestGateway}. */
export interface TestGatewayOptions {
  name: string;
  directory: TestDirectory;
  assetCount?: number;
  init?: EstopServiceInit;
  /** Reuse an identity (restart tests). */
  privateKey?: PrivateKey;
  /** SQLite path; default in-memory. */
  dbPath?: string;
  nowMs?: () => number;
  publishGossip?: (frame: Uint8Array) => void;
  /** Start the e-stop service (default true). */
  start?: boolean;
  /** Passed as the service's `syncDb` (commits then wait for it before acks). */
  syncDb?: () => Promise<void>;
}

/** A libp2p node plus e-stop service, with `assetCount` arms named `<name>.arm-<i>`. */
export async function createTestGateway(options: TestGatewayOptions): Promise<TestGateway> {
  const privateKey = options.privateKey ?? await generateKeyPair("Ed25519");
  const blocked = new Set<string>();
  const libp2p = await createLibp2p({
    privateKey,
    addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() },
    // Every test node dials from 127.0.0.1: lift the per-host inbound rate limit.
    connectionManager: { inboundConnectionThreshold: 10_000, maxIncomingPendingConnections: 100 },
    connectionGater: {
      denyDialMultiaddr: () => false,
      denyDialPeer: (peerId) => blocked.has(peerId.toString()),
      denyInboundEncryptedConnection: (peerId) => blocked.has(peerId.toString()),
      denyOutboundEncryptedConnection: (peerId) => blocked.has(peerId.toString()),
    },
  });
  const peerId = libp2p.peerId.toString();
  const assets: string[] = [];
  for (let i = 0; i < (options.assetCount ?? 2); i++) {
    const assetId = `${options.name}.arm-${i}`;
    options.directory.owners.set(assetId, peerId);
    assets.push(assetId);
  }
  if (!options.directory.gateways.includes(peerId)) options.directory.gateways.push(peerId);
  const db = new DatabaseSync(options.dbPath ?? ":memory:");
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA synchronous = NORMAL");
  const clock = new HybridLogicalClock({
    node: peerId,
    ...(options.nowMs ? { wallClockMs: () => Math.floor(options.nowMs!()) } : {}),
  });
  const adapter: FakeAdapter = { stops: [], holds: [] };
  const events: EstopEvent[] = [];
  const directory = options.directory;
  const service = createEstopService(options.init ?? {}, {
    libp2p,
    db,
    ...(options.syncDb ? { syncDb: options.syncDb } : {}),
    clock,
    privateKey,
    logger: testLogger,
    ownersOf: (assetId) => directory.ownersOf(assetId),
    gatewaysIn: (target) => directory.gatewaysIn(target),
    localAssets: (target) => directory.localAssets(peerId, target),
    stopAssets: (assetIds, reason) => {
      adapter.stops.push({ assetIds, reason, atMs: performance.timeOrigin + performance.now() });
    },
    holdAssets: (assetIds, reason) => void adapter.holds.push({ assetIds, reason }),
    ...(options.nowMs ? { nowMs: options.nowMs } : {}),
    ...(options.publishGossip ? { publishGossip: options.publishGossip } : {}),
  });
  service.onEvent((event) => void events.push(event));
  if (options.start ?? true) await service.start();
  return {
    name: options.name,
    peerId,
    libp2p,
    privateKey,
    db,
    clock,
    service,
    adapter,
    events,
    blocked,
    assets,
  };
}

/** Connects every pair of gateways (full mesh), retrying dials that race each other. */
export async function connectAll(gateways: readonly TestGateway[]): Promise<void> {
  for (let i = 0; i < gateways.length; i++) {
    const dials: Promise<unknown>[] = [];
    for (let j = i + 1; j < gateways.length; j++) {
      dials.push(dialWithRetry(gateways[i]!, gateways[j]!));
    }
    await Promise.all(dials);
  }
}

async function dialWithRetry(from: TestGateway, to: TestGateway): Promise<void> {
  const attemptsMax = 5;
  for (let attempt = 1;; attempt++) {
    try {
      await from.libp2p.dial(to.libp2p.getMultiaddrs()[0]!);
      return;
    } catch (err) {
      if (attempt >= attemptsMax) throw err;
      await new Promise((resolve) => setTimeout(resolve, 20 * attempt));
    }
  }
}

/** Cuts `a` ↔ `b`: both refuse reconnection and their connections are closed. */
export async function partition(a: TestGateway, b: TestGateway): Promise<void> {
  a.blocked.add(b.peerId);
  b.blocked.add(a.peerId);
  await a.libp2p.hangUp(b.libp2p.peerId);
  await b.libp2p.hangUp(a.libp2p.peerId);
}

/** Heals a partition and reconnects. */
export async function heal(a: TestGateway, b: TestGateway): Promise<void> {
  a.blocked.delete(b.peerId);
  b.blocked.delete(a.peerId);
  await dialWithRetry(a, b);
}

/** Polls `condition` every few ms until it holds or `timeoutMs` passes. */
export function waitFor(
  condition: () => boolean,
  timeoutMs = 5_000,
  what = "condition",
): Promise<void> {
  return waitUntil(condition, timeoutMs, what, 5);
}

/** Waits until every gateway has a live e-stop link to every other. */
export async function waitForLinks(gateways: readonly TestGateway[], timeoutMs = 5_000) {
  await waitFor(
    () => gateways.every((g) => g.service.livePeers().length >= gateways.length - 1),
    timeoutMs,
    "e-stop links between all gateways",
  );
}

/** Stops services and nodes. */
export async function stopAll(gateways: readonly TestGateway[]): Promise<void> {
  await Promise.all(gateways.map((g) => g.service.stop()));
  await Promise.all(gateways.map((g) => g.libp2p.stop()));
  for (const g of gateways) {
    try {
      g.db.close();
    } catch { /* already closed */ }
  }
}
