/**
 * Lightweight tracing: finished spans kept in a bounded ring and served at
 * `GET /traces`. A span's trace id ties together what happened on several
 * gateways: an e-stop's id is the trace id of its issue, its act at the owner
 * and every ack, so `GET /traces?trace=<stop id>` on each gateway shows the
 * stop's path through the mesh with timings on one host clock per gateway.
 */
import { bytesToHex } from "../protocols/hex.ts";

/** Spans kept; older ones are dropped (metrics and logs keep the totals). */
export const MAX_SPANS = 2_000;

export interface Span {
  traceId: string;
  name: string;
  /** Wall-clock start, ms since the epoch (sub-ms precision). */
  startMs: number;
  durationMs: number;
  attributes: Record<string, string | number | boolean>;
}

export class Tracer {
  readonly #spans: Span[] = [];
  #next = 0;

  /** Records a finished span. */
  record(span: Span): void {
    if (this.#spans.length < MAX_SPANS) this.#spans.push(span);
    else this.#spans[this.#next] = span;
    this.#next = (this.#next + 1) % MAX_SPANS;
  }

  /** Times `work` as a span (also when it throws). */
  async time<T>(
    traceId: string,
    name: string,
    attributes: Span["attributes"],
    work: () => Promise<T>,
  ): Promise<T> {
    const startMs = nowMs();
    try {
      return await work();
    } finally {
      this.record({ traceId, name, startMs, durationMs: round(nowMs() - startMs), attributes });
    }
  }

  /** Newest first; optionally only one trace or spans whose name starts with `prefix`. */
  recent(limit: number, filter: { traceId?: string; prefix?: string } = {}): Span[] {
    const ordered = [...this.#spans.slice(this.#next), ...this.#spans.slice(0, this.#next)]
      .reverse();
    return ordered
      .filter((s) =>
        (!filter.traceId || s.traceId === filter.traceId) &&
        (!filter.prefix || s.name.startsWith(filter.prefix))
      )
      .slice(0, limit);
  }
}

export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

/** A random 16-byte hex trace id (for spans that start a trace here). */
export function newTraceId(): string {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(16)));
}
