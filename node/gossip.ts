/**
 * The gateway's gossipsub topics other than the twins' (the twin service
 * subscribes to its own): anomalies and detector models per factory, and the
 * mesh-wide e-stop fallback. One message listener dispatches by topic.
 */
import type { MeshNode } from "./libp2p.ts";
import type { Logger } from "./log.ts";

export type GossipHandler = (data: Uint8Array, from: string) => void;

/** `twinmesh/<factory>/<name>/1` */
export function factoryTopic(factory: string, name: string): string {
  return `twinmesh/${factory}/${name}/1`;
}

/** E-stop's last-resort path spans the whole mesh, across regions. */
export const ESTOP_TOPIC = "twinmesh/estop/1";

export class GossipBus {
  readonly #handlers = new Map<string, GossipHandler>();
  readonly stats = { pubsubMessagesIn: 0, pubsubMessagesOut: 0 };

  constructor(private readonly libp2p: MeshNode, private readonly log: Logger) {
    libp2p.services.pubsub.addEventListener("message", (event) => {
      this.stats.pubsubMessagesIn++;
      const message = event.detail;
      const from = message.type === "signed" ? message.from.toString() : "unknown";
      this.#handlers.get(message.topic)?.(message.data, from);
    });
  }

  subscribe(topic: string, handler: GossipHandler): void {
    this.#handlers.set(topic, handler);
    this.libp2p.services.pubsub.subscribe(topic);
  }

  /** Publishes; a failure (e.g. no peer subscribed yet) is logged at debug, never thrown. */
  publish(topic: string, bytes: Uint8Array): void {
    this.stats.pubsubMessagesOut++;
    this.libp2p.services.pubsub.publish(topic, bytes).catch((err: Error) =>
      this.log.debug("publish failed", { topic, error: err })
    );
  }
}
