/**
 * The gateway: wires storage, identity, clock, libp2p, membership, assets,
 * services and the HTTP API together, and takes them down in order.
 */
import "./deno_compat.ts";
import type { GatewayConfig } from "./config.ts";
import { parseHostPort } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { type GatewayStore, openStore } from "./storage.ts";
import { loadOrCreateIdentity } from "./identity.ts";
import { readMeshKey } from "./mesh_key.ts";
import { createMeshNode, type MeshNode } from "./libp2p.ts";
import { formatAgent, Mesh } from "./mesh.ts";
import { GatewayMetrics } from "./metrics.ts";
import { type HttpServerHandle, Router, serveHttp } from "./http.ts";
import { SimulatedArm } from "./assets/simulated_arm.ts";
import type { ArmTelemetry, AssetAdapter } from "./assets/adapter.ts";
import { formatTimestamp, HybridLogicalClock } from "../protocols/hlc.ts";
import type { EstopTarget } from "../protocols/estop_codec.ts";
import { createEstopService, type EstopService } from "./estop_service.ts";
import { AssetDirectory } from "./directory.ts";
import { Detection } from "./detection.ts";
import { HttpError } from "./http.ts";
import { peerIdFromString } from "@libp2p/peer-id";
import { createTwinService, type TwinService, UnknownTwinError } from "./twin_service.ts";
import { TwinValidationError } from "../protocols/twin_model.ts";
import { AssetCommandRefused } from "./assets/adapter.ts";
import { MeasuredAccumulator } from "./measured.ts";

/** A whole shutdown must fit in this (the operator's expectation: ~2 s). */
export const SHUTDOWN_BUDGET_MS = 1_800;
const HLC_META_KEY = "hlc.persistedWallMs";
/**
 * Measured state goes into the twin once per second per arm: joints, counter
 * deltas and a 1 s summary. Automerge keeps every change forever, so raw
 * telemetry never goes there and this rate bounds history growth.
 */
const MEASURED_WRITE_INTERVAL_MS = 1_000;
/** E-stop's last-resort gossip path spans the whole mesh. */
const ESTOP_TOPIC = "twinmesh/estop/1";

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
  readonly estop: EstopService;
  readonly detection: Detection;
  readonly twins: TwinService;
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
    throw new Error(
      `cannot start libp2p on ${config.listen.join(", ")} (--listen): ${(err as Error).message}`,
    );
  }
  const mesh = new Mesh({ self: identity, peers: config.peers }, {
    libp2p,
    logger: log.child("mesh"),
  });
  mesh.start();
  cleanups.unshift(["mesh", () => mesh.stop()]);

  const stats: GatewayStats = { telemetrySamples: 0, pubsubMessagesIn: 0, pubsubMessagesOut: 0 };
  libp2p.services.pubsub.addEventListener("message", () => stats.pubsubMessagesIn++);

  // Assets: simulated welding arms behind the adapter interface.
  const assets = new Map<string, AssetAdapter>();
  const arms: SimulatedArm[] = [];
  for (let i = 0; i < config.assets; i++) {
    const arm = new SimulatedArm({
      id: `${config.name}.arm-${i}`,
      cell: `${config.name}.cell`,
      faultRatePerS: config.faultRatePerS,
    });
    arms.push(arm);
    assets.set(arm.id, arm);
  }
  let detectionSink: ((sample: ArmTelemetry) => void) | undefined;
  const onTelemetry = (sample: ArmTelemetry) => {
    stats.telemetrySamples++;
    detectionSink?.(sample);
    measured.add(sample);
  };
  for (const arm of arms) arm.onTelemetry = onTelemetry;
  const telemetryTimer = setInterval(() => {
    const now = Date.now();
    for (const arm of arms) arm.tick(now);
  }, 1000 / config.telemetryHz);
  cleanups.unshift(["telemetry", () => clearInterval(telemetryTimer)]);

  // Gossip topics of this factory (twin sync subscribes to its own).
  const topic = (name: string) => `twinmesh/${config.factory}/${name}/1`;
  const pubsub = libp2p.services.pubsub;
  const publish = (name: string, bytes: Uint8Array) => {
    stats.pubsubMessagesOut++;
    pubsub.publish(topic(name), bytes).catch((err: Error) =>
      log.debug("publish failed", { topic: name, error: err })
    );
  };
  const publishGlobal = (fullTopic: string, bytes: Uint8Array) => {
    stats.pubsubMessagesOut++;
    pubsub.publish(fullTopic, bytes).catch((err: Error) =>
      log.debug("publish failed", { topic: fullTopic, error: err })
    );
  };
  const gossipHandlers = new Map<string, (data: Uint8Array, from: string) => void>();
  pubsub.addEventListener("message", (event) => {
    const message = event.detail;
    const handler = gossipHandlers.get(message.topic);
    if (handler) {
      handler(message.data, message.type === "signed" ? message.from.toString() : "unknown");
    }
  });
  const subscribe = (name: string, handler: (data: Uint8Array, from: string) => void) => {
    gossipHandlers.set(topic(name), handler);
    pubsub.subscribe(topic(name));
  };

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
  });
  await twins.start();
  cleanups.unshift(["twins", () => twins.stop()]);
  const measured = new MeasuredAccumulator();
  const twinTimer = setInterval(() => {
    for (const [assetId, update] of measured.drain()) {
      try {
        twins.writeMeasured(assetId, update);
      } catch (err) {
        log.warn("twin measured write refused", { asset: assetId, error: err });
      }
    }
  }, MEASURED_WRITE_INTERVAL_MS);
  cleanups.unshift(["twin-writer", () => clearInterval(twinTimer)]);

  // Emergency stop: dedicated streams; gossip only as the last-resort path.
  const directory = new AssetDirectory(
    { peerId, name: config.name, factory: config.factory },
    assets,
    mesh,
  );
  const verify = (signer: string, data: Uint8Array, signature: Uint8Array) =>
    Promise.resolve(peerIdFromString(signer).publicKey?.verify(data, signature) ?? false);
  const estop = createEstopService({
    operators: config.operators,
    supervisors: config.supervisors,
    watchdogMs: config.watchdogMs,
    safeState: config.safeState,
  }, {
    libp2p,
    db: store.db,
    clock,
    privateKey: key,
    logger: log.child("estop"),
    ownerOf: (id) => directory.ownerOf(id),
    gatewaysIn: (target) => directory.gatewaysIn(target),
    localAssets: (target) => directory.localAssets(target),
    linkPeers: () => [...mesh.knownGateways().keys()],
    stopAssets: (ids, reason) => {
      for (const id of ids) assets.get(id)?.stop(reason);
    },
    holdAssets: (ids, reason) => {
      for (const id of ids) assets.get(id)?.hold(reason);
    },
    publishGossip: (frame) => publishGlobal(ESTOP_TOPIC, frame),
  });
  estop.onEvent((event) => {
    if (event.type === "released") { for (const id of event.assets) assets.get(id)?.release(); }
  });
  // Mesh-wide (not per factory): the last-resort path must cross regions too.
  gossipHandlers.set(ESTOP_TOPIC, (data, from) => estop.receiveGossip(data, from));
  pubsub.subscribe(ESTOP_TOPIC);
  await estop.start();
  cleanups.unshift(["estop", () => estop.stop()]);

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
  // The twin shows the latch: the owner adds/removes the "estop" mode.
  const markTwin = (assetId: string, change: { add?: string[]; remove?: string[] }) => {
    try {
      twins.command(assetId, { modes: change });
    } catch (err) {
      log.warn("twin e-stop mode not recorded", { asset: assetId, error: err });
    }
  };
  estop.onEvent((event) => {
    if (event.type === "latched") {
      for (const id of event.record.assets ?? []) markTwin(id, { add: ["estop"] });
    }
    if (event.type === "released") {
      for (const id of event.assets) markTwin(id, { remove: ["estop"] });
    }
    if (event.type === "watchdog-tripped") {
      for (const id of event.assets) {
        markTwin(id, { add: [event.safeState === "hold" ? "hold" : "estop"] });
      }
    }
  });

  // Edge anomaly detection.
  const detection = new Detection([...assets.keys()], config.stopOnAnomaly, {
    logger: log.child("detect"),
    stamp: () => clock.now(),
    selfPeerId: peerId,
    sign: async (bytes) => await key.sign(bytes),
    verify,
    publish,
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
  subscribe("anomalies", (data, from) => detection.receiveAnomaly(data, from));
  subscribe("models", (data, from) => void detection.receiveModel(data, from));
  detectionSink = (sample) => detection.push(sample);
  detection.start();
  cleanups.unshift(["detection", () => detection.stop()]);

  metrics.addStats("gateway", () => ({
    ...stats,
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
  const uptimeS = () => Math.round((performance.now() - startedAt) / 100) / 10;
  router.get("/", () => ({ service: "twinmesh", routes: router.paths() }));
  router.get("/health", () => ({ peerId, ...identity, uptimeS: uptimeS() }));
  router.get("/peers", () => mesh.peers());
  router.get(
    "/metrics",
    async () =>
      new Response(await metrics.text(), { headers: { "content-type": metrics.contentType } }),
  );
  router.get("/status", () => ({
    peerId,
    ...identity,
    uptimeS: uptimeS(),
    peers: mesh.peers().length,
    assets: assets.size,
    twins: twins.list().length,
    latched: estop.status().latched.length,
    anomalies: detection.stats.anomaliesLocal,
    hlc: formatTimestamp(clock.last),
    stats: {
      ...stats,
      estopLivePeers: estop.livePeers().length,
      twinGossipIn: twins.stats().gossip_received ?? 0,
      twinGossipOut: twins.stats().gossip_published ?? 0,
    },
  }));

  router.get(
    "/assets",
    () =>
      [...assets.values()].map((a) => ({
        id: a.id,
        kind: a.kind,
        cell: a.cell,
        stopped: a.stopped,
        latched: estop.isLatched(a.id),
      })),
  );
  // Simulation only: start a fault on a simulated arm (tests, demos, detector checks).
  router.post("/assets/:id/faults", async ({ params, json }) => {
    const arm = arms.find((a) => a.id === params.id);
    if (!arm) throw new HttpError(404, `no simulated asset ${params.id}`, "id");
    const body = await json();
    const kinds = ["current-spike", "temperature-drift", "joint-stuck"] as const;
    const kind = kinds.find((k) => k === body.kind);
    if (!kind) throw new HttpError(400, `kind: expected one of ${kinds.join(", ")}`, "kind");
    const durationS = body.durationS ?? 5;
    if (typeof durationS !== "number" || !(durationS > 0 && durationS <= 600)) {
      throw new HttpError(400, "durationS: expected a number in (0, 600]", "durationS");
    }
    arm.injectFault(kind, durationS);
    return { status: 202, body: { assetId: arm.id, kind, durationS } };
  });
  router.get("/twins", () => twins.list());
  router.get("/twins/:id", ({ params }) => twinCall(() => twins.get(params.id!)));
  router.get(
    "/twins/:id/history",
    ({ params, url }) =>
      twinCall(() => twins.history(params.id!, intParam(url, "limit", 50, 1, 1000))),
  );
  router.post("/twins/:id/commands", async ({ params, json }) => {
    const body = await json();
    const id = params.id!;
    // A stop wins over any concurrent command: no motion mode while latched.
    const modes = body.modes as { add?: unknown } | undefined;
    const wantsMotion = Array.isArray(modes?.add) &&
      modes.add.some((m) => m === "auto" || m === "manual");
    if (wantsMotion && estop.isLatched(id)) {
      throw new HttpError(
        409,
        `${id} has a latched e-stop; reset it before commanding motion`,
        "modes",
      );
    }
    const { hlc } = twinCall(() => twins.command(id, body));
    return { status: 202, body: { id, hlc } };
  });
  router.get("/estop", () => estop.status());
  router.post("/estop", async ({ json }) => {
    const body = await json();
    const issued = await estop.issueStop({
      target: parseTarget(body.target),
      reason: stringField(body, "reason", "operator stop"),
    });
    return { status: 202, body: { id: issued.id, hlc: issued.hlc } };
  });
  router.post("/estop/reset", async ({ json }) => {
    const body = await json();
    const stopIds = body.stopIds;
    if (
      !Array.isArray(stopIds) || stopIds.length === 0 || stopIds.some((s) => typeof s !== "string")
    ) {
      throw new HttpError(400, "stopIds: expected a non-empty list of stop ids", "stopIds");
    }
    const issued = await estop.issueReset({
      stopIds,
      ...(body.target !== undefined ? { target: parseTarget(body.target) } : {}),
      reason: stringField(body, "reason", "operator reset"),
    });
    return { status: 202, body: { id: issued.id, hlc: issued.hlc } };
  });
  router.get("/anomalies", ({ url }) => {
    const limit = intParam(url, "limit", 100, 1, 1000);
    return detection.recent(limit, url.searchParams.get("asset") ?? undefined);
  });

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

/** Maps twin errors to HTTP: unknown twin → 404, bad field → 400 naming it. */
function twinCall<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    if (err instanceof UnknownTwinError) throw new HttpError(404, err.message, "id");
    if (err instanceof TwinValidationError) throw new HttpError(400, err.message, err.field);
    throw err;
  }
}

/** `{asset: id}`, `{cell: id}`, `{factory?: id}`, `"all"`, or the wire form `{kind, id}`. */
export function parseTarget(raw: unknown): EstopTarget {
  const bad = () =>
    new HttpError(
      400,
      'target: expected {"asset": id}, {"cell": id}, {"factory": id?} or "all"',
      "target",
    );
  if (raw === "all") return { kind: "all" };
  if (typeof raw !== "object" || raw === null) throw bad();
  const t = raw as Record<string, unknown>;
  const id = (value: unknown) => {
    if (typeof value !== "string" || value === "" || value.length > 200) throw bad();
    return value;
  };
  if ("kind" in t) {
    if (t.kind === "all") return { kind: "all" };
    if (t.kind === "factory") {
      return t.id === undefined ? { kind: "factory" } : { kind: "factory", id: id(t.id) };
    }
    if (t.kind === "asset" || t.kind === "cell") return { kind: t.kind, id: id(t.id) };
    throw bad();
  }
  if ("asset" in t) return { kind: "asset", id: id(t.asset) };
  if ("cell" in t) return { kind: "cell", id: id(t.cell) };
  if ("factory" in t) {
    return t.factory === null || t.factory === undefined
      ? { kind: "factory" }
      : { kind: "factory", id: id(t.factory) };
  }
  if ("all" in t) return { kind: "all" };
  throw bad();
}

function stringField(body: Record<string, unknown>, field: string, fallback: string): string {
  const value = body[field];
  if (value === undefined) return fallback;
  if (typeof value !== "string" || value.length > 500) {
    throw new HttpError(400, `${field}: expected a string of at most 500 characters`, field);
  }
  return value;
}

/** Integer query parameter within [min, max]; 400 otherwise. */
export function intParam(
  url: URL,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const text = url.searchParams.get(name);
  if (text === null) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new HttpError(
      400,
      `${name}: expected an integer in [${min}, ${max}], got ${JSON.stringify(text)}`,
      name,
    );
  }
  return value;
}
