import { deepStrictEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { assert } from "../protocols/assert.ts";
import { concatBytes } from "../protocols/bytes.ts";
import { lpStream, streamPair } from "@libp2p/utils";
import * as Automerge from "@automerge/automerge";
import {
  chunkSyncMessage,
  decodeGossip,
  decodeSyncFrame,
  encodeGossip,
  encodeSyncFrame,
  MAX_HELLO_DOCS,
  MAX_SYNC_FRAME_BYTES,
  MAX_SYNC_MESSAGE_BYTES,
  packSyncMessage,
  SYNC_CHUNK_BYTES,
  TWIN_SYNC_VERSION,
  TwinCodecError,
  unpackSyncMessage,
} from "../protocols/twin_codec.ts";
import {
  runTwinSyncSession,
  TwinSyncSession,
  type TwinSyncTarget,
  yieldToEventLoop,
} from "../protocols/twin_sync.ts";
import { MAX_PARKED_CHANGES_PER_DOC, TwinDoc } from "../protocols/twin_doc.ts";
import { makeReplica, syncInMemory } from "./twin_test_util.ts";

function divergedPair() {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  b.create("arm-2", "welding-arm");
  a.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: 150 }], "any");
  b.write("arm-2", [{ op: "add", field: "modes", element: "auto" }], "any");
  for (let i = 0; i < 50; i++) {
    a.write("arm-1", [{ op: "increment", field: "weldCount", delta: 1 }], "owner");
    a.flush();
  }
  return { a, b };
}

Deno.test("a sync session over a stream pair makes both replicas equal", async () => {
  const { a, b } = divergedPair();
  const [outbound, inbound] = await streamPair();
  const [sent, received] = await Promise.all([
    runTwinSyncSession(outbound, new TwinSyncSession("initiator", a)),
    runTwinSyncSession(inbound, new TwinSyncSession("responder", b)),
  ]);
  ok(sent.bytesSent > 0 && received.bytesSent > 0);
  equal(sent.bytesSent, received.bytesReceived);
  for (const id of ["arm-1", "arm-2"]) {
    deepStrictEqual(a.doc(id).heads(), b.doc(id).heads());
    deepStrictEqual(a.state(id).fields, b.state(id).fields);
  }
  equal(b.state("arm-1").fields.weldCount?.value, 50);
  deepStrictEqual(a.state("arm-2").fields.modes?.value, ["auto"]);
});

Deno.test("only a side lacking what the peer's hello named opens a dialogue about a twin", async () => {
  const { a, b } = divergedPair();
  syncInMemory(a, b);
  for (let i = 0; i < 3; i++) {
    a.write("arm-1", [{ op: "increment", field: "weldCount", delta: 1 }], "owner");
    a.flush();
  }
  const [outbound, inbound] = await streamPair();
  const initiator = new TwinSyncSession("initiator", a);
  const responder = new TwinSyncSession("responder", b);
  await Promise.all([
    runTwinSyncSession(outbound, initiator),
    runTwinSyncSession(inbound, responder),
  ]);
  // arm-2 matched on both sides. arm-1: a held all b had, so only b spoke, and got the rest.
  equal(initiator.stats.twinsInSync, 2);
  equal(responder.stats.twinsInSync, 1);
  equal(b.state("arm-1").fields.weldCount?.value, 53);
  deepStrictEqual(a.doc("arm-1").heads(), b.doc("arm-1").heads());
  // Now everything matches: a session sends hellos and empty rounds only.
  const [out2, in2] = await streamPair();
  const again = new TwinSyncSession("initiator", a);
  const againPeer = new TwinSyncSession("responder", b);
  await Promise.all([runTwinSyncSession(out2, again), runTwinSyncSession(in2, againPeer)]);
  equal(again.stats.twinsInSync, 2);
  equal(again.stats.messagesSent + againPeer.stats.messagesSent, 0);
});

Deno.test("changes in flight when the hellos cross cost no sync message once gossip delivers them", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  b.create("arm-2", "welding-arm");
  syncInMemory(a, b);
  // Each writes; the hellos name those changes before gossip carries them.
  a.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: 150 }], "any");
  b.write("arm-2", [{ op: "set", field: "setpoints.weldCurrentA", value: 160 }], "any");
  const fromA = a.flush();
  const fromB = b.flush();
  const initiator = new TwinSyncSession("initiator", a);
  const responder = new TwinSyncSession("responder", b);
  const helloA = initiator.start();
  responder.start();
  const helloB = helloA.flatMap((f) => responder.receive(f));
  for (const { docId, changes } of fromA) {
    b.ingestGossip({ factory: "f1", docs: [{ docId, changes }] });
  }
  for (const { docId, changes } of fromB) {
    a.ingestGossip({ factory: "f1", docs: [{ docId, changes }] });
  }
  let toResponder = helloB.flatMap((f) => initiator.receive(f));
  for (let step = 0; step < 10 && !(initiator.done && responder.done); step++) {
    toResponder = toResponder.flatMap((f) => responder.receive(f)).flatMap((f) =>
      initiator.receive(f)
    );
  }
  ok(initiator.done && responder.done, "the session ends");
  equal(initiator.stats.messagesSent + responder.stats.messagesSent, 0);
  deepStrictEqual(a.doc("arm-2").heads(), b.doc("arm-2").heads());
  deepStrictEqual(a.doc("arm-1").heads(), b.doc("arm-1").heads());
});

Deno.test("a twin whose hello heads a side lacks is synced, even with no other difference", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  syncInMemory(a, b);
  b.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: 170 }], "any");
  b.flush(); // never gossiped: only the session can carry it
  syncInMemory(a, b);
  equal(a.state("arm-1").fields["setpoints.weldCurrentA"]?.value, 170);
});

Deno.test("a round over several twins can hand the event loop back between twins", async () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  for (let i = 0; i < 5; i++) {
    a.create(`arm-${i}`, "welding-arm");
    a.write(`arm-${i}`, [{ op: "set", field: "setpoints.weldCurrentA", value: 100 + i }], "any");
  }
  a.flush();
  const initiator = new TwinSyncSession("initiator", a);
  const responder = new TwinSyncSession("responder", b);
  const [hello] = initiator.start();
  responder.start();
  const [answer] = responder.receive(hello!);
  let pauses = 0;
  const round = await initiator.receivePausing(answer!, () => true, () => {
    pauses++;
    return Promise.resolve();
  });
  equal(pauses, 5); // one after each twin's sync message
  equal(round.filter((f) => f.type === "sync").length, 5);
  // The rest of the session, without pauses, converges as usual.
  let toB = round;
  for (let turn = 0; turn < 50 && toB.length > 0; turn++) {
    const toA = responder.done ? [] : toB.flatMap((f) => responder.receive(f));
    toB = initiator.done ? [] : toA.flatMap((f) => initiator.receive(f));
  }
  for (let i = 0; i < 5; i++) {
    deepStrictEqual(b.state(`arm-${i}`).fields, a.state(`arm-${i}`).fields);
  }
});

Deno.test("yieldToEventLoop() lets due timers and socket I/O run", async () => {
  // A session's work between yields is otherwise one run of microtasks: a
  // yield that was a microtask would leave both of these waiting forever.
  let timerFired = false;
  setTimeout(() => (timerFired = true), 0);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("pong"),
  );
  let answered = false;
  const exchange = fetch(`http://127.0.0.1:${server.addr.port}/`)
    .then((response) => response.text())
    .then((text) => (answered = text === "pong"));
  try {
    for (let i = 0; i < 1_000_000 && !(timerFired && answered); i++) await yieldToEventLoop();
    ok(timerFired, "a due timer ran while yielding");
    ok(answered, "an HTTP exchange completed while yielding");
  } finally {
    await exchange;
    await server.shutdown();
  }
});

Deno.test("a scoped session syncs only the listed twins, on both sides", async () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-2", "welding-arm");
  syncInMemory(a, b); // b knows arm-2 (as a gateway with a gap in it would)
  for (const id of ["arm-1", "arm-2", "arm-3"]) {
    if (id !== "arm-2") a.create(id, "welding-arm");
    a.write(id, [{ op: "set", field: "setpoints.weldCurrentA", value: 120 }], "any");
  }
  a.flush();
  const [outbound, inbound] = await streamPair();
  const initiator = new TwinSyncSession("initiator", b, { scope: new Set(["arm-2"]) });
  const responder = new TwinSyncSession("responder", a);
  await Promise.all([
    runTwinSyncSession(outbound, initiator),
    runTwinSyncSession(inbound, responder),
  ]);
  ok(initiator.scoped && responder.scoped);
  ok(b.has("arm-2"));
  equal(b.state("arm-2").fields["setpoints.weldCurrentA"]?.value, 120);
  ok(!b.has("arm-1") && !b.has("arm-3"), "twins outside the scope stay out");
});

Deno.test("a hello round-trips, and one from an older twin protocol is refused by name", () => {
  const hello = {
    type: "hello" as const,
    factories: ["f1"],
    docs: [
      { docId: "arm-1~3", factory: "f1", heads: ["00ff".repeat(16), "ab".repeat(32)] },
      { docId: "arm-2", factory: "f1" },
    ],
  };
  deepStrictEqual(decodeSyncFrame(encodeSyncFrame(hello)), hello);
  const scoped = { type: "hello" as const, factories: ["f1"], docs: [], scoped: true };
  deepStrictEqual(decodeSyncFrame(encodeSyncFrame(scoped)), scoped);
  // Version 5 (sync messages not packed): an older version byte is refused by name.
  const older = encodeSyncFrame(hello);
  older[1] = TWIN_SYNC_VERSION - 1;
  throws(() => decodeSyncFrame(older), /sync version 5; expected 6/);
});

Deno.test("a hello for the most twins a replica holds fits a frame: heads past the budget are left out", () => {
  const head = (i: number, k: number) => (i * 4 + k).toString(16).padStart(64, "0");
  const docs = Array.from({ length: MAX_HELLO_DOCS }, (_, i) => ({
    docId: `gateway-${i % 50}.arm-${i}`,
    factory: "f1",
  }));
  const target: TwinSyncTarget = {
    factories: ["f1"],
    listDocs: () => docs,
    ensureDoc: () => true,
    generateSyncMessage: (_docId, state) => [state, null],
    receiveSyncMessage: (_docId, state) => state,
    heads: (docId) => [0, 1, 2, 3].map((k) => head(Number(docId.split("-").at(-1)), k)).join(","),
    hasHeads: () => false,
  };
  const [hello] = new TwinSyncSession("initiator", target).start();
  const bytes = encodeSyncFrame(hello!);
  ok(bytes.length <= MAX_SYNC_FRAME_BYTES, `hello of ${bytes.length} B`);
  const decoded = decodeSyncFrame(bytes);
  assert(decoded.type === "hello", "a hello decodes as one");
  const withHeads = decoded.docs.filter((d) => d.heads).length;
  ok(withHeads > 1_000 && withHeads < MAX_HELLO_DOCS, `${withHeads} twins carry heads`);
  deepStrictEqual(decoded.docs[0]?.heads, [0, 1, 2, 3].map((k) => head(0, k)));
  equal(decoded.docs.length, MAX_HELLO_DOCS);
});

Deno.test("a sync session skips twins of factories the peer does not replicate", () => {
  const a = makeReplica("gw-a", { factory: "f1", replicate: ["f1", "f2"] });
  const b = makeReplica("gw-b", { factory: "f2" });
  a.create("arm-1", "welding-arm"); // factory f1: b does not replicate it
  b.create("arm-2", "welding-arm"); // factory f2: both do
  syncInMemory(a, b);
  ok(!b.has("arm-1"));
  ok(a.has("arm-2"));
  equal(a.state("arm-2").meta.factory, "f2");
});

Deno.test("a sync message larger than a frame travels as chunks and is reassembled", async () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  // ~2 MB of history: many summaries (JSON strings) in separate changes.
  const summary = (i: number) => ({
    windowMs: 1_000,
    channels: {
      weldCurrentA: { min: i, mean: i + 0.5, max: i + 1, count: 1_000 },
      arcVoltageV: { min: i, mean: i + 0.5, max: i + 1, count: 1_000 },
    },
  });
  for (let i = 0; i < 12_000; i++) {
    a.write("arm-1", [{ op: "set", field: "summary", value: summary(i) }], "owner");
    if (i % 4 === 0) a.flush();
  }
  a.flush();
  const [outbound, inbound] = await streamPair();
  const initiator = new TwinSyncSession("initiator", b);
  await Promise.all([
    runTwinSyncSession(outbound, initiator),
    runTwinSyncSession(inbound, new TwinSyncSession("responder", a)),
  ]);
  deepStrictEqual(b.doc("arm-1").heads(), a.doc("arm-1").heads());
  deepStrictEqual(b.state("arm-1").fields.summary?.value, summary(11_999));
  ok(initiator.stats.messagesReceived >= 1);
});

Deno.test("chunkSyncMessage() splits at the chunk size and frames decode back", () => {
  // Incompressible, so it travels raw: one format byte more than the message.
  let x = 2463534242;
  const message = new Uint8Array(SYNC_CHUNK_BYTES * 2 + 5).map(() => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x & 0xff;
  });
  const frames = chunkSyncMessage("arm-1", message);
  equal(frames.length, 3);
  const parts: Uint8Array[] = [];
  for (const frame of frames) {
    const bytes = encodeSyncFrame(frame);
    ok(bytes.length <= MAX_SYNC_FRAME_BYTES);
    deepStrictEqual(decodeSyncFrame(bytes), frame);
    assert(frame.type === "sync", "chunks are sync frames");
    parts.push(frame.bytes);
  }
  deepStrictEqual(unpackSyncMessage(concatBytes(parts)), message);
});

Deno.test("a peer sending a malformed frame fails the session without harming the replica", async () => {
  const { a } = divergedPair();
  const before = a.state("arm-1");
  const [outbound, inbound] = await streamPair();
  const responder = runTwinSyncSession(inbound, new TwinSyncSession("responder", a));
  const evil = lpStream(outbound);
  await evil.write(
    new Uint8Array([0x01, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
  );
  await rejects(responder, TwinCodecError);
  deepStrictEqual(a.state("arm-1"), before);
});

Deno.test("a peer sending an oversized frame is cut off before the frame is buffered", async () => {
  const { a } = divergedPair();
  const [outbound, inbound] = await streamPair();
  const responder = runTwinSyncSession(inbound, new TwinSyncSession("responder", a));
  const evil = lpStream(outbound);
  // Only the length prefix is needed: the reader refuses the length itself.
  void evil.write(new Uint8Array(MAX_SYNC_FRAME_BYTES + 1)).catch(() => {});
  await rejects(responder, (error: Error) => {
    ok(/too long|length/i.test(error.message), error.message);
    return true;
  });
});

Deno.test("a peer that sends a sync frame before hello breaks the protocol", () => {
  const { a } = divergedPair();
  const session = new TwinSyncSession("responder", a);
  session.start();
  let error: unknown;
  try {
    session.receive({ type: "end-round" });
  } catch (e) {
    error = e;
  }
  equal((error as Error).name, "TwinSyncProtocolError");
});

Deno.test("a peer sending a garbage Automerge message inside a valid frame fails the session", () => {
  const { a, b } = divergedPair();
  const initiator = new TwinSyncSession("initiator", b);
  const responder = new TwinSyncSession("responder", a);
  responder.start();
  const [hello] = initiator.start();
  responder.receive(hello!);
  let error: unknown;
  try {
    responder.receive({
      type: "sync",
      docId: "arm-1",
      part: 0,
      parts: 1,
      bytes: new Uint8Array([0, 1, 2, 3]), // packed raw (format 0), not Automerge
    });
    responder.receive({ type: "end-round" });
  } catch (e) {
    error = e;
  }
  equal((error as Error).name, "TwinSyncMessageError");
});

Deno.test("a sync message that does not unpack fails the session as a codec error", () => {
  const bomb = packSyncMessage(new Uint8Array(MAX_SYNC_MESSAGE_BYTES + 1));
  ok(bomb.length < SYNC_CHUNK_BYTES, "a bomb fits one frame");
  const cases: [string, Uint8Array, boolean][] = [
    ["not deflate", new Uint8Array([1, 2, 3]), false],
    ["unknown format", new Uint8Array([7, 2, 3]), false],
    ["empty", new Uint8Array(0), false],
    ["inflates past the limit", bomb, true],
  ];
  for (const [name, bytes, oversized] of cases) {
    const { a, b } = divergedPair();
    const responder = new TwinSyncSession("responder", a);
    responder.start();
    responder.receive(new TwinSyncSession("initiator", b).start()[0]!);
    let error: unknown;
    try {
      responder.receive({ type: "sync", docId: "arm-1", part: 0, parts: 1, bytes });
    } catch (e) {
      error = e;
    }
    ok(error instanceof TwinCodecError, `${name}: ${error}`);
    equal(error.oversized, oversized, name);
  }
});

Deno.test("large sync messages travel deflated, small ones as they are, and both unpack", () => {
  const { a } = divergedPair();
  const [, message] = a.generateSyncMessage("arm-1", Automerge.initSyncState());
  ok(message, "the diverged side has something to say");
  const small = new Uint8Array([9, 8, 7]);
  deepStrictEqual(packSyncMessage(small), new Uint8Array([0, 9, 8, 7]));
  deepStrictEqual(unpackSyncMessage(packSyncMessage(small)), small);
  const repetitive = new Uint8Array(64 * 1024).map((_, i) => i % 7);
  const packed = packSyncMessage(repetitive);
  equal(packed[0], 1, "deflated");
  ok(packed.length < repetitive.length / 10);
  deepStrictEqual(unpackSyncMessage(packed), repetitive);
  deepStrictEqual(unpackSyncMessage(packSyncMessage(message)), message);
});

Deno.test("decodeGossip() rejects malformed and oversized messages", () => {
  const good = encodeGossip({
    factory: "f1",
    docs: [{ docId: "arm-1", changes: [new Uint8Array(3)] }],
  });
  deepStrictEqual(decodeGossip(good).docs[0]?.docId, "arm-1");
  const cases: [Uint8Array, boolean][] = [
    [good.subarray(0, good.length - 1), false],
    [new Uint8Array([...good, 0]), false],
    [new Uint8Array([0x47, 9]), false],
    [encodeGossip({ factory: "bad factory!", docs: [] }), false],
    [new Uint8Array(300 * 1024), true],
  ];
  for (const [bytes, oversized] of cases) {
    let error: unknown;
    try {
      decodeGossip(bytes);
    } catch (e) {
      error = e;
    }
    ok(error instanceof TwinCodecError, "rejected");
    equal(error.oversized, oversized);
  }
});

Deno.test("gossip changes with a missing dependency are parked, then applied when it arrives", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  const genesis = a.flush()[0]!.changes;
  a.write("arm-1", [{ op: "set", field: "setpoints.weldCurrentA", value: 111 }], "any");
  const second = a.flush()[0]!.changes;
  const gap = b.ingestGossip({
    factory: "f1",
    docs: [{ docId: "arm-1", changes: second }],
  });
  equal(gap, "parked", "a gap is reported");
  deepStrictEqual([b.doc("arm-1").parkedChanges, b.parkedChanges()], [1, 1]);
  const filled = b.ingestGossip({
    factory: "f1",
    docs: [{ docId: "arm-1", changes: genesis }],
  });
  equal(filled, "none");
  equal(b.parkedChanges(), 0);
  equal(b.state("arm-1").fields["setpoints.weldCurrentA"]?.value, 111);
});

Deno.test("a gap longer than the park evicts the oldest parked change and says so", () => {
  const a = makeReplica("gw-a");
  const b = makeReplica("gw-b");
  a.create("arm-1", "welding-arm");
  a.flush(); // the genesis never reaches b: everything after it waits for it
  const later: Uint8Array[] = [];
  for (let i = 0; i <= MAX_PARKED_CHANGES_PER_DOC; i++) {
    a.write(
      "arm-1",
      [{ op: "set", field: "setpoints.weldCurrentA", value: 100 + (i % 50) }],
      "any",
    );
    later.push(...a.flush()[0]!.changes);
  }
  const gap = b.ingestGossip({ factory: "f1", docs: [{ docId: "arm-1", changes: later }] });
  equal(gap, "evicted");
  equal(b.parkedChanges(), MAX_PARKED_CHANGES_PER_DOC);
  equal(b.stats.gossip_changes_evicted, 1);
});

Deno.test("gossip changes outside the twin layout are dropped and counted", () => {
  const b = makeReplica("gw-b");
  b.ingestGossip({
    factory: "f1",
    docs: [{ docId: "arm-1", changes: [new Uint8Array([1, 2, 3])] }],
  });
  equal(b.stats.dropped_malformed, 1);
  b.ingestGossip({ factory: "other", docs: [] });
  equal(b.stats.dropped_unknown_factory, 1);
});

Deno.test("a change Automerge holds back for a missing dependency does not count as present", () => {
  const writer = makeReplica("gw-a");
  writer.create("arm-1", "welding-arm");
  writer.flush();
  const snapshot = writer.doc("arm-1").save();
  const chunks: Uint8Array[] = [];
  for (const value of [1, 2]) {
    writer.write("arm-1", [{ op: "set", field: "joints.a1", value }], "owner");
    writer.flush();
    chunks.push(writer.doc("arm-1").saveIncremental());
  }
  const [newest] = writer.doc("arm-1").heads();
  // Stored chunks with the middle one lost: the last change waits for it.
  const held = TwinDoc.load("arm-1", [snapshot, chunks[1]!]);
  equal(held.hasChanges([newest!]), false);
  equal(TwinDoc.load("arm-1", [snapshot, ...chunks]).hasChanges([newest!]), true);
});
