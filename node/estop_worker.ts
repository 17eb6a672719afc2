/**
 * Entry point of the e-stop thread (a Deno worker; see estop_thread.ts): a
 * libp2p node with just TCP, Noise, Yamux (and the mesh key), the e-stop
 * service, its own SQLite file, the gateway's shared clock and the safety line.
 *
 * The service acts on the safety line itself: the moment a stop is accepted
 * the asset's slot is set, then the main thread is told (for the adapters'
 * own stop, the twin and traces).
 */
import os from "node:os";
import { createLibp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { preSharedKey } from "@libp2p/pnet";
import { privateKeyFromProtobuf } from "@libp2p/crypto/keys";
import { withImportedSigningKey } from "./ed25519_keys.ts";
import { peerIdFromPrivateKey, peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { HybridLogicalClock, SharedClockState } from "../protocols/hlc.ts";
import { createEstopService, type EstopIssued, type EstopService } from "./estop_service.ts";
import {
  ESTOP_DATABASE_FILE,
  ESTOP_STATS_INTERVAL_MS,
  type EstopWorkerInit,
  type FromWorker,
  type ToWorker,
} from "./estop_thread.ts";
import { AssetDirectory } from "./directory.ts";
import type { GatewayIdentity } from "./mesh.ts";
import { createLogger } from "./log.ts";
import { SafetyLine } from "./safety_line.ts";
import { LoopLagMonitor } from "./loop_lag.ts";
import { openStore } from "./storage.ts";
import { walSync } from "./estop_storage.ts";
import { join } from "node:path";
import { yamuxMuxer } from "./yamux_window.ts";

/** Meta key of the clock's high-water mark in `estop.db` (the main thread keeps its own). */
export const ESTOP_HLC_META_KEY = "hlc.persistedWallMs";

const scope = self as unknown as {
  postMessage(message: FromWorker): void;
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  close(): void;
};
const send = (message: FromWorker) => scope.postMessage(message);

/** The mesh's roster as last sent by the main thread. */
class MirroredRoster {
  #gateways = new Map<string, GatewayIdentity>();
  set(gateways: [string, GatewayIdentity][]): void {
    this.#gateways = new Map(gateways);
  }
  knownGateways(): ReadonlyMap<string, GatewayIdentity> {
    return this.#gateways;
  }
}

async function start(init: EstopWorkerInit) {
  const log = createLogger({ level: init.logLevel, peer: init.self.peerId, component: "gateway" })
    .child("estop");
  const privateKey = withImportedSigningKey(privateKeyFromProtobuf(init.privateKey));
  const self = peerIdFromPrivateKey(privateKey).toString();
  if (self !== init.self.peerId) throw new Error("e-stop thread key does not match the gateway");
  const store = openStore(init.dataDir, { file: ESTOP_DATABASE_FILE, synchronous: "FULL" });
  // A received stop's latch is committed at NORMAL and acked after an
  // off-thread sync of the WAL, so a stop arriving meanwhile is not held up.
  // A failed sync ends the thread: the gateway then stops its assets and exits.
  const walSynced = walSync(join(init.dataDir, ESTOP_DATABASE_FILE));
  const syncDb = () =>
    walSynced().catch((error: Error) => {
      setTimeout(() => {
        throw error;
      });
      throw error;
    });
  const clock = new HybridLogicalClock({
    node: self,
    shared: new SharedClockState(init.clock),
    persistedWallMs: Number(store.getMeta(ESTOP_HLC_META_KEY) ?? "0"),
    persist: (wallMs) => store.setMeta(ESTOP_HLC_META_KEY, String(wallMs)),
  });
  const safety = new SafetyLine(init.safety.assetIds, init.safety.buffer);
  const directory = new AssetDirectory(
    init.self,
    new Map(init.assets.map((a) => [a.id, a])),
    roster,
  );
  const addressed = new Set<string>();

  const node = await createLibp2p({
    privateKey,
    addresses: { listen: init.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamuxMuxer()],
    ...(init.meshKey ? { connectionProtector: preSharedKey({ psk: init.meshKey }) } : {}),
    // The main node's limits (node/libp2p.ts; not imported, which would load
    // gossipsub, mDNS and metrics into this thread for two numbers).
    connectionManager: { maxConnections: 300, inboundConnectionThreshold: 100 },
  });

  const service: EstopService = createEstopService(init.service, {
    libp2p: node,
    db: store.db,
    syncDb,
    clock,
    privateKey,
    logger: log,
    ownersOf: (id) => directory.ownersOf(id),
    gatewaysIn: (target) => directory.gatewaysIn(target),
    localAssets: (target) => directory.localAssets(target),
    linkPeers: () => [...roster.knownGateways().keys()],
    dialable: (peer) => addressed.has(peer),
    stopAssets: (ids, reason) => {
      for (const id of ids) if (safety.has(id)) safety.stop(id);
      send({ t: "stopAssets", ids, reason });
    },
    holdAssets: (ids, reason) => {
      for (const id of ids) if (safety.has(id)) safety.hold(id);
      send({ t: "holdAssets", ids, reason });
    },
    publishGossip: (frame) => send({ t: "publishGossip", frame }),
  });
  service.onEvent((event) => {
    // The latch owns stops: only a reset that cleared an asset's last stop releases its line.
    if (event.type === "released") {
      for (const id of event.assets) if (safety.has(id)) safety.release(id, "stop");
    }
    send({ t: "event", event });
  });

  await node.start();
  await service.start();
  if (init.realtime) raisePriority(log);
  const lag = new LoopLagMonitor();
  lag.start();
  const statsTimer = setInterval(() => {
    send({
      t: "stats",
      stats: { ...service.stats(), thread_loop_lag_max_ms: lag.stats.eventLoopLagMaxMs },
      livePeers: service.livePeers(),
    });
  }, ESTOP_STATS_INTERVAL_MS);

  const listen = node.getMultiaddrs().map((a) => a.toString().replace(/\/p2p\/[^/]+$/, ""));
  const port = Number(/\/tcp\/(\d+)/.exec(listen[0] ?? "")?.[1] ?? "0");
  log.info("e-stop thread listening", { listen });
  return {
    service,
    port,
    listen,
    async setAddresses(peer: string, addresses: string[]) {
      if (peer === self) return;
      const peerId = peerIdFromString(peer);
      await node.peerStore.patch(peerId, { multiaddrs: addresses.map((a) => multiaddr(a)) });
      const fresh = !addressed.has(peer);
      addressed.add(peer);
      // Link at once: the service would only dial on its next tick. The connection
      // event makes it open its stream.
      if (fresh && node.getConnections(peerId).length === 0) {
        node.dial(peerId, { signal: AbortSignal.timeout(2_000) }).catch((err: Error) =>
          log.debug("e-stop node dial failed", { peer, error: err.message })
        );
      }
    },
    async shutdown() {
      clearInterval(statsTimer);
      lag.stop();
      await service.stop();
      await node.stop();
      store.close();
    },
  };
}

/** Nice value of the e-stop thread (-20 is the highest CFS weight, ~87 times a default thread's). */
export const ESTOP_THREAD_NICE = -20;

/**
 * Gives this thread the highest weight in Linux's normal scheduler, so a stop
 * frame's wake-up preempts the gateway's other work (twin merges, telemetry,
 * HTTP) instead of waiting for a time slice. Needs CAP_SYS_NICE (root, or
 * systemd's `AmbientCapabilities=CAP_SYS_NICE`); without it the thread keeps
 * nice 0 and says so.
 *
 * Not the real-time class (SCHED_FIFO), which this thread used before: V8's
 * GC makes the thread wait for helper threads of normal priority, and a
 * real-time thread that waits by spinning keeps them off its core. With three
 * gateways on two cores the isolate's first memory-reducing GC, ~40 s after
 * start, spun two e-stop threads for ~1 s each until the kernel's real-time
 * throttling broke the livelock; meanwhile the thread handled no stops and
 * everything else on the host stood still.
 */
function raisePriority(log: { info: LogFn; warn: LogFn }): void {
  if (Deno.build.os !== "linux") return;
  try {
    // On Linux a thread id is a valid `who` for setpriority(2): only this thread changes.
    const tid = Number(Deno.readLinkSync("/proc/thread-self").split("/").at(-1));
    os.setPriority(tid, ESTOP_THREAD_NICE);
    log.info("e-stop thread runs at raised priority", { nice: ESTOP_THREAD_NICE });
  } catch (err) {
    log.warn("e-stop thread keeps normal priority (no CAP_SYS_NICE)", {
      error: (err as Error).message,
    });
  }
}
type LogFn = (message: string, fields?: Record<string, unknown>) => void;

let running: Awaited<ReturnType<typeof start>> | undefined;
/** Messages that arrived while starting, handled in order once running. */
const queued: ToWorker[] = [];

async function handle(message: ToWorker): Promise<void> {
  const thread = running!;
  switch (message.t) {
    case "roster":
      // Handled by the directory on its next lookup; `linkPeers` reads it each tick.
      roster.set(message.gateways);
      break;
    case "addresses":
      await thread.setAddresses(message.peer, message.addresses);
      break;
    case "gossip":
      thread.service.receiveGossip(message.frame, message.fromPeer);
      break;
    case "call": {
      try {
        let value: unknown;
        if (message.method === "issueStop") {
          value = forwardResult(await thread.service.issueStop(message.params));
        } else if (message.method === "issueReset") {
          value = forwardResult(await thread.service.issueReset(message.params));
        } else if (message.method === "status") {
          value = thread.service.status();
        } else if (message.method === "tick") {
          thread.service.tick();
        } else {
          await thread.shutdown();
        }
        send({ t: "reply", id: message.id, ok: true, value });
        if (message.method === "shutdown") scope.close();
      } catch (err) {
        const { name, message: text } = err as Error;
        send({ t: "reply", id: message.id, ok: false, name, message: text });
      }
      break;
    }
    case "init":
      break;
  }
}

const roster = new MirroredRoster();
scope.onmessage = (event) => {
  const message = event.data;
  if (message.t === "init") {
    start(message.init).then((thread) => {
      running = thread;
      send({ t: "ready", listen: thread.listen, port: thread.port });
      for (const queuedMessage of queued.splice(0)) void handle(queuedMessage).catch(reportFailure);
    }, reportFailure);
    return;
  }
  if (!running) queued.push(message);
  else void handle(message).catch(reportFailure);
};

/** Sends the command's result when its acks are in (or its deadline passed). */
function forwardResult(issued: EstopIssued): { id: string; hlc: string } {
  issued.result.then((result) => send({ t: "result", result }), reportFailure);
  return { id: issued.id, hlc: issued.hlc };
}

function reportFailure(err: unknown): void {
  send({ t: "failed", message: (err as Error)?.message ?? String(err) });
}
