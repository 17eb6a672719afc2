/**
 * The gateway: wires storage, identity, clock, libp2p, membership, assets,
 * services and the HTTP API together, and takes them down in order.
 */
import "./deno_compat.ts";
import type { GatewayConfig } from "./config.ts";
import { parseHostPort } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { openStore, type GatewayStore } from "./storage.ts";
import { loadOrCreateIdentity } from "./identity.ts";
import { readMeshKey } from "./mesh_key.ts";
import { createMeshNode, type MeshNode } from "./libp2p.ts";
import { formatAgent, Mesh } from "./mesh.ts";
import { GatewayMetrics } from "./metrics.ts";
import { type HttpServerHandle, Router, serveHttp } from "./http.ts";
import { SimulatedArm } from "./assets/simulated_arm.ts";
import type { ArmTelemetry, AssetAdapter } from "./assets/adapter.ts";
import { HybridLogicalClock } from "../protocols/hlc.ts";

/** A whole shutdown must fit in this (the operator's expectation: ~2 s). */
export const SHUTDOWN_BUDGET_MS = 1_800;
const HLC_META_KEY = "hlc.persistedWallMs";

/** A running gateway. */
export interface Gateway {
  readonly config: GatewayConfig;
  readonly peerId: string;
  /** `host:port` the HTTP API is bound to. */
  readonly httpAddress: string;
  readonly libp2p: MeshNode;
  readonly mesh: Mesh;
  readonly assets: ReadonlyMap<string, AssetAdapter>;
  readonly clock: HybridLogicalClock;
  readonly log: Logger;
  /** Stops everything and closes storage; safe to call twice. */
  stop(): Promise<void>;
}

/** Gateway-level counters. */
interface GatewayStats {
  telemetrySamples: number;
  pubsubMessagesIn: number;
  pubsubMessagesOut: number;
}

/**
 * Creates and starts a gateway from a validated configuration.
 *
 * @example
 * ```ts
 * import { createGateway, defaultConfig } from "../mod.ts";
 * const gateway = await createGateway({ ...defaultConfig(), dataDir: "/tmp/gw1", http: "127.0.0.1:0" });
 * console.log(gateway.peerId, gateway.httpAddress);
 * await gateway.stop();
 * ```
 */
export async function createGateway(config: GatewayConfig): Promise<Gateway> {
  const startedAt = performance.now();
  const meshKey = config.meshKeyFile ? readMeshKey(config.meshKeyFile) : null;
  const http = parseHostPort(config.http);
  const store = openStore(config.dataDir);
  const cleanups: Array<[string, () => unknown]> = [["storage", () => store.close()]];
  try {
    return await assemble(config, store, meshKey, http, cleanups, startedAt);
  } catch (err) {
    await runCleanups(cleanups, createLogger({ level: "error" }));
    throw err;
  }
}

async function assemble(
  config: GatewayConfig,
  store: GatewayStore,
  meshKey: Uint8Array | null,
  http: { hostname: string; port: number },
  cleanups: Array<[string, () => unknown]>,
  startedAt: number,
): Promise<Gateway> {
  const { key, created } = await loadOrCreateIdentity(config.dataDir);
  const { peerIdFromPrivateKey } = await import("@libp2p/peer-id");
  const peerId = peerIdFromPrivateKey(key).toString();
  const log = createLogger({ level: config.logLevel, peer: peerId });
  log.info(created ? "created new identity" : "loaded identity", { dataDir: config.dataDir });

  const persistedWallMs = Number(store.getMeta(HLC_META_KEY) ?? "0");
  const clock = new HybridLogicalClock({
    node: peerId,
    persistedWallMs,
    persist: (wallMs) => store.setMeta(HLC_META_KEY, String(wallMs)),
  });

  const metrics = new GatewayMetrics();
  const identity = { name: config.name, factory: config.factory, region: config.region };
  const libp2p = await createMeshNode({
    privateKey: key,
    listen: config.listen,
    userAgent: formatAgent(identity),
    factory: config.factory,
    mdns: config.mdns,
    meshKey,
    registry: metrics.registry,
  });
  cleanups.unshift(["libp2p", () => libp2p.stop()]);
  try {
    await libp2p.start();
  } catch (err) {
    throw new Error(`cannot start libp2p on ${config.listen.join(", ")} (--listen): ${(err as Error).message}`);
  }
  const mesh = new Mesh({ self: identity, peers: config.peers }, { libp2p, logger: log.child("mesh") });
  mesh.start();
  cleanups.unshift(["mesh", () => mesh.stop()]);

  const stats: GatewayStats = { telemetrySamples: 0, pubsubMessagesIn: 0, pubsubMessagesOut: 0 };
  libp2p.services.pubsub.addEventListener("message", () => stats.pubsubMessagesIn++);

  // Assets: simulated welding arms behind the adapter interface.
  const assets = new Map<string, AssetAdapter>();
  const arms: SimulatedArm[] = [];
  for (let i = 0; i < config.assets; i++) {
    const arm = new SimulatedArm({ id: `${config.name}.arm-${i}`, cell: `${config.name}.cell`, faultRatePerS: config.faultRatePerS });
    arms.push(arm);
    assets.set(arm.id, arm);
  }
  const onTelemetry = (_sample: ArmTelemetry) => {
    stats.telemetrySamples++;
  };
  for (const arm of arms) arm.onTelemetry = onTelemetry;
  const telemetryTimer = setInterval(() => {
    const now = Date.now();
    for (const arm of arms) arm.tick(now);
  }, 1000 / config.telemetryHz);
  cleanups.unshift(["telemetry", () => clearInterval(telemetryTimer)]);

  metrics.addStats("gateway", () => ({
    ...stats,
    peers: mesh.peers().length,
    assets: assets.size,
    hlcRejectedRemote: clock.rejectedRemote,
    uptimeSeconds: (performance.now() - startedAt) / 1000,
  }));
  metrics.addStats("mesh", () => ({ ...mesh.stats }));

  const router = new Router();
  const uptimeS = () => Math.round((performance.now() - startedAt) / 100) / 10;
  router.get("/", () => ({ service: "twinmesh", routes: router.paths() }));
  router.get("/health", () => ({ peerId, ...identity, uptimeS: uptimeS() }));
  router.get("/peers", () => mesh.peers());
  router.get("/metrics", async () =>
    new Response(await metrics.text(), { headers: { "content-type": metrics.contentType } }));
  router.get("/status", () => ({
    peerId,
    ...identity,
    uptimeS: uptimeS(),
    peers: mesh.peers().length,
    assets: assets.size,
    stats: { ...stats },
  }));

  const server: HttpServerHandle = serveHttp(http, router, log.child("http"));
  cleanups.unshift(["http", () => server.shutdown()]);
  log.info("gateway started", {
    ...identity,
    http: server.address,
    listen: libp2p.getMultiaddrs().map(String),
    assets: assets.size,
    mdns: config.mdns,
    configuredPeers: config.peers.length,
    meshKey: meshKey !== null,
    startMs: Math.round(performance.now() - startedAt),
  });

  let stopping: Promise<void> | undefined;
  return {
    config,
    peerId,
    httpAddress: server.address,
    libp2p,
    mesh,
    assets,
    clock,
    log,
    stop() {
      stopping ??= (async () => {
        log.info("gateway stopping");
        await runCleanups(cleanups, log);
        log.info("gateway stopped");
      })();
      return stopping;
    },
  };
}

/** Runs cleanups in order; each gets a share of the budget so one hang cannot block the rest. */
async function runCleanups(cleanups: Array<[string, () => unknown]>, log: Logger): Promise<void> {
  const deadline = performance.now() + SHUTDOWN_BUDGET_MS;
  for (const [name, cleanup] of cleanups.splice(0)) {
    const remainingMs = Math.max(50, deadline - performance.now());
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const outcome = await Promise.race([
        Promise.resolve(cleanup()).then(() => "done" as const),
        new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), remainingMs))),
      ]);
      if (outcome === "timeout") log.error("shutdown step timed out", { step: name, budgetMs: Math.round(remainingMs) });
    } catch (err) {
      log.error("shutdown step failed", { step: name, error: err });
    } finally {
      clearTimeout(timer);
    }
  }
}
