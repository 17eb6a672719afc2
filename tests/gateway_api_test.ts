/** Foundation + detection + e-stop over the HTTP API of real gateway processes. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  eventually,
  startGateway,
  stopGateway,
  tempDir,
  uniqueFactory,
} from "./gateway_test_util.ts";
import { getJson, postJson } from "../scripts/mesh_processes.ts";

async function raw(
  base: string,
  path: string,
  init?: RequestInit,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${base}${path}`, init);
  const text = await response.text();
  return { status: response.status, body: JSON.parse(text) };
}

Deno.test("the HTTP API answers and malformed requests get 4xx with a JSON error", async () => {
  const gateway = await startGateway({
    name: "api",
    factory: uniqueFactory("api"),
    dir: tempDir("api"),
    extraArgs: ["--no-mdns", "--twin-summary-ms", "300"],
  });
  const base = gateway.http;
  try {
    const health = await getJson<Record<string, unknown>>(gateway, "/health");
    assertEquals(Object.keys(health).sort(), ["factory", "name", "peerId", "region", "uptimeS"]);
    assertEquals(health.name, "api");
    assertEquals(await getJson(gateway, "/peers"), []);
    // /status counts the twins GET /twins lists (without resolving them).
    const status = await getJson<{ twins: number; assets: number }>(gateway, "/status");
    const listed = await getJson<unknown[]>(gateway, "/twins");
    assert(listed.length > 0, "the gateway's own arms are twins");
    assertEquals(status.twins, listed.length);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert(/^twinmesh_gateway_telemetry_samples \d+/m.test(metrics), "twinmesh metrics missing");
    assert(/^libp2p_/m.test(metrics), "libp2p metrics missing");

    const cases: Array<[string, RequestInit | undefined, number]> = [
      ["/nope", undefined, 404],
      ["/health", { method: "POST" }, 405],
      ["/estop", { method: "POST", body: "{not json" }, 400],
      ["/estop", { method: "POST", body: "[1,2]" }, 400],
      ["/estop", { method: "POST", body: JSON.stringify({ target: { planet: "mars" } }) }, 400],
      ["/estop/reset", { method: "POST", body: JSON.stringify({ stopIds: [] }) }, 400],
      ["/estop", { method: "POST", body: "x".repeat(70_000) }, 413],
      ["/anomalies?limit=abc", undefined, 400],
      [
        "/assets/none/faults",
        { method: "POST", body: JSON.stringify({ kind: "current-spike" }) },
        404,
      ],
      [
        "/assets/api.arm-0/faults",
        { method: "POST", body: JSON.stringify({ kind: "meteor" }) },
        400,
      ],
    ];
    for (const [path, init, status] of cases) {
      const response = await raw(base, path, init);
      assertEquals(response.status, status, `${init?.method ?? "GET"} ${path}`);
      assert(typeof response.body.error === "string", `${path}: JSON error body`);
    }
    // A local stop: latched, recorded in the twin and traced under its id.
    const stop = await postJson<{ id: string }>(gateway, "/estop", {
      target: { asset: "api.arm-0" },
      reason: "api test",
    });
    assertEquals(stop.status, 202);
    assert(
      await eventually(
        async () =>
          (await getJson<Array<{ id: string; latched: boolean }>>(gateway, "/assets")).some((a) =>
            a.id === "api.arm-0" && a.latched
          ),
        3_000,
      ),
    );
    const spans = await getJson<Array<{ name: string }>>(gateway, `/traces?trace=${stop.body.id}`);
    const names = spans.map((s) => s.name).sort();
    assert(
      names.includes("estop.issue.stop") && names.includes("estop.act"),
      `spans: ${names.join(",")}`,
    );
    const twin = await getJson<{ fields: Record<string, { value: unknown }> }>(
      gateway,
      "/twins/api.arm-0",
    );
    assertEquals(twin.fields.modes?.value, ["estop"]);
    assertEquals(JSON.parse(String(twin.fields["estop.last"]?.value)).id, stop.body.id);
    // A repeat stop of the stopped arm reaches the twin with the next measured-state write.
    const again = await postJson<{ id: string }>(gateway, "/estop", {
      target: { asset: "api.arm-0" },
      reason: "api test, again",
    });
    assertEquals(again.status, 202);
    const lastStopId = async () => {
      const view = await getJson<{ fields: Record<string, { value: unknown }> }>(
        gateway,
        "/twins/api.arm-0",
      );
      return JSON.parse(String(view.fields["estop.last"]?.value)).id;
    };
    assert(await eventually(async () => (await lastStopId()) === again.body.id, 3_000));
    // A motion command while latched is refused: the stop wins.
    const motion = await raw(base, "/twins/api.arm-0/commands", {
      method: "POST",
      body: JSON.stringify({ modes: { add: ["auto"] } }),
    });
    assertEquals(motion.status, 409);

    // Still alive after all that.
    assertEquals((await getJson<{ name: string }>(gateway, "/health")).name, "api");
  } finally {
    await stopGateway(gateway);
  }
});

Deno.test("a simulated arm with an injected fault raises an anomaly event visible at GET /anomalies", async () => {
  const gateway = await startGateway({
    name: "det",
    factory: uniqueFactory("det"),
    dir: tempDir("det"),
    extraArgs: ["--no-mdns", "--fault-rate", "0"],
  });
  try {
    // Let the detectors warm up on normal telemetry first.
    await new Promise((r) => setTimeout(r, 7_000));
    assertEquals(
      (await getJson<unknown[]>(gateway, "/anomalies?asset=det.arm-1")).length,
      0,
      "no anomaly before the fault",
    );
    const injected = await postJson(gateway, "/assets/det.arm-1/faults", {
      kind: "current-spike",
      durationS: 2,
    });
    assertEquals(injected.status, 202);
    const seen = await eventually(
      async () => {
        const events = await getJson<Array<{ assetId: string; channel: string; hlc: string }>>(
          gateway,
          "/anomalies?asset=det.arm-1",
        );
        return events.some((e) => e.channel === "current" && e.hlc.length > 0);
      },
      5_000,
      200,
    );
    assert(seen, "no anomaly on det.arm-1/current after the injected spike");
  } finally {
    await stopGateway(gateway);
  }
});
