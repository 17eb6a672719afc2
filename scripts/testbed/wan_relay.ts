/**
 * The WAN delay relay: a userspace stand-in for `tc netem` (this kernel has no `sch_netem`).
 *
 * It runs in the WAN hub namespace and carries the WireGuard UDP of every pair of regions.
 * For a link (a, b) it binds two sockets: region a's tunnel sends to `aPort`, the relay
 * forwards to region b's tunnel from `bPort`, and back. Each datagram is dropped with
 * probability `loss` (seeded PRNG) or released after `delayMs ± jitterMs`. Release times
 * never go backwards within one direction, so jitter varies the delay without reordering,
 * like a real WAN path. Each direction's queue is bounded by {@link RELAY_QUEUE_MAX}.
 *
 * Conditions are read from a JSON file that the relay re-reads every
 * {@link RELAY_CONDITIONS_POLL_MS}, so `wan.ts` can change them while traffic flows.
 *
 * Run: `deno run -A scripts/testbed/wan_relay.ts <relay.json>` (setup does this).
 *
 * @module
 */

import dgram from "node:dgram";
import {
  RELAY_CONDITIONS_POLL_MS,
  RELAY_DATAGRAM_BYTES_MAX,
  RELAY_DELAY_MS_MAX,
  RELAY_QUEUE_MAX,
  RELAY_STATS_WRITE_MS,
} from "./constants.ts";
import { assert, TestbedInputError } from "./errors.ts";
import { deriveSeed, type Random, seededRandom } from "./prng.ts";
import type { UdpEndpoint, WanLinkSpec } from "./topology.ts";

/** Conditions of one WAN link, applied to each direction independently. */
export interface LinkConditions {
  /** Mean one-way delay in ms. */
  delayMs: number;
  /** Uniform jitter in ms: each datagram's delay is delayMs ± jitterMs (never below 0). */
  jitterMs: number;
  /** Drop probability per datagram, 0..1. */
  loss: number;
}

/** The conditions file: defaults plus optional per-link overrides keyed by link name. */
export interface WanConditions extends LinkConditions {
  links?: Record<string, Partial<LinkConditions>>;
}

/** No delay, no jitter, no loss. */
export const CLEAN_CONDITIONS: LinkConditions = { delayMs: 0, jitterMs: 0, loss: 0 };

/**
 * Validates an untrusted conditions value (from the file) or throws
 * {@link TestbedInputError} naming the bad field.
 *
 * @example
 * ```ts
 * parseConditions({ delayMs: 40, jitterMs: 5, loss: 0.01 });
 * ```
 */
export function parseConditions(value: unknown): WanConditions {
  if (typeof value !== "object" || value === null) {
    throw new TestbedInputError("conditions", value, "an object");
  }
  const raw = value as Record<string, unknown>;
  const base = parseLinkConditions(raw, "conditions", CLEAN_CONDITIONS);
  const result: WanConditions = { ...base };
  if (raw.links !== undefined) {
    if (typeof raw.links !== "object" || raw.links === null) {
      throw new TestbedInputError("conditions.links", raw.links, "an object");
    }
    result.links = {};
    for (const [name, link] of Object.entries(raw.links as Record<string, unknown>)) {
      if (typeof link !== "object" || link === null) {
        throw new TestbedInputError(`conditions.links.${name}`, link, "an object");
      }
      result.links[name] = parseLinkConditions(
        link as Record<string, unknown>,
        `conditions.links.${name}`,
        base,
      );
    }
  }
  return result;
}

function parseLinkConditions(
  raw: Record<string, unknown>,
  where: string,
  fallback: LinkConditions,
): LinkConditions {
  const delayMs = raw.delayMs ?? fallback.delayMs;
  const jitterMs = raw.jitterMs ?? fallback.jitterMs;
  const loss = raw.loss ?? fallback.loss;
  if (typeof delayMs !== "number" || !(delayMs >= 0 && delayMs <= RELAY_DELAY_MS_MAX)) {
    throw new TestbedInputError(`${where}.delayMs`, delayMs, `0..${RELAY_DELAY_MS_MAX}`);
  }
  if (typeof jitterMs !== "number" || !(jitterMs >= 0 && jitterMs <= RELAY_DELAY_MS_MAX)) {
    throw new TestbedInputError(`${where}.jitterMs`, jitterMs, `0..${RELAY_DELAY_MS_MAX}`);
  }
  if (typeof loss !== "number" || !(loss >= 0 && loss <= 1)) {
    throw new TestbedInputError(`${where}.loss`, loss, "a probability 0..1");
  }
  return { delayMs, jitterMs, loss };
}

/** The effective conditions of link `name`. */
export function conditionsFor(conditions: WanConditions, name: string): LinkConditions {
  const override = conditions.links?.[name];
  return {
    delayMs: override?.delayMs ?? conditions.delayMs,
    jitterMs: override?.jitterMs ?? conditions.jitterMs,
    loss: override?.loss ?? conditions.loss,
  };
}

/** Counters of one direction of one link. */
export interface DirectionStats {
  received: number;
  forwarded: number;
  /** Dropped by the loss draw. */
  lost: number;
  /** Dropped because the queue held {@link RELAY_QUEUE_MAX} datagrams. */
  overflow: number;
  /** Dropped because it came from an address other than the link's region. */
  foreign: number;
  /** Dropped because it exceeded {@link RELAY_DATAGRAM_BYTES_MAX}. */
  oversize: number;
  queued: number;
  queuedMax: number;
}

/** What {@link DelayLine.offer} did with a datagram. */
export type OfferOutcome = "queued" | "lost" | "overflow";

/**
 * One direction of a WAN link: loss, delay and jitter over a bounded FIFO, driven by the
 * caller's clock (pure; no timers), so it is tested with fake time.
 *
 * @example
 * ```ts
 * const line = new DelayLine({ random: seededRandom(1) });
 * line.setConditions({ delayMs: 40, jitterMs: 0, loss: 0 });
 * line.offer(0, new Uint8Array([1]));
 * line.takeDue(39).length; // 0
 * line.takeDue(40).length; // 1
 * ```
 */
export class DelayLine {
  readonly #random: Random;
  readonly #queueMax: number;
  #conditions: LinkConditions = CLEAN_CONDITIONS;
  // Ring of pending datagrams; release times are nondecreasing from head to tail.
  readonly #items: Array<{ releaseAtMs: number; bytes: Uint8Array }> = [];
  #head = 0;
  #lastReleaseAtMs = 0;

  constructor(init: { random: Random; queueMax?: number }) {
    this.#random = init.random;
    this.#queueMax = init.queueMax ?? RELAY_QUEUE_MAX;
    assert(this.#queueMax > 0, "queueMax is positive");
  }

  /** Applies new conditions to datagrams offered from now on. */
  setConditions(conditions: LinkConditions): void {
    this.#conditions = conditions;
  }

  /** Datagrams waiting. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Offers one datagram received at `nowMs`. */
  offer(nowMs: number, bytes: Uint8Array): OfferOutcome {
    const { delayMs, jitterMs, loss } = this.#conditions;
    // Draw the loss first and always, so a given seed drops the same datagrams whatever
    // the jitter setting.
    const lossDraw = this.#random();
    if (loss > 0 && lossDraw < loss) return "lost";
    if (this.size >= this.#queueMax) return "overflow";
    const jitter = jitterMs > 0 ? (this.#random() * 2 - 1) * jitterMs : 0;
    const releaseAtMs = Math.max(nowMs + Math.max(0, delayMs + jitter), this.#lastReleaseAtMs);
    this.#lastReleaseAtMs = releaseAtMs;
    this.#items.push({ releaseAtMs, bytes });
    return "queued";
  }

  /** Release time of the oldest waiting datagram, or undefined when empty. */
  nextReleaseAtMs(): number | undefined {
    return this.#items[this.#head]?.releaseAtMs;
  }

  /** Removes and returns, in order, every datagram due at `nowMs`. */
  takeDue(nowMs: number): Uint8Array[] {
    const due: Uint8Array[] = [];
    while (this.#head < this.#items.length) {
      const item = this.#items[this.#head];
      assert(item !== undefined, "head is inside the queue");
      if (item.releaseAtMs > nowMs) break;
      due.push(item.bytes);
      this.#head++;
    }
    // Compact once the consumed prefix dominates, keeping shifts amortised O(1).
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items.splice(0, this.#head);
      this.#head = 0;
    }
    return due;
  }
}

/** The relay's configuration file, written by setup. */
export interface RelayConfig {
  seed: number;
  links: WanLinkSpec[];
  conditionsFile: string;
  statsFile: string;
}

/** Validates an untrusted relay config. */
export function parseRelayConfig(value: unknown): RelayConfig {
  const raw = value as Partial<RelayConfig>;
  if (
    typeof raw !== "object" || raw === null || typeof raw.seed !== "number" ||
    !Array.isArray(raw.links) || typeof raw.conditionsFile !== "string" ||
    typeof raw.statsFile !== "string"
  ) {
    throw new TestbedInputError("relay config", value, "{seed, links, conditionsFile, statsFile}");
  }
  return raw as RelayConfig;
}

/** One direction at run time: a delay line, its counters, where it delivers, its timer. */
class Direction {
  readonly stats: DirectionStats = {
    received: 0,
    forwarded: 0,
    lost: 0,
    overflow: 0,
    foreign: 0,
    oversize: 0,
    queued: 0,
    queuedMax: 0,
  };
  readonly line: DelayLine;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly label: string,
    seed: number,
    readonly expectedSource: UdpEndpoint,
    readonly out: dgram.Socket,
    readonly target: UdpEndpoint,
  ) {
    this.line = new DelayLine({ random: seededRandom(deriveSeed(seed, label)) });
  }

  receive(bytes: Uint8Array, from: { address: string; port: number }): void {
    this.stats.received++;
    if (from.address !== this.expectedSource.ip || from.port !== this.expectedSource.port) {
      this.stats.foreign++;
      return;
    }
    if (bytes.length > RELAY_DATAGRAM_BYTES_MAX) {
      this.stats.oversize++;
      return;
    }
    const outcome = this.line.offer(performance.now(), bytes);
    if (outcome === "lost") this.stats.lost++;
    if (outcome === "overflow") this.stats.overflow++;
    this.#noteQueue();
    if (this.#timer !== undefined) return;
    // Zero delay (or a datagram already due): forward now, not after a timer tick, so a clean
    // WAN adds no relay latency.
    const nextMs = this.line.nextReleaseAtMs();
    if (nextMs !== undefined && nextMs <= performance.now()) this.#release();
    else this.#arm();
  }

  #arm(): void {
    const nextMs = this.line.nextReleaseAtMs();
    if (nextMs === undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#release();
    }, Math.max(0, nextMs - performance.now()));
  }

  #release(): void {
    for (const bytes of this.line.takeDue(performance.now())) {
      this.out.send(bytes, this.target.port, this.target.ip);
      this.stats.forwarded++;
    }
    this.#noteQueue();
    this.#arm();
  }

  #noteQueue(): void {
    this.stats.queued = this.line.size;
    this.stats.queuedMax = Math.max(this.stats.queuedMax, this.line.size);
  }
}

/**
 * Runs the relay until SIGTERM/SIGINT: binds every link's sockets, then forwards.
 */
export async function runRelay(config: RelayConfig): Promise<void> {
  const directions = new Map<string, { linkName: string; direction: Direction }>();
  const sockets: dgram.Socket[] = [];
  for (const link of config.links) {
    const aSocket = await bindUdp(link.aPort);
    const bSocket = await bindUdp(link.bPort);
    sockets.push(aSocket, bSocket);
    const aToB = new Direction(
      `${link.name}:a>b`,
      config.seed,
      link.aTarget,
      bSocket,
      link.bTarget,
    );
    const bToA = new Direction(
      `${link.name}:b>a`,
      config.seed,
      link.bTarget,
      aSocket,
      link.aTarget,
    );
    aSocket.on("message", (bytes, from) => aToB.receive(bytes, from));
    bSocket.on("message", (bytes, from) => bToA.receive(bytes, from));
    directions.set(aToB.label, { linkName: link.name, direction: aToB });
    directions.set(bToA.label, { linkName: link.name, direction: bToA });
  }

  let conditions: WanConditions = { ...CLEAN_CONDITIONS };
  let conditionsText = "";
  const loadConditions = async () => {
    let text: string;
    try {
      text = await Deno.readTextFile(config.conditionsFile);
    } catch {
      return; // No file yet: keep what we have.
    }
    if (text === conditionsText) return;
    conditionsText = text;
    try {
      conditions = parseConditions(JSON.parse(text));
    } catch (error) {
      console.error(`relay: ignoring bad conditions file: ${(error as Error).message}`);
      return;
    }
    for (const { linkName, direction } of directions.values()) {
      direction.line.setConditions(conditionsFor(conditions, linkName));
    }
    console.log(`relay: conditions ${JSON.stringify(conditions)}`);
  };
  const writeStats = async () => {
    const links: Record<string, Record<string, DirectionStats>> = {};
    for (const [label, { linkName, direction }] of directions) {
      links[linkName] ??= {};
      links[linkName][label.slice(linkName.length + 1)] = direction.stats;
    }
    const temp = `${config.statsFile}.tmp`;
    const stats = { pid: Deno.pid, updatedAtMs: Date.now(), conditions, links };
    await Deno.writeTextFile(temp, JSON.stringify(stats) + "\n");
    await Deno.rename(temp, config.statsFile);
  };

  await loadConditions();
  await writeStats();
  console.log(`relay: ready, pid ${Deno.pid}, ${config.links.length} links`);
  const conditionsTimer = setInterval(() => void loadConditions(), RELAY_CONDITIONS_POLL_MS);
  const statsTimer = setInterval(() => void writeStats(), RELAY_STATS_WRITE_MS);

  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    Deno.addSignalListener("SIGTERM", stop);
    Deno.addSignalListener("SIGINT", stop);
  });
  clearInterval(conditionsTimer);
  clearInterval(statsTimer);
  await writeStats();
  for (const socket of sockets) socket.close();
  console.log("relay: stopped");
}

function bindUdp(port: number): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    socket.once("error", reject);
    socket.bind(port, "0.0.0.0", () => {
      socket.off("error", reject);
      socket.on("error", (error) => console.error(`relay: socket ${port}: ${error.message}`));
      resolve(socket);
    });
  });
}

if (import.meta.main) {
  const configPath = Deno.args[0];
  if (configPath === undefined) {
    console.error("usage: wan_relay.ts <relay.json>");
    Deno.exit(2);
  }
  await runRelay(parseRelayConfig(JSON.parse(await Deno.readTextFile(configPath))));
}
