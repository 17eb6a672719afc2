/**
 * Prometheus metrics: libp2p's own (through @libp2p/prometheus-metrics, in
 * the same registry) plus twinmesh's. Services keep plain counters and expose
 * them as `stats()`; each becomes a gauge `twinmesh_<service>_<name>` read at
 * scrape time, so the hot paths never touch the metrics library.
 */
import { Gauge, Registry } from "prom-client";

export type StatsSource = () => Record<string, number>;

export class GatewayMetrics {
  readonly registry = new Registry();

  /** Registers every key of `stats()` (as returned now) under `service`. */
  addStats(service: string, stats: StatsSource): void {
    for (const key of Object.keys(stats())) {
      const name = `twinmesh_${service}_${snake(key)}`;
      new Gauge({
        name,
        help: `twinmesh ${service} ${key}`,
        registers: [this.registry],
        collect() {
          this.set(stats()[key] ?? 0);
        },
      });
    }
  }

  /** Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

function snake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase()).replace(/[^a-z0-9_]/g, "_");
}
