/**
 * The gateway: wires storage, identity, clock, libp2p, membership, assets,
 * services and the HTTP API together, and takes them down in order.
 */
import "./deno_compat.ts";
import { peerIdFromPrivateKey, peerIdFromString } from "@libp2p/peer-id";
import { HybridLogicalClock, SharedClockState } from "../protocols/hlc.ts";
import { join } from "node:path";
import { privateKeyToProtobuf } from "@libp2p/crypto/keys";
import type { GatewayConfig } from "./config.ts";
import { parseHostPort } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { type GatewayStore, openStore } from "./storage.ts";
import { loadOrCreateIdentity } from "./identity.ts";
import { withImportedSigningKey } from "./ed25519_keys.ts";
import { readMeshKey } from "./mesh_key.ts";
import { createMeshNode, MdnsSightings, type MeshNode } from "./libp2p.ts";
import { formatAgent, Mesh } from "./mesh.ts";
import { GatewayMetrics } from "./metrics.ts";
import { type HttpServerHandle, Router, serveHttp } from "./http.ts";
import { registerRoutes } from "./routes.ts";
import { ESTOP_TOPIC, factoryTopic, GossipBus } from "./gossip.ts";
import { SimulatedArm } from "./assets/simulated_arm.ts";
import { type ArmTelemetry, type AssetAdapter, AssetCommandRefused } from "./assets/adapter.ts";
import {
  ESTOP_DATABASE_FILE,
  estopAddresses,
  type EstopControl,
  estopListen,
  startEstopThread,
} from "./estop_thread.ts";
import { moveEstopTables } from "./estop_storage.ts";
import { SafetyLine } from "./safety_line.ts";
import { createTwinService, type TwinService } from "./twin_service.ts";
import { Detection } from "./detection.ts";
import { MeasuredAccumulator } from "./measured.ts";
import type { MeasuredUpdate } from "../protocols/twin_model.ts";
import { LoopLagMonitor } from "./loop_lag.ts";
import { newTraceId, round, Tracer } from "./trace.ts";

/** A whole shutdown must fit in this (the operator's expectation: ~2 s). */
export const SHUTDOWN_BUDGET_MS = 1_800;
const HLC_META_KEY = "hlc.persistedWallMs";
/** Exit status when the e-stop thread dies: the gateway cannot stop its assets any more. */
export const ESTOP_THREAD_FAILED_EXIT = 70;

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
  /** The e-stop service on its own thread (see node/estop_thread.ts). */
  readonly estop: EstopControl;
  readonly detection: Detection;
  readonly twins: TwinService;
  /** Stops everything and closes storage; safe to call twice. */
  stop(): Promise<void>;
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
  // The twin service checkpoints the WAL after its ticks (WAL_CHECKPOINT_INTERVAL_MS).
  const store = openStore(config.dataDir, { walCheckpointedByCaller: true });
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
  const { key: storedKey, created } = await loadOrCreateIdentity(config.dataDir);
  // Imported once: every gossip message and e-stop frame is signed with it.
  const key = withImportedSigningKey(storedKey);
  const peerId = peerIdFromPrivateKey(key).toString();
  const log = createLogger({ level: config.logLevel, peer: peerId });
  log.info(created ? "created new identity" : "loaded identity", { dataDir: config.dataDir });

  // One clock for both threads: the e-stop thread stamps through the same state.
  const clockState = new SharedClockState();
  const clock = new HybridLogicalClock({
    node: peerId,
    shared: clockState,
    persistedWallMs: Number(store.getMeta(HLC_META_KEY) ?? "0"),
    persist: (wallMs) => store.setMeta(HLC_META_KEY, String(wallMs)),
  });

  const metrics = new GatewayMetrics();
  const tracer = new Tracer();

  // Assets: simulated welding arms behind the adapter interface. Their stop
  // state lives on the safety line, which the e-stop thread sets directly.
  const assetIds = Array.from({ length: config.assets }, (_, i) => `${config.name}.arm-${i}`);
  const safety = new SafetyLine(assetIds);
  const assets = new Map<string, AssetAdapter>();
  const arms: SimulatedArm[] = [];
  for (const id of assetIds) {
    const arm = new SimulatedArm({
      id,
      cell: `${config.name}.cell`,
      faultRatePerS: config.faultRatePerS,
      safety: safety.slot(id),
    });
    arms.push(arm);
    assets.set(arm.id, arm);
  }

  // Emergency stop: its own thread and libp2p node (dedicated streams; gossip
  // only as the last-resort path, through the main node).
  const estopPath = join(config.dataDir, ESTOP_DATABASE_FILE);
  const movedRows = moveEstopTables(store.db, estopPath);
  if (movedRows > 0) log.info("moved e-stop records to their own file", { rows: movedRows });
  let publishEstopGossip: (frame: Uint8Array) => void = () => {};
  const { control: estop, port: estopPort, listen: estopListening } = await startEstopThread(
    {
      privateKey: privateKeyToProtobuf(key),
      meshKey,
      listen: estopListen(config.listen, config.estopPort),
      dataDir: config.dataDir,
      clock: clockState.buffer,
      safety: { assetIds, buffer: safety.buffer },
      assets: [...assets.values()].map((a) => ({ id: a.id, cell: a.cell })),
      self: { peerId, name: config.name, factory: config.factory },
      service: {
        operators: config.operators,
        supervisors: config.supervisors,
        watchdogMs: config.watchdogMs,
        safeState: config.safeState,
      },
      logLevel: config.logLevel,
      realtime: config.estopRealtime,
    },
    safety,
    {
      stopAssets: (ids, reason) => {
        for (const id of ids) assets.get(id)?.stop(reason);
      },
      holdAssets: (ids, reason) => {
        for (const id of ids) assets.get(id)?.hold(reason);
      },
      publishGossip: (frame) => publishEstopGossip(frame),
    },
  );
  cleanups.unshift(["estop", () => estop.close()]);
  estop.failed.catch((err) => {
    // Without its e-stop path a gateway must not drive assets: stop them all and exit.
    for (const asset of assets.values()) asset.stop("e-stop thread failed");
    log.error("e-stop thread failed; assets stopped, gateway exiting", { error: err });
    Deno.exit(ESTOP_THREAD_FAILED_EXIT);
  });

  const identity = { name: config.name, factory: config.factory, region: config.region };
  const sightings = new MdnsSightings();
  const libp2p = await createMeshNode({
    sightings,
    privateKey: key,
    listen: config.listen,
    userAgent: formatAgent({ ...identity, estopPort }),
    factory: config.factory,
    mdns: config.mdns,
    meshKey,
    registry: metrics.registry,
  });
  cleanups.unshift(["libp2p", () => libp2p.stop()]);
  try {
    await libp2p.start();
  } catch (err) {
    // libp2p's message embeds a stack trace; the cause line is what an operator needs.
    const cause = /EADDRINUSE|EADDRNOTAVAIL|EACCES/.exec((err as Error).message)?.[0] ??
      (err as Error).message.split("\n")[0];
    throw new Error(`cannot start libp2p on ${config.listen.join(", ")} (--listen): ${cause}`);
  }
  const mesh = new Mesh({ self: identity, peers: config.peers }, {
    libp2p,
    sightings,
    logger: log.child("mesh"),
  });
  mesh.start();
  cleanups.unshift(["mesh", () => mesh.stop()]);

  const stats = { telemetrySamples: 0 };

  const gossip = new GossipBus(libp2p, log.child("gossip"));

  // Digital twins: Automerge documents, gossip per factory, sync on connect.
  const twins = createTwinService({
    replicate: [config.factory, ...config.replicate.filter((f) => f !== config.factory)],
  }, {
    libp2p,
    db: store.db,
    clock,
    logger: log.child("twins"),
    factory: config.factory,
    gatewayName: config.name,
    ownedAssets: [...assets.values()].map((a) => ({ id: a.id, kind: a.kind })),
    foundOnLan: (peer) => mesh.viaOf(peer) === "mdns",
  });
  await twins.start();
  cleanups.unshift(["twins", () => twins.stop()]);

  // The e-stop thread's node learns the mesh from the main node: who is a
  // gateway (identify) and where its e-stop node listens (same host, its port).
  mesh.events.onGateway = (peer, gatewayIdentity) => {
    estop.setRoster(mesh.knownGateways());
    if (gatewayIdentity.estopPort === undefined) return;
    const seen = libp2p.getConnections(peerIdFromString(peer)).map((c) => c.remoteAddr.toString());
    void libp2p.peerStore.get(peerIdFromString(peer)).then(
      (known) => known.addresses.map((a) => a.multiaddr.toString()),
      () => [],
    ).then((listed) => {
      const addresses = estopAddresses([...seen, ...listed], gatewayIdentity.estopPort!);
      if (addresses.length > 0) estop.setAddresses(peer, addresses);
    });
  };
  mesh.events.onRosterChanged = () => estop.setRoster(mesh.knownGateways());
  publishEstopGossip = (frame) => gossip.publish(ESTOP_TOPIC, frame);
  estop.onEvent((event) => {
    if (event.type === "released") { for (const id of event.assets) assets.get(id)?.release(); }
  });
  gossip.subscribe(ESTOP_TOPIC, (data, from) => estop.receiveGossip(data, from));

  // Commands written anywhere in the mesh reach the owner here; the adapter
  // applies them, and a latched stop wins over any of them.
  twins.onCommand((assetId, command) => {
    const asset = assets.get(assetId);
    if (!asset) return;
    try {
      if (Object.keys(command.setpoints).length > 0) {
        asset.applyCommand({ setpoints: { ...command.setpoints } });
      }
      if (command.modesAdded.includes("hold")) asset.applyCommand({ mode: "hold" });
      if (command.modesRemoved.includes("hold") && !estop.isLatched(assetId) && !asset.stopped) {
        asset.release();
      }
    } catch (err) {
      const refused = err instanceof AssetCommandRefused;
      log[refused ? "warn" : "error"]("command not applied", {
        asset: assetId,
        hlc: command.hlc,
        error: err,
      });
    }
  });
  // The twin shows the latch: the owner adds/removes the "estop" mode and
  // records the event (origin, HLC, reason, latency) in `estop.last`.
  // Every twin change is applied by every replica, so a stop of an asset the
  // twin already shows stopped (a storm of repeats) does not write at once:
  // its record rides along with the next measured-state write. GET /estop and
  // the e-stop log hold every stop immediately either way.
  const pendingStopRecords = new Map<string, string>();
  const markTwin = (
    assetId: string,
    change: { add?: string[]; remove?: string[] },
    record: object,
  ) => {
    pendingStopRecords.delete(assetId);
    try {
      twins.command(assetId, { modes: change });
      twins.writeMeasured(assetId, { estop: JSON.stringify(record) });
    } catch (err) {
      log.warn("twin e-stop record not written", { asset: assetId, error: err });
    }
  };
  const twinShowsStop = (assetId: string): boolean => {
    try {
      const modes = twins.get(assetId).fields.modes?.value;
      return Array.isArray(modes) && modes.includes("estop");
    } catch {
      return false;
    }
  };
  estop.onEvent((event) => {
    if (event.type === "latched") {
      const r = event.record;
      const latencyMs = r.actedAtMs === undefined
        ? undefined
        : Math.round((r.actedAtMs - r.atMs) * 1000) / 1000;
      const record = {
        id: r.id,
        kind: "stop",
        origin: r.origin,
        hlc: r.hlc,
        reason: r.reason,
        late: r.late,
        latencyMs,
      };
      for (const id of r.assets ?? []) {
        if (twinShowsStop(id)) pendingStopRecords.set(id, JSON.stringify(record));
        else markTwin(id, { add: ["estop"] }, record);
      }
    }
    if (event.type === "released") {
      const record = { id: event.resetId, kind: "reset", cleared: event.cleared };
      for (const id of event.assets) markTwin(id, { remove: ["estop"] }, record);
    }
    if (event.type === "watchdog-tripped") {
      const record = {
        id: event.stopId ?? null,
        kind: "watchdog",
        safeState: event.safeState,
        silentForMs: event.silentForMs,
      };
      for (const id of event.assets) {
        markTwin(id, { add: [event.safeState === "hold" ? "hold" : "estop"] }, record);
      }
    }
  });

  // Traces: an e-stop's id is its trace id on every gateway it touches.
  estop.onEvent((event) => {
    switch (event.type) {
      case "issued":
        tracer.record({
          traceId: event.record.id,
          name: `estop.issue.${event.record.kind}`,
          startMs: event.record.atMs,
          durationMs: 0,
          attributes: { target: JSON.stringify(event.record.target), reason: event.record.reason },
        });
        break;
      case "latched": {
        const r = event.record;
        tracer.record({
          traceId: r.id,
          name: "estop.act",
          startMs: r.atMs,
          durationMs: r.actedAtMs === undefined ? 0 : round(r.actedAtMs - r.atMs),
          attributes: { origin: r.origin, assets: (r.assets ?? []).join(","), late: r.late },
        });
        break;
      }
      case "ack":
        tracer.record({
          traceId: event.id,
          name: "estop.ack",
          startMs: Date.now(),
          durationMs: event.ack.latencyMs,
          attributes: { from: event.ack.peer, status: event.ack.status, late: event.late },
        });
        break;
      case "report":
        tracer.record({
          traceId: event.id,
          name: "estop.report",
          startMs: Date.now(),
          durationMs: 0,
          attributes: { acked: event.result.acked.length, missing: event.result.missing.join(",") },
        });
        break;
      case "refused":
      case "released":
        tracer.record({
          traceId: event.type === "refused" ? event.record.id : event.resetId,
          name: `estop.${event.type}`,
          startMs: Date.now(),
          durationMs: 0,
          attributes: event.type === "refused"
            ? { origin: event.record.origin, status: event.record.status ?? "" }
            : { assets: event.assets.join(","), cleared: event.cleared.join(",") },
        });
        break;
    }
  });

  // Edge anomaly detection.
  const verify = (signer: string, data: Uint8Array, signature: Uint8Array) =>
    Promise.resolve(peerIdFromString(signer).publicKey?.verify(data, signature) ?? false);
  const detection = new Detection([...assets.keys()], config.stopOnAnomaly, {
    logger: log.child("detect"),
    stamp: () => clock.now(),
    selfPeerId: peerId,
    sign: async (bytes) => await key.sign(bytes),
    verify,
    publish: (name, bytes) => gossip.publish(factoryTopic(config.factory, name), bytes),
    onAnomaly: (anomaly) =>
      tracer.record({
        traceId: newTraceId(),
        name: "detect.anomaly",
        startMs: anomaly.atMs,
        durationMs: round(Date.now() - anomaly.atMs),
        attributes: {
          asset: anomaly.assetId,
          channel: anomaly.channel,
          kind: anomaly.kind,
          score: anomaly.score,
        },
      }),
    raiseStop: (anomaly) => {
      estop.issueStop({
        target: { kind: "asset", id: anomaly.assetId },
        reason: `anomaly ${anomaly.kind} on ${anomaly.channel}`,
      })
        .catch((err) =>
          log.error("stop on anomaly failed", { asset: anomaly.assetId, error: err })
        );
    },
  });
  const anomaliesTopic = factoryTopic(config.factory, "anomalies");
  gossip.subscribe(anomaliesTopic, (data, from) => detection.receiveAnomaly(data, from));
  gossip.subscribe(
    factoryTopic(config.factory, "models"),
    (data, from) => void detection.receiveModel(data, from),
  );
  detection.start();
  cleanups.unshift(["detection", () => detection.stop()]);

  // Telemetry: every arm ticks at the configured rate; samples feed detection
  // (bounded queues) and the measured-state writer (every `twinSummaryMs`).
  const measured = new MeasuredAccumulator();
  const onTelemetry = (sample: ArmTelemetry) => {
    stats.telemetrySamples++;
    detection.push(sample);
    measured.add(sample);
  };
  for (const arm of arms) arm.onTelemetry = onTelemetry;
  const telemetryTimer = setInterval(() => {
    const now = Date.now();
    for (const arm of arms) arm.tick(now);
  }, 1000 / config.telemetryHz);
  cleanups.unshift(["telemetry", () => clearInterval(telemetryTimer)]);
  const writeMeasuredState = (updates: Map<string, MeasuredUpdate>) => {
    // Stopped arms send no telemetry: their pending stop records go alone.
    for (const [assetId, estop] of pendingStopRecords) {
      updates.set(assetId, { ...updates.get(assetId), estop });
    }
    pendingStopRecords.clear();
    for (const [assetId, update] of updates) {
      try {
        twins.writeMeasured(assetId, update);
      } catch (err) {
        log.warn("twin measured write refused", { asset: assetId, error: err });
      }
    }
  };
  // One arm per slot, in turn: each arm is still written every twinSummaryMs,
  // but a gateway's summaries spread over the interval. Written together, 20
  // arms' summaries made one gossip message that took every peer 20-40 ms to
  // apply, every 5 s (bench twins: a latency spike at each). The first round
  // starts one interval after start, as before: writing from the first
  // quarter second made gossip and gap syncs compete with discovery
  // (bench foundation, 10 gateways: 3.6-4.0 s to fully linked, 2.1 s without).
  let nextArm = 0;
  let twinTimer: ReturnType<typeof setInterval> | undefined;
  const firstRound = setTimeout(() => {
    twinTimer = setInterval(() => {
      const updates = new Map<string, MeasuredUpdate>();
      const assetId = assetIds[nextArm++ % assetIds.length];
      const update = assetId === undefined ? undefined : measured.drainAsset(assetId);
      if (assetId !== undefined && update) updates.set(assetId, update);
      writeMeasuredState(updates);
    }, config.twinSummaryMs / Math.max(1, assetIds.length));
  }, config.twinSummaryMs);
  cleanups.unshift(["twin-writer", () => {
    clearTimeout(firstRound);
    clearInterval(twinTimer);
    writeMeasuredState(new Map()); // pending stop records, before the twins flush and stop
  }]);

  const loopLag = new LoopLagMonitor();
  loopLag.start();
  cleanups.unshift(["loop-lag", () => loopLag.stop()]);
  metrics.addStats("gateway", () => ({
    ...stats,
    ...loopLag.stats,
    ...gossip.stats,
    peers: mesh.peers().length,
    assets: assets.size,
    hlcRejectedRemote: clock.rejectedRemote,
    uptimeSeconds: (performance.now() - startedAt) / 1000,
  }));
  metrics.addStats("mesh", () => ({ ...mesh.stats }));
  metrics.addStats("estop", () => estop.stats());
  metrics.addStats("detect", () => detection.counters());
  metrics.addStats("twins", () => ({ ...twins.stats() }));

  const router = new Router();
  registerRoutes(router, {
    peerId,
    identity,
    startedAt,
    mesh,
    metrics,
    assets,
    arms,
    twins,
    estop,
    detection,
    clock,
    tracer,
    stats: () => ({ ...stats, ...gossip.stats, ...loopLag.stats }),
  });

  const server: HttpServerHandle = serveHttp(http, router, log.child("http"), tracer);
  cleanups.unshift(["http", () => {
    twins.watchers.close(); // shutdown waits for open requests: answer the waiting reads now
    return server.shutdown();
  }]);
  log.info("gateway started", {
    ...identity,
    http: server.address,
    listen: libp2p.getMultiaddrs().map(String),
    estopListen: estopListening,
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
    estop,
    detection,
    twins,
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
        new Promise<"timeout">((
          resolve,
        ) => (timer = setTimeout(() => resolve("timeout"), remainingMs))),
      ]);
      if (outcome === "timeout") {
        log.error("shutdown step timed out", { step: name, budgetMs: Math.round(remainingMs) });
      }
    } catch (err) {
      log.error("shutdown step failed", { step: name, error: err });
    } finally {
      clearTimeout(timer);
    }
  }
}
