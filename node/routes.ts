/**
 * The HTTP API's routes. Each handler validates its input and maps service
 * errors to 4xx with a JSON body naming the field (see README.md).
 */
import { HttpError, jsonResponse, type Router } from "./http.ts";
import type { EstopTarget } from "../protocols/estop_codec.ts";
import { formatTimestamp, type HybridLogicalClock } from "../protocols/hlc.ts";
import { TwinValidationError } from "../protocols/twin_model.ts";
import type { AssetAdapter } from "./assets/adapter.ts";
import type { SimulatedArm } from "./assets/simulated_arm.ts";
import type { Detection } from "./detection.ts";
import type { EstopControl } from "./estop_thread.ts";
import type { GatewayIdentity, Mesh } from "./mesh.ts";
import type { GatewayMetrics } from "./metrics.ts";
import { TwinNotStoredError, type TwinService, UnknownTwinError } from "./twin_service.ts";
import type { Tracer } from "./trace.ts";
import { MAX_TWIN_WAIT_S, MAX_TWIN_WATCHERS } from "./twin_watch.ts";

export interface RouteDeps {
  peerId: string;
  identity: GatewayIdentity;
  startedAt: number;
  mesh: Mesh;
  metrics: GatewayMetrics;
  assets: ReadonlyMap<string, AssetAdapter>;
  arms: readonly SimulatedArm[];
  twins: TwinService;
  estop: EstopControl;
  detection: Detection;
  clock: HybridLogicalClock;
  tracer: Tracer;
  stats: () => Record<string, number>;
}

export function registerRoutes(router: Router, deps: RouteDeps): void {
  const {
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
  } = deps;
  const uptimeS = () => Math.round((performance.now() - startedAt) / 100) / 10;
  router.get("/", () => ({ service: "twinmesh", routes: router.paths() }));
  router.get("/health", () => ({ peerId, ...identity, uptimeS: uptimeS() }));
  router.get("/peers", () => mesh.peers());
  router.get(
    "/metrics",
    async () =>
      new Response(await metrics.text(), { headers: { "content-type": metrics.contentType } }),
  );
  // Cheap on purpose: dashboards and scripts poll it (bench twins does, every
  // 5 s); listing the twins resolved all of them, 20-30 ms on every gateway.
  router.get("/status", () => {
    const twinStats = twins.stats();
    return {
      peerId,
      ...identity,
      uptimeS: uptimeS(),
      peers: mesh.peers().length,
      assets: assets.size,
      twins: twins.count(),
      latched: [...assets.keys()].filter((id) => estop.isLatched(id)).length,
      anomalies: detection.stats.anomaliesLocal,
      hlc: formatTimestamp(clock.last),
      stats: {
        ...deps.stats(),
        estopLivePeers: estop.livePeers().length,
        twinGossipIn: twinStats.gossip_received,
        twinGossipOut: twinStats.gossip_published,
      },
    };
  });

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
  router.get("/twins/:id", ({ params, request }) => readTwin(twins, params.id!, request));
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
    // Answered once the command is on this gateway's disk: an acknowledged
    // command survives a crash right after the answer.
    try {
      await twins.whenStored();
    } catch (error) {
      if (!(error instanceof TwinNotStoredError)) throw error;
      throw new HttpError(
        503,
        `command ${hlc} was applied and published, but not stored: ${error.message}`,
      );
    }
    return { status: 202, body: { id, hlc } };
  });
  router.get("/estop", () => estop.status());
  router.get("/traces", ({ url }) =>
    deps.tracer.recent(intParam(url, "limit", 100, 1, 2000), {
      traceId: url.searchParams.get("trace") ?? undefined,
      prefix: url.searchParams.get("name") ?? undefined,
    }));
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
}

/**
 * `GET /twins/:id`, with an `ETag`. A request whose `If-None-Match` names the
 * current ETag gets 304; with `Prefer: wait=N` as well (this API's use of RFC
 * 7240's `wait`: hold the read), the answer waits up to N seconds for the
 * twin to change (then 200 with the new state) instead.
 */
async function readTwin(twins: TwinService, id: string, request: Request): Promise<Response> {
  const etagNow = () => `"${twinCall(() => twins.version(id))}"`;
  let etag = etagNow();
  const asked = request.headers.get("if-none-match");
  // Twin state is live: a browser must not answer a read from its cache.
  const headers = { etag, "cache-control": "no-cache" };
  if (asked !== null && etagMatches(asked, etag)) {
    const waitS = asked.trim() === "*" ? 0 : preferredWaitS(request.headers.get("prefer"));
    if (waitS > 0 && !twins.watchers.closed) {
      // The signal aborts when the client goes away (deno.json opts out of
      // Deno's legacy abort, which also fired on every answered request).
      const waiting = twins.watchers.wait(id, waitS * 1000, request.signal);
      if (!waiting) {
        throw new HttpError(503, `${MAX_TWIN_WATCHERS} reads are waiting already; retry`);
      }
      await waiting;
      etag = etagNow();
      headers.etag = etag;
    }
    if (etagMatches(asked, etag)) return new Response(null, { status: 304, headers });
  }
  const response = jsonResponse(twinCall(() => twins.get(id)));
  for (const [name, value] of Object.entries(headers)) response.headers.set(name, value);
  return response;
}

/** `If-None-Match`: `*` or a list of (possibly weak) ETags. */
function etagMatches(header: string, etag: string): boolean {
  return header.split(",").some((tag) => {
    const trimmed = tag.trim();
    return trimmed === "*" || trimmed.replace(/^W\//, "") === etag;
  });
}

/** Seconds of RFC 7240 `Prefer: wait=N` (capped), 0 when absent or unreadable (ignored, as the RFC asks). */
export function preferredWaitS(header: string | null): number {
  if (header === null) return 0;
  for (const preference of header.split(",")) {
    const match = /^\s*wait\s*=\s*"?(\d+(?:\.\d+)?)"?\s*$/i.exec(preference);
    if (match) return Math.min(Number(match[1]), MAX_TWIN_WAIT_S);
  }
  return 0;
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
