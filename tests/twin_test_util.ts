/**
 * Helpers for twin tests: in-memory sync between replicas (through the real
 * codec), minimal in-process libp2p nodes, fake clocks and loggers.
 */
import * as Automerge from "@automerge/automerge";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import type { TwinDoc } from "../protocols/twin_doc.ts";
import { decodeSyncFrame, encodeSyncFrame, type SyncFrame } from "../protocols/twin_codec.ts";
import { TwinReplica } from "../protocols/twin_replica.ts";
import { TwinSyncSession, type TwinSyncTarget } from "../protocols/twin_sync.ts";
import { createLibp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { gossipsub } from "@libp2p/gossipsub";
import { waitUntil } from "./wait.ts";

/** A wall clock tests move by hand. */
export class FakeWallClock {
  nowMs: number;
  constructor(startMs = 1_700_000_000_000) {
    this.nowMs = startMs;
  }
  read = (): number => this.nowMs;
}

/** A replica with its own HLC on a shared fake wall clock (plus a fixed skew). */
export function makeReplica(
  name: string,
  options: {
    wall?: FakeWallClock;
    skewMs?: number;
    factory?: string;
    replicate?: string[];
    rebaseAfterOps?: number;
    onChanged?: (assetId: string) => void;
  } = {},
): TwinReplica {
  const wall = options.wall ?? new FakeWallClock();
  const skewMs = options.skewMs ?? 0;
  const clock = new HybridLogicalClock({ node: name, wallClockMs: () => wall.nowMs + skewMs });
  const factory = options.factory ?? "f1";
  return new TwinReplica(
    {
      ...(options.replicate ? { replicate: options.replicate } : {}),
      ...(options.rebaseAfterOps !== undefined ? { rebaseAfterOps: options.rebaseAfterOps } : {}),
      ...(options.onChanged ? { onChanged: options.onChanged } : {}),
    },
    { clock, gatewayName: name, factory },
  );
}

/**
 * Runs one complete sync session between two targets in memory, every frame
 * through encode/decode; returns the number of frames exchanged.
 */
export function syncInMemory(a: TwinSyncTarget, b: TwinSyncTarget): number {
  const initiator = new TwinSyncSession("initiator", a);
  const responder = new TwinSyncSession("responder", b);
  const wire = (frames: SyncFrame[]) => frames.map((f) => decodeSyncFrame(encodeSyncFrame(f)));
  let toResponder = wire(initiator.start());
  responder.start();
  let frames = toResponder.length;
  for (let step = 0; step < 10_000; step++) {
    const toInitiator = wire(toResponder.flatMap((f) => responder.receive(f)));
    toResponder = wire(toInitiator.flatMap((f) => initiator.receive(f)));
    frames += toInitiator.length + toResponder.length;
    if (initiator.done && responder.done) return frames;
    if (toInitiator.length === 0 && toResponder.length === 0) break;
  }
  throw new Error(`sync did not finish (initiator ${initiator.done}, responder ${responder.done})`);
}

/** Runs Automerge sync between two twin documents until neither has anything to send. */
export function syncDocs(ours: TwinDoc, theirs: TwinDoc): void {
  let ourState = Automerge.initSyncState();
  let theirState = Automerge.initSyncState();
  for (let round = 0; round < 10; round++) {
    const [nextTheirs, toUs] = theirs.generateSyncMessage(theirState);
    theirState = nextTheirs;
    if (toUs) ourState = ours.receiveSyncMessage(ourState, toUs);
    const [nextOurs, toThem] = ours.generateSyncMessage(ourState);
    ourState = nextOurs;
    if (toThem) theirState = theirs.receiveSyncMessage(theirState, toThem);
    if (!toUs && !toThem) return;
  }
  throw new Error("sync did not settle");
}

/** A logger that keeps what it was told, for assertions. */
export function memoryLogger(): {
  lines: { level: string; msg: string; fields?: Record<string, unknown> }[];
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
} {
  const lines: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push(fields ? { level, msg, fields } : { level, msg });
  };
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A minimal libp2p node: TCP on 127.0.0.1, noise, yamux, identify, gossipsub. */
export async function makeTestNode() {
  return await createLibp2p({
    addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false }),
    },
  });
}

/** The node type {@link makeTestNode} returns. */
export type TestNode = Awaited<ReturnType<typeof makeTestNode>>;

/** Polls `condition` every 20 ms until it holds or `timeoutMs` passes. */
export function eventually(
  condition: () => boolean,
  timeoutMs = 10_000,
  what = "condition",
): Promise<void> {
  return waitUntil(condition, timeoutMs, what, 20);
}

/** Seed for property tests: `TWINMESH_SEED` when set, else random (printed to replay). */
export function propertySeed(testName: string): number {
  const fromEnv = Deno.env.get("TWINMESH_SEED");
  const seed = fromEnv !== undefined ? Number(fromEnv) : Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed)) throw new Error(`TWINMESH_SEED=${fromEnv}: expected an integer`);
  console.log(`${testName}: seed ${seed} (replay with TWINMESH_SEED=${seed})`);
  return seed;
}
