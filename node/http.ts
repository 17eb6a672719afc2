/**
 * The gateway's HTTP API (JSON). Routes are registered by the services that
 * own the data; this module handles parsing, limits and errors so that a bad
 * request gets a 4xx with a JSON error and never reaches a crash.
 */
import { concatBytes } from "../protocols/bytes.ts";
import type { Logger } from "./log.ts";
import { newTraceId, nowMs, round, type Tracer } from "./trace.ts";

/** Request bodies larger than this are refused (413): commands are small. */
export const MAX_BODY_BYTES = 64 * 1024;

/** An error that maps to an HTTP status with a JSON body `{error, field?}`. */
export class HttpError extends Error {
  override name = "HttpError";
  constructor(readonly status: number, message: string, readonly field?: string) {
    super(message);
  }
}

export interface RouteContext {
  request: Request;
  url: URL;
  params: Record<string, string>;
  /** Parses the JSON body (object expected); throws HttpError 400/413. */
  json(): Promise<Record<string, unknown>>;
}

export type RouteResult = Response | { status?: number; body: unknown } | unknown;
export type RouteHandler = (context: RouteContext) => RouteResult | Promise<RouteResult>;

interface Route {
  method: string;
  pattern: RegExp;
  keys: string[];
  handler: RouteHandler;
}

/** A tiny router: `/twins/:id/history` style paths. */
export class Router {
  readonly #routes: Route[] = [];

  add(method: string, path: string, handler: RouteHandler): void {
    const keys: string[] = [];
    const pattern = new RegExp(
      "^" + path.replace(/:([a-zA-Z]+)/g, (_m, key: string) => {
        keys.push(key);
        return "([^/]+)";
      }) + "/?$",
    );
    this.#routes.push({ method, pattern, keys, handler });
  }

  get(path: string, handler: RouteHandler): void {
    this.add("GET", path, handler);
  }

  post(path: string, handler: RouteHandler): void {
    this.add("POST", path, handler);
  }

  /** Every registered path (for the index page and 404 hints). */
  paths(): string[] {
    return [...new Set(this.#routes.map((r) => `${r.method} ${r.pattern.source}`))];
  }

  async handle(request: Request, log: Logger): Promise<Response> {
    const url = new URL(request.url);
    let pathMatched = false;
    for (const route of this.#routes) {
      const match = route.pattern.exec(url.pathname);
      if (!match) continue;
      pathMatched = true;
      if (route.method !== request.method) continue;
      const params: Record<string, string> = {};
      try {
        route.keys.forEach((key, i) => (params[key] = decodeURIComponent(match[i + 1]!)));
      } catch {
        return errorResponse(new HttpError(400, "malformed percent-encoding in path"));
      }
      try {
        const result = await route.handler({ request, url, params, json: () => readJson(request) });
        return toResponse(result);
      } catch (err) {
        if (err instanceof HttpError) return errorResponse(err);
        log.error("HTTP handler failed", { path: url.pathname, error: err });
        return errorResponse(new HttpError(500, "internal error"));
      }
    }
    if (pathMatched) {
      return errorResponse(
        new HttpError(405, `method ${request.method} not allowed on ${url.pathname}`),
      );
    }
    return errorResponse(new HttpError(404, `no route ${url.pathname}`));
  }
}

async function readJson(request: Request): Promise<Record<string, unknown>> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) {
    throw new HttpError(413, `body larger than ${MAX_BODY_BYTES} bytes`);
  }
  const reader = request.body?.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (reader) {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > MAX_BODY_BYTES) {
        await reader.cancel();
        throw new HttpError(413, `body larger than ${MAX_BODY_BYTES} bytes`);
      }
      chunks.push(value);
    }
  }
  const text = new TextDecoder().decode(concatBytes(chunks));
  if (text.trim() === "") throw new HttpError(400, "expected a JSON object body");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `malformed JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new HttpError(400, "expected a JSON object body");
  }
  return parsed as Record<string, unknown>;
}

function toResponse(result: RouteResult): Response {
  if (result instanceof Response) return result;
  if (
    result && typeof result === "object" && "body" in result &&
    Object.keys(result).every((k) => k === "body" || k === "status")
  ) {
    const { status, body } = result as { status?: number; body: unknown };
    return jsonResponse(body, status ?? 200);
  }
  return jsonResponse(result, 200);
}

export function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

function errorResponse(err: HttpError): Response {
  return jsonResponse(
    { error: err.message, ...(err.field ? { field: err.field } : {}) },
    err.status,
  );
}

export interface HttpServerHandle {
  /** The bound address, `host:port` (port resolved when 0 was asked). */
  address: string;
  port: number;
  shutdown(): Promise<void>;
}

/** Starts the server; throws a readable error when the port is taken. */
export function serveHttp(
  options: { hostname: string; port: number },
  router: Router,
  log: Logger,
  tracer?: Tracer,
): HttpServerHandle {
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      onListen: () => {},
      onError: (err) => {
        log.error("HTTP server error", { error: err });
        return errorResponse(new HttpError(500, "internal error"));
      },
    }, async (request) => {
      const startMs = nowMs();
      const response = await router.handle(request, log);
      // Scrapes and polls would flood the ring; only mutations are traced.
      if (tracer && request.method !== "GET") {
        tracer.record({
          traceId: newTraceId(),
          name: `http.${request.method} ${new URL(request.url).pathname}`,
          startMs,
          durationMs: round(nowMs() - startMs),
          attributes: { status: response.status },
        });
      }
      return response;
    });
  } catch (err) {
    if (err instanceof Deno.errors.AddrInUse) {
      throw new HttpError(
        0,
        `HTTP address ${options.hostname}:${options.port} is already in use (--http)`,
      );
    }
    throw new HttpError(
      0,
      `cannot serve HTTP on ${options.hostname}:${options.port} (--http): ${
        (err as Error).message
      }`,
    );
  }
  const port = server.addr.port;
  return {
    address: `${options.hostname}:${port}`,
    port,
    shutdown: () => server.shutdown(),
  };
}
