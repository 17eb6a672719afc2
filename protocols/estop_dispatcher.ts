/**
 * The origin side of an e-stop: a pure state machine that tracks, per issued
 * stop or reset, which owners have acked, and decides when to send again and
 * over which path. Events in (`issue`, `ack`, `linkUp`, `tick`), actions out
 * (`send`, `relay`, `gossip`, `report`, `expire`); the caller performs them.
 *
 * Paths, in order: the long-lived stream to the owner; then also relays
 * (peers that hold a stream to the owner); then also gossip, the last resort.
 * At the ack deadline the origin reports who did not ack, but it keeps the
 * command for those owners and redelivers it when a path reappears, until the
 * replay window ends (the owner would refuse it as expired after that).
 *
 * @example
 * ```ts
 * import { EstopDispatcher } from "./estop_dispatcher.ts";
 * const dispatcher = new EstopDispatcher();
 * const links = { hasLink: () => true, relaysFor: () => [] };
 * const actions = dispatcher.issue(
 *   { id: "a".repeat(32), type: "stop", frame: new Uint8Array(4), owners: ["gw-b"], hlcWallMs: 0 },
 *   0,
 *   links,
 * );
 * console.assert(actions[0]?.type === "send");
 * ```
 */
import { assert } from "./assert.ts";
import {
  DEFAULT_ACK_DEADLINE_MS,
  DEFAULT_COMMAND_MAX_AGE_MS,
  GOSSIP_FROM_ATTEMPT,
  MAX_ACK_TIME_RETRY_MS,
  MAX_OUTBOX_ENTRIES,
  MAX_PENDING_COMMANDS,
  MAX_RELAY_FANOUT,
  RELAY_FROM_ATTEMPT,
  RETRY_ACK_TIME_FACTOR,
  RETRY_SCHEDULE_MS,
} from "./estop_constants.ts";
import type { AckStatus } from "./estop_codec.ts";

/** What the dispatcher needs to know about the network right now. */
export interface LinkView {
  /** True when an e-stop stream to `peer` is open and live. */
  hasLink(peer: string): boolean;
  /** Peers with a live link of ours that could forward to `peer` (excluding `peer`). */
  relaysFor(peer: string): string[];
}

/** A command handed to the dispatcher. */
export interface DispatchCommand {
  readonly id: string;
  readonly type: "stop" | "reset";
  /** The sealed frame (with its length prefix), sent unchanged on every path. */
  readonly frame: Uint8Array;
  /** Remote owners that must ack (never the local gateway). */
  readonly owners: readonly string[];
  /** Wall time of the command's HLC: it expires `commandMaxAgeMs` after it. */
  readonly hlcWallMs: number;
}

/** One owner's answer. */
export interface AckRecord {
  readonly peer: string;
  readonly latencyMs: number;
  readonly status: AckStatus;
  /** Acked after the deadline report. */
  readonly late: boolean;
}

/** Something for the caller to do. */
export type DispatchAction =
  | {
    readonly type: "send";
    readonly id: string;
    readonly peer: string;
    readonly frame: Uint8Array;
  }
  | {
    readonly type: "relay";
    readonly id: string;
    readonly via: string;
    readonly destination: string;
    readonly frame: Uint8Array;
  }
  | { readonly type: "gossip"; readonly id: string; readonly frame: Uint8Array }
  | {
    readonly type: "report";
    readonly id: string;
    readonly acked: readonly AckRecord[];
    readonly missing: readonly string[];
  }
  /** Gave up on `peer` (replay window over, or outbox overflow): log loudly. */
  | {
    readonly type: "expire";
    readonly id: string;
    readonly peer: string;
    readonly why: "window" | "overflow";
  };

/** Options; all optional. */
export interface EstopDispatcherInit {
  ackDeadlineMs?: number;
  retryScheduleMs?: readonly number[];
  commandMaxAgeMs?: number;
  maxPendingCommands?: number;
  maxOutboxEntries?: number;
  maxRelayFanout?: number;
}

interface OwnerState {
  ack: AckRecord | undefined;
  /** Retries done so far (0 = only the first send). */
  attempts: number;
  nextAttemptAtMs: number;
}

interface Pending {
  readonly command: DispatchCommand;
  readonly issuedAtMs: number;
  readonly deadlineAtMs: number;
  reported: boolean;
  readonly owners: Map<string, OwnerState>;
}

/** Result of {@link EstopDispatcher.ack}. */
export interface AckOutcome {
  /** False for an ack of an unknown command or from a peer that was not asked. */
  readonly accepted: boolean;
  /** True only for the first ack from this owner (repeats are accepted, not new). */
  readonly first?: boolean;
  readonly record?: AckRecord;
  readonly actions: DispatchAction[];
}

/** Origin-side ack tracking and retries. */
export class EstopDispatcher {
  readonly ackDeadlineMs: number;
  readonly retryScheduleMs: readonly number[];
  readonly commandMaxAgeMs: number;
  readonly maxPendingCommands: number;
  readonly maxOutboxEntries: number;
  readonly maxRelayFanout: number;
  #pending = new Map<string, Pending>();
  #unackedCount = 0;
  /** Smoothed issue → first-ack time per owner (see RETRY_ACK_TIME_FACTOR). */
  #ackTimeMs = new Map<string, number>();

  constructor(init: EstopDispatcherInit = {}) {
    this.ackDeadlineMs = init.ackDeadlineMs ?? DEFAULT_ACK_DEADLINE_MS;
    this.retryScheduleMs = init.retryScheduleMs ?? RETRY_SCHEDULE_MS;
    this.commandMaxAgeMs = init.commandMaxAgeMs ?? DEFAULT_COMMAND_MAX_AGE_MS;
    this.maxPendingCommands = init.maxPendingCommands ?? MAX_PENDING_COMMANDS;
    this.maxOutboxEntries = init.maxOutboxEntries ?? MAX_OUTBOX_ENTRIES;
    this.maxRelayFanout = init.maxRelayFanout ?? MAX_RELAY_FANOUT;
    assert(this.retryScheduleMs.length > 0, "retry schedule is not empty");
    assert(this.ackDeadlineMs > 0, "ack deadline is positive");
  }

  /** (command, owner) pairs not acked yet: the outbox size. */
  get unackedCount(): number {
    return this.#unackedCount;
  }

  /** Commands still tracked (awaiting at least one ack). */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Owners of `id` that have not acked, or undefined when not pending. */
  missing(id: string): string[] | undefined {
    const pending = this.#pending.get(id);
    if (!pending) return undefined;
    return [...pending.owners].filter(([, s]) => s.ack === undefined).map(([peer]) => peer);
  }

  /**
   * Starts tracking a command and sends it to every owner over its direct
   * link (or relays when there is none). `restoredIssuedAtMs` is for commands
   * read back from storage after a restart: they are past their deadline.
   */
  issue(
    command: DispatchCommand,
    nowMs: number,
    links: LinkView,
    restoredIssuedAtMs?: number,
  ): DispatchAction[] {
    assert(!this.#pending.has(command.id), "a command is issued once");
    const actions: DispatchAction[] = [];
    const issuedAtMs = restoredIssuedAtMs ?? nowMs;
    const pending: Pending = {
      command,
      issuedAtMs,
      deadlineAtMs: issuedAtMs + this.ackDeadlineMs,
      reported: restoredIssuedAtMs !== undefined,
      owners: new Map(),
    };
    for (const peer of new Set(command.owners)) {
      pending.owners.set(peer, { ack: undefined, attempts: 0, nextAttemptAtMs: nowMs });
      this.#unackedCount++;
    }
    this.#pending.set(command.id, pending);
    if (pending.owners.size === 0) {
      this.#pending.delete(command.id);
      return [{ type: "report", id: command.id, acked: [], missing: [] }];
    }
    for (const [peer, state] of pending.owners) {
      this.#attempt(pending, peer, state, nowMs, links, actions);
    }
    this.#enforceBounds(actions);
    return actions;
  }

  /**
   * Adds owners to a command sent before they were known (an asset stop whose owner the origin
   * learned only later): tracked and retried like the first ones. Issues the command afresh
   * when it is no longer pending (every earlier owner acked, or there was none).
   */
  addOwners(command: DispatchCommand, nowMs: number, links: LinkView): DispatchAction[] {
    const pending = this.#pending.get(command.id);
    if (!pending) return this.issue(command, nowMs, links);
    const actions: DispatchAction[] = [];
    for (const peer of new Set(command.owners)) {
      if (pending.owners.has(peer)) continue;
      const state: OwnerState = { ack: undefined, attempts: 0, nextAttemptAtMs: nowMs };
      pending.owners.set(peer, state);
      this.#unackedCount++;
      this.#attempt(pending, peer, state, nowMs, links, actions);
    }
    this.#enforceBounds(actions);
    return actions;
  }

  /** Records an owner's (verified) ack. */
  ack(id: string, peer: string, status: AckStatus, nowMs: number): AckOutcome {
    const pending = this.#pending.get(id);
    const state = pending?.owners.get(peer);
    if (!pending || !state) return { accepted: false, actions: [] };
    if (state.ack) return { accepted: true, record: state.ack, actions: [] };
    const record: AckRecord = {
      peer,
      latencyMs: nowMs - pending.issuedAtMs,
      status,
      late: pending.reported,
    };
    state.ack = record;
    this.#noteAckTime(peer, record.latencyMs);
    this.#unackedCount--;
    assert(this.#unackedCount >= 0, "outbox count never goes negative");
    const actions: DispatchAction[] = [];
    const allAcked = [...pending.owners.values()].every((s) => s.ack !== undefined);
    if (allAcked && !pending.reported) {
      pending.reported = true;
      actions.push(this.#report(pending));
    }
    if (allAcked) this.#pending.delete(id);
    return { accepted: true, first: true, record, actions };
  }

  /** A link to `peer` came (back) up: redeliver everything it has not acked, now. */
  linkUp(peer: string, nowMs: number, links: LinkView): DispatchAction[] {
    const actions: DispatchAction[] = [];
    for (const pending of this.#pending.values()) {
      const state = pending.owners.get(peer);
      if (!state || state.ack) continue;
      actions.push({ type: "send", id: pending.command.id, peer, frame: pending.command.frame });
      state.nextAttemptAtMs = Math.min(
        state.nextAttemptAtMs,
        nowMs + this.#intervalMs(state, peer),
      );
    }
    void links;
    return actions;
  }

  /** Time-driven work: retries, deadline reports, expiry. Call every few ms. */
  tick(nowMs: number, links: LinkView): DispatchAction[] {
    const actions: DispatchAction[] = [];
    for (const pending of this.#pending.values()) {
      if (!pending.reported && nowMs >= pending.deadlineAtMs) {
        pending.reported = true;
        actions.push(this.#report(pending));
      }
      const expired = nowMs - pending.command.hlcWallMs > this.commandMaxAgeMs;
      for (const [peer, state] of pending.owners) {
        if (state.ack) continue;
        if (expired) {
          this.#drop(pending, peer, "window", actions);
          continue;
        }
        if (nowMs >= state.nextAttemptAtMs) {
          state.attempts++;
          this.#attempt(pending, peer, state, nowMs, links, actions);
        }
      }
      if ([...pending.owners.values()].every((s) => s.ack !== undefined)) {
        this.#pending.delete(pending.command.id);
      }
    }
    return actions;
  }

  /** Earliest time `tick` has work to do, for scheduling a timer. */
  nextWakeAtMs(): number | undefined {
    let next: number | undefined;
    for (const pending of this.#pending.values()) {
      if (!pending.reported) next = Math.min(next ?? Infinity, pending.deadlineAtMs);
      for (const state of pending.owners.values()) {
        if (!state.ack) next = Math.min(next ?? Infinity, state.nextAttemptAtMs);
      }
    }
    return next;
  }

  #attempt(
    pending: Pending,
    peer: string,
    state: OwnerState,
    nowMs: number,
    links: LinkView,
    actions: DispatchAction[],
  ): void {
    const { id, frame } = pending.command;
    const direct = links.hasLink(peer);
    if (direct) actions.push({ type: "send", id, peer, frame });
    const active = !pending.reported;
    if (!direct || state.attempts >= RELAY_FROM_ATTEMPT) {
      const relays = links.relaysFor(peer).filter((via) => via !== peer).slice(
        0,
        this.maxRelayFanout,
      );
      for (const via of relays) actions.push({ type: "relay", id, via, destination: peer, frame });
    }
    // Gossip floods the mesh: only while the command is young (before its report).
    if (active && state.attempts >= GOSSIP_FROM_ATTEMPT) {
      actions.push({ type: "gossip", id, frame });
    }
    state.nextAttemptAtMs = nowMs + this.#intervalMs(state, peer);
  }

  /**
   * Delay before the next retry: the schedule's entry for this attempt (the
   * last one repeating), or longer when this owner's acks usually take longer.
   */
  #intervalMs(state: OwnerState, peer: string): number {
    const schedule = this.retryScheduleMs;
    const scheduled = schedule[Math.min(state.attempts, schedule.length - 1)]!;
    const usual = this.#ackTimeMs.get(peer) ?? 0;
    return Math.max(scheduled, Math.min(MAX_ACK_TIME_RETRY_MS, RETRY_ACK_TIME_FACTOR * usual));
  }

  /** Usual ack time of `peer`, for retries. */
  ackTimeMs(peer: string): number | undefined {
    return this.#ackTimeMs.get(peer);
  }

  #noteAckTime(peer: string, latencyMs: number): void {
    const previous = this.#ackTimeMs.get(peer);
    this.#ackTimeMs.delete(peer); // re-inserted last: the map drops its oldest entry first
    this.#ackTimeMs.set(
      peer,
      previous === undefined ? latencyMs : 0.8 * previous + 0.2 * latencyMs,
    );
    if (this.#ackTimeMs.size > MAX_PENDING_COMMANDS) {
      this.#ackTimeMs.delete(this.#ackTimeMs.keys().next().value as string);
    }
  }

  #report(pending: Pending): DispatchAction {
    const acked: AckRecord[] = [];
    const missing: string[] = [];
    for (const [peer, state] of pending.owners) {
      if (state.ack) acked.push(state.ack);
      else missing.push(peer);
    }
    return { type: "report", id: pending.command.id, acked, missing };
  }

  #drop(pending: Pending, peer: string, why: "window" | "overflow", actions: DispatchAction[]) {
    const state = pending.owners.get(peer);
    assert(state !== undefined && state.ack === undefined, "only unacked owners are dropped");
    pending.owners.delete(peer);
    this.#unackedCount--;
    actions.push({ type: "expire", id: pending.command.id, peer, why });
    if (pending.owners.size === 0 || [...pending.owners.values()].every((s) => s.ack)) {
      this.#pending.delete(pending.command.id);
    }
  }

  /** Keeps pending commands and outbox entries within their bounds (oldest go first). */
  #enforceBounds(actions: DispatchAction[]): void {
    // Bounded: each pass removes at least one entry.
    while (
      this.#unackedCount > this.maxOutboxEntries || this.#pending.size > this.maxPendingCommands
    ) {
      const oldest = this.#pending.values().next().value as Pending;
      const victims = [...oldest.owners].filter(([, s]) => !s.ack).map(([peer]) => peer);
      if (victims.length === 0) {
        this.#pending.delete(oldest.command.id);
        continue;
      }
      for (const peer of victims) this.#drop(oldest, peer, "overflow", actions);
    }
  }
}
