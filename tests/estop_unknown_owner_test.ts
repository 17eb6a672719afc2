// An asset stop issued by a gateway that does not know the asset's owner yet (it has just
// restarted and not rediscovered the mesh) must reach the owner once it is known. Found by the
// testbed's crash scenario: such a stop was acknowledged (202, acked by the issuer itself) and
// never sent anywhere.

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { EstopDispatcher } from "../protocols/estop_dispatcher.ts";
import {
  connectAll,
  createTestGateway,
  stopAll,
  TestDirectory,
  waitFor,
} from "./estop_test_util.ts";

const FAST = { pingIntervalMs: 50, linkTimeoutMs: 400, ackDeadlineMs: 1_000 };

Deno.test("addOwners() extends a pending command and issues a finished one afresh", () => {
  const dispatcher = new EstopDispatcher();
  const links = { hasLink: () => true, relaysFor: () => [] };
  const command = (owners: string[]) => ({
    id: "cd".repeat(16),
    type: "stop" as const,
    frame: new Uint8Array([1]),
    owners,
    hlcWallMs: 0,
  });
  dispatcher.issue(command(["b"]), 0, links);
  const added = dispatcher.addOwners(command(["b", "c"]), 1, links);
  assertEquals(added.map((a) => a.type === "send" && a.peer), ["c"]);
  assertEquals(dispatcher.missing(command([]).id), ["b", "c"]);
  dispatcher.ack(command([]).id, "b", "ok", 2);
  dispatcher.ack(command([]).id, "c", "ok", 3);
  assertEquals(dispatcher.missing(command([]).id), undefined);
  // Not pending any more (or never was, with no owner at issue): tracked anew.
  const fresh = dispatcher.addOwners(command(["d"]), 4, links);
  assertEquals(fresh.map((a) => a.type === "send" && a.peer), ["d"]);
  assertEquals(dispatcher.missing(command([]).id), ["d"]);
});

Deno.test({
  name: "a stop to an asset of a not-yet-known owner is delivered once the owner is known",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Separate directories: the issuer knows neither the owner nor its assets at first.
    const issuerDirectory = new TestDirectory();
    const ownerDirectory = new TestDirectory();
    const issuer = await createTestGateway({
      name: "gw-a",
      directory: issuerDirectory,
      init: FAST,
    });
    const owner = await createTestGateway({ name: "gw-b", directory: ownerDirectory, init: FAST });
    const gateways = [issuer, owner];
    try {
      await connectAll(gateways);
      const assetId = owner.assets[1]!;
      const issued = await issuer.service.issueStop({
        target: { kind: "asset", id: assetId },
        reason: "pressed right after a restart",
      });
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert(!owner.service.isLatched(assetId), "nothing can deliver it yet");
      // Discovery catches up: the issuer learns the owner and its assets.
      issuerDirectory.gateways.push(owner.peerId);
      for (const asset of owner.assets) issuerDirectory.owners.set(asset, owner.peerId);
      await waitFor(() => owner.service.isLatched(assetId), 5_000, "the owner's latch");
      assertEquals(owner.adapter.stops[0]?.assetIds, [assetId]);
      await waitFor(
        () =>
          issuer.service.status().recent.find((r) => r.id === issued.id)?.acks.some((a) =>
            a.peer === owner.peerId
          ) === true,
        5_000,
        "the owner's ack at the issuer",
      );
    } finally {
      await stopAll(gateways);
    }
  },
});
