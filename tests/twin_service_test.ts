import { deepStrictEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { lpStream } from "@libp2p/utils";
import { HybridLogicalClock } from "../protocols/hlc.ts";
import { TwinDoc } from "../protocols/twin_doc.ts";
import { TwinStorage } from "../node/twin_storage.ts";
import { type GatewayStore, openStore, WAL_BACKSTOP_PAGES } from "../node/storage.ts";
import { TWIN_SYNC_PROTOCOL } from "../protocols/twin_codec.ts";
import {
  createTwinService,
  type OwnedAsset,
  type TwinCommand,
  TwinNotStoredError,
  TwinOwnershipError,
  twinTopic,
  TwinValidationError,
  UnknownTwinError,
} from "../node/twin_service.ts";
import { eventually, makeTestNode, memoryLogger, type TestNode } from "./twin_test_util.ts";

interface Gateway {
  node: TestNode;
  service: ReturnType<typeof createTwinService>;
  db: DatabaseSync;
  logger: ReturnType<typeof memoryLogger>;
  commands: { assetId: string; command: TwinCommand }[];
  stop(): Promise<void>;
}

async function startGateway(
  name: string,
  ownedAssets: OwnedAsset[],
  options: {
    dbPath?: string;
    node?: TestNode;
    compactAfterChunks?: number;
    rebaseAfterOps?: number;
    publishIntervalMs?: number;
    walCheckpointIntervalMs?: number;
    /** Randomness of the service (peer choice, compaction points). */
    random?: () => number;
  } = {},
): Promise<Gateway> {
  const node = options.node ?? await makeTestNode();
  const db = new DatabaseSync(options.dbPath ?? ":memory:");
  const logger = memoryLogger();
  const clock = new HybridLogicalClock({ node: node.peerId.toString() });
  const service = createTwinService({
    antiEntropyIntervalMs: 0,
    compactAfterChunks: options.compactAfterChunks,
    rebaseAfterOps: options.rebaseAfterOps,
    publishIntervalMs: options.publishIntervalMs,
    walCheckpointIntervalMs: options.walCheckpointIntervalMs,
  }, {
    libp2p: node,
    db,
    clock,
    logger,
    factory: "f1",
    gatewayName: name,
    ownedAssets,
    ...(options.random ? { random: options.random } : {}),
  });
  const commands: Gateway["commands"] = [];
  service.onCommand((assetId, command) => commands.push({ assetId, command }));
  await service.start();
  return {
    node,
    service,
    db,
    logger,
    commands,
    async stop() {
      await service.stop();
      await node.stop();
      db.close();
    },
  };
}

async function connect(a: Gateway, b: Gateway): Promise<void> {
  await a.node.dial(b.node.getMultiaddrs()[0]!);
}

const options = { sanitizeOps: false, sanitizeResources: false };

/** Runs `test` with the path of a new SQLite file in a temporary dir, removed afterwards. */
async function withDbPath(test: (dbPath: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "twin_service_" });
  try {
    await test(`${dir}/gateway.db`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A twin as a restart after a crash now would load it: another connection reads the file. */
function loadAfterCrash(dbPath: string, id: string): TwinDoc {
  const other = new DatabaseSync(dbPath);
  try {
    return TwinDoc.load(id, new TwinStorage(other).loadAll().get(id)!);
  } finally {
    other.close();
  }
}

/**
 * Makes every insert into `table` (appends to the log, or snapshots) fail as
 * a full disk would; returns the undo.
 */
function failInserts(db: DatabaseSync, table: "twin_log" | "twin_snapshots"): () => void {
  db.exec(
    `CREATE TRIGGER disk_full_${table} BEFORE INSERT ON ${table} ` +
      "BEGIN SELECT RAISE(ABORT, 'disk full'); END",
  );
  return () => db.exec(`DROP TRIGGER IF EXISTS disk_full_${table}`);
}

Deno.test({
  name: "commands nobody waits for are published at once but stored once per publish interval",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      // An interval longer than the test: only command ticks run.
      const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
        dbPath,
        publishIntervalMs: 60_000,
      });
      try {
        const rows = () =>
          (a.db.prepare("SELECT count(*) AS n FROM twin_log").get() as { n: number }).n;
        const before = { ...a.service.stats(), rows: rows() };
        for (const current of [150, 160, 170, 180]) {
          a.service.command("arm-1", { setpoints: { weldCurrentA: current } });
          await eventually(
            () =>
              a.service.stats().changes_committed > before.changes_committed + (current - 150) / 10,
            5_000,
            "the command tick ran",
          );
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        await eventually(
          () => a.service.stats().gossip_published - before.gossip_published >= 4,
          5_000,
          "every command published at once",
        );
        equal(a.service.stats().persisted_chunks, before.persisted_chunks, "none stored yet");
        equal(rows(), before.rows);
        await a.service.flushNow();
        equal(rows(), before.rows + 1, "one log row for the four commands");
        equal(a.service.stats().persisted_chunks, before.persisted_chunks + 1);
      } finally {
        await a.stop();
      }
    }),
});

Deno.test({
  name: "two gateways that wrote while disconnected converge once connected",
  ...options,
  fn: async () => {
    const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }]);
    const b = await startGateway("gw-b", [{ id: "arm-2", kind: "welding-arm" }]);
    try {
      a.service.writeMeasured("arm-1", {
        joints: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        counters: { weldCount: 2 },
      });
      b.service.command("arm-2", { setpoints: { weldCurrentA: 175 }, modes: { add: ["auto"] } });
      await a.service.flushNow();
      await b.service.flushNow();
      await connect(a, b);
      await eventually(
        () => a.service.list().length === 2 && b.service.list().length === 2,
        10_000,
        "both twins on both gateways",
      );
      await eventually(
        () =>
          JSON.stringify(a.service.get("arm-2")) === JSON.stringify(b.service.get("arm-2")) &&
          JSON.stringify(a.service.get("arm-1")) === JSON.stringify(b.service.get("arm-1")),
        10_000,
        "equal state",
      );
      equal(b.service.get("arm-1").fields["joints.a3"]?.value, 0.3);
      equal(b.service.get("arm-1").owner, "gw-a");
      deepStrictEqual(a.service.get("arm-2").fields.modes?.value, ["auto"]);
      // The state can converge (through sync) a moment before the session is counted as done.
      await eventually(
        () => a.service.stats().sync_sessions + b.service.stats().sync_sessions >= 1,
        5_000,
        "a sync session counted",
      );
    } finally {
      await a.stop();
      await b.stop();
    }
  },
});

Deno.test({
  name: "a command written on another gateway reaches the owner's adapter",
  ...options,
  fn: async () => {
    const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }]);
    const b = await startGateway("gw-b", []);
    try {
      await connect(a, b);
      await eventually(() => b.service.list().length === 1, 10_000, "b knows arm-1");
      const { hlc } = b.service.command("arm-1", {
        setpoints: { weldCurrentA: 190 },
        modes: { add: ["hold"] },
      });
      await eventually(() => a.commands.length > 0, 10_000, "command delivered to the owner");
      const last = a.commands.at(-1)!;
      equal(last.assetId, "arm-1");
      deepStrictEqual(last.command.setpoints, { weldCurrentA: 190 });
      deepStrictEqual(last.command.modesAdded, ["hold"]);
      equal(last.command.hlc, hlc);
      const history = a.service.history("arm-1", 10);
      ok(
        history.some((entry) => entry.hlc === hlc && entry.origin === "gw-b"),
        "history shows origin",
      );
    } finally {
      await a.stop();
      await b.stop();
    }
  },
});

Deno.test({
  name: "the API rejects bad input with typed errors naming the problem",
  ...options,
  fn: async () => {
    const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }]);
    try {
      throws(
        () => a.service.command("arm-9", { setpoints: { weldCurrentA: 1 } }),
        UnknownTwinError,
      );
      throws(
        () => a.service.command("arm-1", { setpoints: { weldCurrentA: -5 } }),
        (error: unknown) =>
          error instanceof TwinValidationError && error.field === "setpoints.weldCurrentA",
      );
      throws(() => a.service.get("nope"), UnknownTwinError);
      const { hlc } = a.service.command("arm-1", { setpoints: { weldCurrentA: 100 } });
      equal(a.service.get("arm-1").fields["setpoints.weldCurrentA"]?.hlc, hlc);
      equal(a.service.list()[0]?.lastHlc, hlc);
      deepStrictEqual(a.commands.at(-1)?.command.setpoints, { weldCurrentA: 100 });
    } finally {
      await a.stop();
    }
  },
});

Deno.test({
  name: "measured state is writable only by the owning gateway",
  ...options,
  fn: async () => {
    const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }]);
    const b = await startGateway("gw-b", []);
    try {
      await connect(a, b);
      await eventually(() => b.service.list().length === 1, 10_000, "b knows arm-1");
      throws(
        () => b.service.writeMeasured("arm-1", { joints: [0, 0, 0, 0, 0, 0] }),
        TwinOwnershipError,
      );
      throws(
        () => b.service.writeMeasured("arm-7", { joints: [0, 0, 0, 0, 0, 0] }),
        UnknownTwinError,
      );
    } finally {
      await a.stop();
      await b.stop();
    }
  },
});

Deno.test({
  name: "malformed and oversized gossip is dropped and counted, and the gateway keeps working",
  ...options,
  fn: async () => {
    const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }]);
    const b = await startGateway("gw-b", []);
    try {
      await connect(a, b);
      await eventually(() => b.service.list().length === 1, 10_000, "b knows arm-1");
      const topic = twinTopic("f1");
      await eventually(
        () => b.node.services.pubsub.getSubscribers(topic).length > 0,
        10_000,
        "b sees a on the topic",
      );
      await b.node.services.pubsub.publish(topic, new Uint8Array([0x47, 1, 200, 1, 2]));
      await b.node.services.pubsub.publish(topic, new Uint8Array(300 * 1024).fill(7));
      await eventually(
        () =>
          a.service.stats().dropped_malformed_gossip >= 1 &&
          a.service.stats().dropped_oversized_gossip >= 1,
        10_000,
        "drops counted",
      );
      b.service.command("arm-1", { setpoints: { wireFeedMps: 0.1 } });
      await eventually(
        () => a.service.get("arm-1").fields["setpoints.wireFeedMps"]?.value === 0.1,
        10_000,
        "valid gossip still applied",
      );
    } finally {
      await a.stop();
      await b.stop();
    }
  },
});

Deno.test({
  name: "a malformed sync session is counted and the next one still works",
  ...options,
  fn: async () => {
    const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }]);
    const b = await startGateway("gw-b", []);
    try {
      await connect(b, a);
      const stream = await b.node.dialProtocol(a.node.peerId, TWIN_SYNC_PROTOCOL);
      await lpStream(stream).write(new Uint8Array([0x09, 0x09, 0x09]));
      await eventually(() => a.service.stats().sync_protocol_errors >= 1, 10_000, "error counted");
      await b.service.syncWith(a.node.peerId);
      equal(b.service.list().length, 1);
    } finally {
      await a.stop();
      await b.stop();
    }
  },
});

Deno.test({
  name: "twins that come due for compaction together are all compacted, after the tick",
  ...options,
  fn: async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `arm-${i}`);
    const a = await startGateway("gw-a", ids.map((id) => ({ id, kind: "welding-arm" })), {
      compactAfterChunks: 3,
      random: () => 0, // every twin comes due at the full limit, in the same tick
    });
    try {
      for (let round = 0; round < 3; round++) {
        for (const id of ids) a.service.writeMeasured(id, { counters: { runtimeMs: 10 } });
        await a.service.flushNow();
      }
      await eventually(() => a.service.stats().compactions === ids.length, 10_000, "all compacted");
      equal(a.service.stats().compaction_errors, 0);
    } finally {
      await a.stop();
    }
  },
});

Deno.test({
  name: "a failing compaction neither fails a command's store nor breaks the twin's stored chunks",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
        dbPath,
        compactAfterChunks: 2,
        random: () => 0,
      });
      const stored = () =>
        loadAfterCrash(dbPath, "arm-1").resolve().fields["setpoints.wireFeedMps"];
      const diskBack = failInserts(a.db, "twin_snapshots");
      try {
        for (let i = 1; i <= 6; i++) {
          a.service.command("arm-1", { setpoints: { wireFeedMps: i / 100 } });
          await a.service.whenStored(); // rejects if the store failed
        }
        await eventually(
          () => a.service.stats().compaction_errors >= 1,
          10_000,
          "compaction failed",
        );
        ok(a.logger.lines.some((line) => line.msg === "twin compaction failed"));
        equal(a.service.stats().compactions, 0);
        // save() ran, but what it covered is in the chunks as well.
        a.service.command("arm-1", { setpoints: { wireFeedMps: 0.07 } });
        await a.service.whenStored();
        await a.service.flushNow();
        equal(stored()?.value, 0.07);

        diskBack();
        a.service.command("arm-1", { setpoints: { wireFeedMps: 0.08 } });
        await a.service.whenStored();
        await eventually(() => a.service.stats().compactions >= 1, 10_000, "compacted");
        equal(stored()?.value, 0.08);
      } finally {
        diskBack(); // stop compacts every twin
        await a.stop();
      }
    }),
});

Deno.test({
  name: "the WAL is checkpointed by the service after its stores, not by SQLite inside a commit",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      const a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
        dbPath,
        walCheckpointIntervalMs: 20,
      });
      // As the gateway's store would be, but with SQLite's own checkpoint off.
      a.db.exec("PRAGMA journal_mode = WAL");
      a.db.exec("PRAGMA wal_autocheckpoint = 0");
      try {
        equal(a.service.stats().wal_checkpoint_frames, 0);
        for (let i = 1; i <= 10; i++) {
          a.service.command("arm-1", { setpoints: { wireFeedMps: i / 100 } });
          await a.service.whenStored();
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        await eventually(
          () => a.service.stats().wal_checkpoint_frames > 0,
          10_000,
          "the WAL's frames copied into the database",
        );
        equal(a.service.stats().wal_checkpoint_errors, 0);
        ok(a.service.stats().wal_checkpoints >= 1);
        equal(
          loadAfterCrash(dbPath, "arm-1").resolve().fields["setpoints.wireFeedMps"]?.value,
          0.1,
        );
      } finally {
        await a.stop();
      }
    }),
});

Deno.test("a store whose caller checkpoints leaves SQLite's own checkpoint as a backstop", async () => {
  const dir = await Deno.makeTempDir({ prefix: "twin_service_wal_" });
  const pages = (store: GatewayStore) =>
    (store.db.prepare("PRAGMA wal_autocheckpoint").get() as { wal_autocheckpoint: number })
      .wal_autocheckpoint;
  try {
    const checkpointed = openStore(`${dir}/a`, { walCheckpointedByCaller: true });
    equal(pages(checkpointed), WAL_BACKSTOP_PAGES);
    checkpointed.close();
    const plain = openStore(`${dir}/b`);
    equal(pages(plain), 1000); // SQLite's default
    plain.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "a restarted gateway loads its twins from the SQLite file",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      const first = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], { dbPath });
      for (let i = 0; i < 20; i++) {
        first.service.writeMeasured("arm-1", {
          joints: [i / 100, 0, 0, 0, 0, 0],
          counters: { runtimeMs: 40 },
        });
        await first.service.flushNow();
      }
      first.service.command("arm-1", { modes: { add: ["auto", "hold"] } });
      const before = first.service.get("arm-1");
      await first.stop();

      const second = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], { dbPath });
      try {
        deepStrictEqual(second.service.get("arm-1"), before);
        equal(second.service.get("arm-1").fields.runtimeMs?.value, 800);
      } finally {
        await second.stop();
      }
    }),
});

Deno.test({
  name: "whenStored() resolves once the commands are committed, and rejects if the store fails",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      // An interval longer than the test: only a waited-for command makes a tick store.
      const gateway = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
        dbPath,
        publishIntervalMs: 60_000,
      });
      const storedCurrent = () =>
        loadAfterCrash(dbPath, "arm-1").resolve().fields["setpoints.weldCurrentA"]?.value;
      try {
        await gateway.service.whenStored(); // nothing pending: at once
        gateway.service.command("arm-1", { setpoints: { weldCurrentA: 150 } });
        gateway.service.command("arm-1", { setpoints: { weldCurrentA: 160 } });
        equal(storedCurrent(), undefined, "not stored at the write");
        await gateway.service.whenStored();
        equal(storedCurrent(), 160);

        const diskBack = failInserts(gateway.db, "twin_log");
        gateway.service.command("arm-1", { setpoints: { weldCurrentA: 170 } });
        await rejects(gateway.service.whenStored(), (error: Error) => {
          ok(error instanceof TwinNotStoredError, String(error));
          ok(/disk full/.test(error.message), error.message);
          return true;
        });
        equal(storedCurrent(), 160);
        diskBack();
        // The failed store's chunk is kept and goes with the next one.
        await gateway.service.whenStored();
        equal(storedCurrent(), 170);
      } finally {
        await gateway.stop();
      }
      gateway.service.command("arm-1", { setpoints: { weldCurrentA: 180 } });
      await rejects(gateway.service.whenStored(), TwinNotStoredError);
    }),
});

Deno.test({
  name: "chunks a failed append did not store go with the next one: the file loads after a crash",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      const gateway = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
        dbPath,
      });
      try {
        const tick = async () => {
          gateway.service.writeMeasured("arm-1", { counters: { runtimeMs: 40 } });
          await gateway.service.flushNow();
        };
        await tick();
        const diskBack = failInserts(gateway.db, "twin_log");
        await rejects(tick(), /disk full/);
        diskBack();
        await tick();
        equal(loadAfterCrash(dbPath, "arm-1").resolve().fields.runtimeMs?.value, 120);
      } finally {
        await gateway.stop();
      }
    }),
});

Deno.test({
  name:
    "an owner moves a long twin to a new epoch: a peer follows, nothing is lost, a restart loads it",
  ...options,
  fn: () =>
    withDbPath(async (dbPath) => {
      const rebaseAfterOps = 60;
      // No size-triggered compaction: only the epoch switch may replace stored chunks.
      const compactAfterChunks = 1_000_000;
      let a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
        dbPath,
        rebaseAfterOps,
        compactAfterChunks,
      });
      const b = await startGateway("gw-b", [], { rebaseAfterOps });
      try {
        await connect(a, b);
        await eventually(() => b.service.list().length === 1, 10_000, "b knows arm-1");
        // Writes from both sides, well past the bound: several epochs.
        for (let i = 1; i <= 60; i++) {
          a.service.writeMeasured("arm-1", {
            joints: [i / 100, 0.2, 0.3, 0.4, 0.5, 0.6],
            counters: { weldCount: 1 },
          });
          b.service.command("arm-1", { setpoints: { weldCurrentA: 100 + i } });
          await a.service.flushNow();
          await b.service.flushNow();
        }
        const same = () =>
          JSON.stringify(a.service.get("arm-1")) === JSON.stringify(b.service.get("arm-1"));
        await eventually(same, 10_000, "equal state on both gateways");
        const state = a.service.get("arm-1");
        equal(state.fields["joints.a1"]?.value, 0.6);
        equal(state.fields["weldCount"]?.value, 60, "every increment counted once across epochs");
        equal(state.fields["setpoints.weldCurrentA"]?.value, 160);
        ok(
          a.service.stats().epochs_started >= 2,
          `epochs started: ${a.service.stats().epochs_started}`,
        );
        ok(
          b.service.stats().epochs_adopted >= 2,
          `epochs adopted: ${b.service.stats().epochs_adopted}`,
        );
        // The history stays short: the current epoch only.
        ok(a.service.history("arm-1", 1000).length <= rebaseAfterOps);

        // What a crash now would load: the current epoch alone, holding everything.
        await a.service.flushNow();
        const loaded = loadAfterCrash(dbPath, "arm-1");
        equal(loaded.storedEpoch(), a.service.stats().epochs_started);
        ok(loaded.history(1000).length <= rebaseAfterOps, `${loaded.history(1000).length} changes`);
        equal(loaded.resolve().fields["weldCount"]?.value, 60);
        equal(loaded.resolve().fields["setpoints.weldCurrentA"]?.value, 160);

        // A restart loads the current epoch from storage, equal to what was served.
        await a.stop();
        a = await startGateway("gw-a", [{ id: "arm-1", kind: "welding-arm" }], {
          dbPath,
          rebaseAfterOps,
          compactAfterChunks,
        });
        deepStrictEqual(a.service.get("arm-1").fields, state.fields);
        // Only the current epoch was stored (old epochs' chunks were replaced, not appended to).
        ok(a.service.history("arm-1", 1000).length <= rebaseAfterOps);
      } finally {
        await a.stop();
        await b.stop();
      }
    }),
});
