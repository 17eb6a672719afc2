/**
 * The e-stop thread, seen from the main thread.
 *
 * The e-stop service runs on its own worker thread with its own libp2p node
 * (same identity key, so the same peer ID; its own TCP port, announced to peers
 * as `estop=<port>` in identify), its own SQLite file (`estop.db`) and a
 * shared clock. A stop frame is then read, latched and acted on (the safety
 * line, see safety_line.ts) by a thread that does nothing else, instead of
 * waiting behind twin merges, gossip and HTTP on the main event loop.
 *
 * The main thread keeps what the rest of the gateway needs: it issues stops
 * and resets (HTTP, detection), mirrors the mesh's roster and addresses into
 * the thread, hears its events (twin marks, traces) and the adapters' stop
 * calls, and shows its stats. Calls are messages with a timeout; the thread's
 * death is fatal to the gateway (reported through `failed`).
 */
import type {
  EstopEvent,
  EstopIssued,
  EstopResult,
  EstopServiceInit,
  EstopStatus,
  EstopTarget,
} from "./estop_service.ts";
import type { GatewayIdentity } from "./mesh.ts";
import type { LocatedAsset } from "./directory.ts";
import type { LogLevel } from "./log.ts";
import type { SafetyLine } from "./safety_line.ts";

/** Database file of the e-stop thread, beside the gateway's `twinmesh.db`. */
export const ESTOP_DATABASE_FILE = "estop.db";
/** A call to the thread that takes longer than this fails (the thread is stuck or gone). */
export const ESTOP_CALL_TIMEOUT_MS = 10_000;
/** Start-up (module load, libp2p listen, latch restore) must finish within this. */
export const ESTOP_START_TIMEOUT_MS = 30_000;
/** How often the thread sends its counters to the main thread. */
export const ESTOP_STATS_INTERVAL_MS = 1_000;

/** Everything the thread is started with (structured-cloned into it). */
export interface EstopWorkerInit {
  /** libp2p protobuf form of the gateway's private key. */
  privateKey: Uint8Array;
  meshKey: Uint8Array | null;
  /** Listen multiaddrs of the thread's node. */
  listen: string[];
  dataDir: string;
  clock: SharedArrayBuffer;
  safety: { assetIds: string[]; buffer: SharedArrayBuffer };
  assets: LocatedAsset[];
  self: { peerId: string; name: string; factory: string };
  service: EstopServiceInit;
  logLevel: LogLevel;
  /** Ask for raised priority, nice -20 (see estop_worker.ts). */
  realtime: boolean;
}

export type ToWorker =
  | { t: "init"; init: EstopWorkerInit }
  | { t: "call"; id: number; method: "issueStop"; params: { target: EstopTarget; reason: string } }
  | {
    t: "call";
    id: number;
    method: "issueReset";
    params: { stopIds: string[]; target?: EstopTarget; reason?: string };
  }
  | { t: "call"; id: number; method: "status" | "tick" | "shutdown" }
  | { t: "roster"; gateways: [string, GatewayIdentity][] }
  | { t: "addresses"; peer: string; addresses: string[] }
  | { t: "gossip"; frame: Uint8Array; fromPeer?: string };

export type FromWorker =
  | { t: "ready"; listen: string[]; port: number }
  | { t: "failed"; message: string }
  | { t: "reply"; id: number; ok: true; value: unknown }
  | { t: "reply"; id: number; ok: false; name: string; message: string }
  | { t: "result"; result: EstopResult }
  | { t: "event"; event: EstopEvent }
  | { t: "stats"; stats: Record<string, number>; livePeers: string[] }
  | { t: "stopAssets"; ids: string[]; reason: string }
  | { t: "holdAssets"; ids: string[]; reason: string }
  | { t: "publishGossip"; frame: Uint8Array };

/** What the gateway uses of the e-stop service. */
export interface EstopControl {
  issueStop(params: { target: EstopTarget; reason: string }): Promise<EstopIssued>;
  issueReset(
    params: { stopIds: string[]; target?: EstopTarget; reason?: string },
  ): Promise<EstopIssued>;
  /** True while a stop is latched on the local asset `assetId` (read from the safety line). */
  isLatched(assetId: string): boolean;
  status(): Promise<EstopStatus>;
  /** The thread's counters as of its last report (at most a second old). */
  stats(): Record<string, number>;
  /** Peers with a live e-stop link, as of the last report. */
  livePeers(): string[];
  onEvent(listener: (event: EstopEvent) => void): () => void;
  receiveGossip(frame: Uint8Array, fromPeer?: string): void;
  /** Runs heartbeats, link checks, watchdog and retries now. */
  tick(): Promise<void>;
  /** The mesh's gateways, for the thread's directory and links. */
  setRoster(gateways: ReadonlyMap<string, GatewayIdentity>): void;
  /** Where a peer's e-stop node listens. */
  setAddresses(peer: string, addresses: string[]): void;
  /** Rejects when the thread dies or fails to start. */
  readonly failed: Promise<never>;
  close(): Promise<void>;
}

/** Callbacks into the main thread. */
export interface EstopThreadHooks {
  /** The adapters' stop, after the thread has set the safety line. */
  stopAssets(ids: string[], reason: string): void;
  holdAssets(ids: string[], reason: string): void;
  publishGossip(frame: Uint8Array): void;
}

/**
 * Maps a peer's libp2p addresses to its e-stop node's: same host, `port`.
 * Unspecified hosts (0.0.0.0, ::) and relayed addresses are skipped.
 */
export function estopAddresses(addresses: readonly string[], port: number): string[] {
  const out = new Set<string>();
  for (const address of addresses) {
    const match = /^(\/(?:ip4|ip6|dns4|dns6|dns)\/[^/]+)\/tcp\/\d+(?:\/p2p\/[^/]+)?$/.exec(address);
    if (!match || /^\/ip4\/0\.0\.0\.0$|^\/ip6\/::$/.test(match[1]!)) continue;
    out.add(`${match[1]}/tcp/${port}`);
  }
  return [...out];
}

/** Listen addresses of the thread's node: the hosts of `listen`, on `port`. */
export function estopListen(listen: readonly string[], port: number): string[] {
  const out = new Set<string>();
  for (const address of listen) {
    const match = /^(\/(?:ip4|ip6)\/[^/]+)\/tcp\/\d+$/.exec(address);
    if (match) out.add(`${match[1]}/tcp/${port}`);
  }
  // With port 0 each address would get its own port, but identify announces one.
  return port === 0 ? [...out].slice(0, 1) : [...out];
}

class EstopThreadError extends Error {
  override name = "EstopThreadError";
}

/** Starts the thread and waits until its node listens and its latch is restored. */
export async function startEstopThread(
  init: EstopWorkerInit,
  safety: SafetyLine,
  hooks: EstopThreadHooks,
): Promise<{ control: EstopControl; port: number; listen: string[] }> {
  const worker = new Worker(new URL("./estop_worker.ts", import.meta.url), { type: "module" });
  let nextCall = 1;
  const calls = new Map<
    number,
    {
      resolve(value: unknown): void;
      reject(err: Error): void;
      timer: ReturnType<typeof setTimeout>;
    }
  >();
  const issued = new Map<string, (result: EstopResult) => void>();
  const early = new Map<string, EstopResult>();
  const listeners = new Set<(event: EstopEvent) => void>();
  let stats: Record<string, number> = {};
  let livePeers: string[] = [];
  let closed = false;
  let fail!: (err: Error) => void;
  const failed = new Promise<never>((_, reject) => (fail = reject));
  failed.catch(() => {}); // observed by the gateway; never an unhandled rejection here
  let ready!: (value: { listen: string[]; port: number }) => void;
  const started = new Promise<{ listen: string[]; port: number }>((resolve, reject) => {
    ready = resolve;
    failed.catch(reject);
  });

  const die = (err: Error) => {
    if (closed) return;
    closed = true;
    for (const call of calls.values()) {
      clearTimeout(call.timer);
      call.reject(err);
    }
    calls.clear();
    worker.terminate();
    fail(err);
  };
  worker.onerror = (event) => {
    event.preventDefault();
    die(new EstopThreadError(`e-stop thread failed: ${event.message}`));
  };
  worker.onmessageerror = () =>
    die(new EstopThreadError("e-stop thread sent an unreadable message"));
  worker.onmessage = (event: MessageEvent<FromWorker>) => {
    const message = event.data;
    switch (message.t) {
      case "ready":
        ready({ listen: message.listen, port: message.port });
        break;
      case "failed":
        die(new EstopThreadError(`e-stop thread failed: ${message.message}`));
        break;
      case "reply": {
        const call = calls.get(message.id);
        if (!call) break;
        calls.delete(message.id);
        clearTimeout(call.timer);
        if (message.ok) call.resolve(message.value);
        else {call.reject(
            message.name === "RangeError"
              ? new RangeError(message.message)
              : new Error(message.message),
          );}
        break;
      }
      case "result": {
        const resolve = issued.get(message.result.id);
        if (resolve) {
          issued.delete(message.result.id);
          resolve(message.result);
        } else {
          early.set(message.result.id, message.result); // before the issuing call's reply
        }
        break;
      }
      case "event":
        for (const listener of listeners) listener(message.event);
        break;
      case "stats":
        stats = message.stats;
        livePeers = message.livePeers;
        break;
      case "stopAssets":
        hooks.stopAssets(message.ids, message.reason);
        break;
      case "holdAssets":
        hooks.holdAssets(message.ids, message.reason);
        break;
      case "publishGossip":
        hooks.publishGossip(message.frame);
        break;
    }
  };

  const post = (message: ToWorker) => {
    if (!closed) worker.postMessage(message);
  };
  const call = <T>(message: ToWorker & { t: "call" }): Promise<T> => {
    if (closed) return Promise.reject(new EstopThreadError("e-stop thread is not running"));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        calls.delete(message.id);
        reject(new EstopThreadError(`e-stop thread did not answer ${message.method} in time`));
      }, ESTOP_CALL_TIMEOUT_MS);
      calls.set(message.id, { resolve: resolve as (value: unknown) => void, reject, timer });
      worker.postMessage(message);
    });
  };
  const withResult = (value: { id: string; hlc: string }): EstopIssued => {
    const result = new Promise<EstopResult>((resolve) => {
      const known = early.get(value.id);
      if (known) {
        early.delete(value.id);
        resolve(known);
      } else {
        issued.set(value.id, resolve);
      }
    });
    return { ...value, result };
  };

  post({ t: "init", init });
  let startTimer: ReturnType<typeof setTimeout> | undefined;
  const where = await Promise.race([
    started,
    new Promise<never>((_, reject) =>
      startTimer = setTimeout(
        () => reject(new EstopThreadError("e-stop thread did not start in time")),
        ESTOP_START_TIMEOUT_MS,
      )
    ),
  ]).finally(() => clearTimeout(startTimer));

  const control: EstopControl = {
    issueStop: async (params) =>
      withResult(await call({ t: "call", id: nextCall++, method: "issueStop", params })),
    issueReset: async (params) =>
      withResult(await call({ t: "call", id: nextCall++, method: "issueReset", params })),
    isLatched: (assetId) => safety.has(assetId) && safety.state(assetId) === "stop",
    status: () => call({ t: "call", id: nextCall++, method: "status" }),
    stats: () => stats,
    livePeers: () => livePeers,
    onEvent(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    receiveGossip: (frame, fromPeer) => post({ t: "gossip", frame, fromPeer }),
    tick: () => call({ t: "call", id: nextCall++, method: "tick" }),
    setRoster: (gateways) => post({ t: "roster", gateways: [...gateways] }),
    setAddresses: (peer, addresses) => post({ t: "addresses", peer, addresses }),
    failed,
    async close() {
      if (closed) return;
      try {
        await call({ t: "call", id: nextCall++, method: "shutdown" });
      } finally {
        closed = true;
        worker.terminate();
      }
    },
  };
  return { control, ...where };
}
