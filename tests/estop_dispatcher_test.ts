import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { EstopDispatcher, type LinkView } from "../protocols/estop_dispatcher.ts";

const ID = "ab".repeat(16);
const frame = new Uint8Array([0, 1, 2]);
const command = (owners: string[]) => ({
  id: ID,
  type: "stop" as const,
  frame,
  owners,
  hlcWallMs: 0,
});
const links = (up: string[], relays: string[] = []): LinkView => ({
  hasLink: (peer) => up.includes(peer),
  relaysFor: (peer) => relays.filter((r) => r !== peer),
});

Deno.test("issue() sends directly to every owner with a link and relays to one without", () => {
  const dispatcher = new EstopDispatcher();
  const actions = dispatcher.issue(command(["b", "c"]), 0, links(["b", "r"], ["r"]));
  assertEquals(actions.map((a) => [a.type, "peer" in a ? a.peer : "via" in a ? a.via : ""]), [
    ["send", "b"],
    ["relay", "r"],
  ]);
});

Deno.test("all acks resolve the command with a report and latencies", () => {
  const dispatcher = new EstopDispatcher();
  dispatcher.issue(command(["b", "c"]), 0, links(["b", "c"]));
  const firstAck = dispatcher.ack(ID, "b", "ok", 1);
  assertEquals([firstAck.first, firstAck.actions], [true, []]);
  const repeat = dispatcher.ack(ID, "b", "ok", 2);
  assertEquals([repeat.accepted, repeat.first, repeat.record?.latencyMs], [true, undefined, 1]);
  const last = dispatcher.ack(ID, "c", "ok", 3);
  assertEquals(last.actions, [{
    type: "report",
    id: ID,
    acked: [
      { peer: "b", latencyMs: 1, status: "ok", late: false },
      { peer: "c", latencyMs: 3, status: "ok", late: false },
    ],
    missing: [],
  }]);
  assertEquals(dispatcher.unackedCount, 0);
});

Deno.test("unacked owners get retries on the schedule, then relays, then gossip", () => {
  const dispatcher = new EstopDispatcher({ retryScheduleMs: [10, 10, 10, 10] });
  dispatcher.issue(command(["b"]), 0, links(["b", "r"], ["r"]));
  const kinds = (nowMs: number) =>
    dispatcher.tick(nowMs, links(["b", "r"], ["r"])).map((a) => a.type);
  assertEquals(kinds(5), []);
  assertEquals(kinds(10), ["send"]);
  assertEquals(kinds(20), ["send", "relay"]);
  assertEquals(kinds(30), ["send", "relay", "gossip"]);
});

Deno.test("retries to an owner whose acks are slow wait for its usual ack time", () => {
  const dispatcher = new EstopDispatcher({ retryScheduleMs: [10, 10, 10, 10] });
  const up = links(["b", "c", "r"], ["r"]);
  // b usually acks after 200 ms: retries to b wait 2 × 200 ms; c has no history.
  const earlier = { ...command(["b"]), id: "cd".repeat(16) };
  dispatcher.issue(earlier, 0, up);
  dispatcher.ack(earlier.id, "b", "ok", 200);
  assertEquals(dispatcher.ackTimeMs("b"), 200);
  dispatcher.issue(command(["b", "c"]), 1_000, up);
  const peers = (nowMs: number) =>
    dispatcher.tick(nowMs, up).map((a) => `${a.type}:${"peer" in a ? a.peer : ""}`);
  assertEquals(peers(1_010), ["send:c"]);
  assertEquals(peers(1_399), ["send:c", "relay:"]);
  assertEquals(peers(1_400), ["send:b"]);
});

Deno.test("the deadline reports the missing owner and a late ack is flagged late", () => {
  const dispatcher = new EstopDispatcher({ ackDeadlineMs: 100 });
  dispatcher.issue(command(["b"]), 0, links([]));
  const report = dispatcher.tick(100, links([])).find((a) => a.type === "report");
  assert(report?.type === "report");
  assertEquals(report.missing, ["b"]);
  const late = dispatcher.ack(ID, "b", "ok", 5_000);
  assertEquals(late.record?.late, true);
});

Deno.test("a link coming back redelivers at once", () => {
  const dispatcher = new EstopDispatcher({ ackDeadlineMs: 100 });
  dispatcher.issue(command(["b"]), 0, links([]));
  dispatcher.tick(200, links([]));
  assertEquals(dispatcher.linkUp("b", 300, links(["b"])).map((a) => a.type), ["send"]);
});

Deno.test("an owner still silent after the replay window is given up loudly", () => {
  const dispatcher = new EstopDispatcher({ commandMaxAgeMs: 1_000 });
  dispatcher.issue(command(["b"]), 0, links([]));
  const actions = dispatcher.tick(1_001, links([]));
  assert(actions.some((a) => a.type === "expire" && a.why === "window"));
  assertEquals(dispatcher.unackedCount, 0);
});

Deno.test("the outbox bound drops the oldest undelivered entry with an overflow action", () => {
  const dispatcher = new EstopDispatcher({ maxOutboxEntries: 1 });
  dispatcher.issue(command(["b"]), 0, links([]));
  const actions = dispatcher.issue({ ...command(["c"]), id: "cd".repeat(16) }, 1, links([]));
  assert(actions.some((a) => a.type === "expire" && a.id === ID && a.why === "overflow"));
  assertEquals(dispatcher.unackedCount, 1);
});

Deno.test("an ack from a peer that was not asked is not accepted", () => {
  const dispatcher = new EstopDispatcher();
  dispatcher.issue(command(["b"]), 0, links(["b"]));
  assertEquals(dispatcher.ack(ID, "mallory", "ok", 1).accepted, false);
});
