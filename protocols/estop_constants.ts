/**
 * Limits and defaults of the e-stop protocol, in one place (the js-libp2p
 * `constants.ts` pattern). Every bound says why it has the value it has.
 *
 * @example
 * ```ts
 * import { ESTOP_PROTOCOL, MAX_FRAME_BYTES } from "./estop_constants.ts";
 * console.assert(ESTOP_PROTOCOL.startsWith("/twinmesh/"));
 * console.assert(MAX_FRAME_BYTES >= 2048);
 * ```
 */

/** The libp2p protocol id; one long-lived stream per peer pair carries every frame. */
export const ESTOP_PROTOCOL = "/twinmesh/estop/1.0.0";

/** Wire format version carried in every frame; a different value is a malformed frame. */
export const WIRE_VERSION = 1;

/**
 * Largest frame (after the 2-byte length prefix). The biggest legal frame is a
 * relayed RESET naming {@link MAX_RESET_STOP_IDS} stops (≈ 1.9 KiB); 4 KiB leaves
 * room and still bounds what a hostile peer can make us buffer per stream.
 */
export const MAX_FRAME_BYTES = 4096;

/** Stop and reset ids are 16 random bytes: collision-free without coordination. */
export const COMMAND_ID_BYTES = 16;

/** A free-text reason longer than one log line helps nobody on the shop floor. */
export const MAX_REASON_BYTES = 255;

/** Asset and cell ids are short names (`gw-3.arm-7`); 128 bytes is generous. */
export const MAX_TARGET_ID_BYTES = 128;

/** Peer IDs are ≈ 52 characters; the same bound the HLC codec uses for node ids. */
export const MAX_PEER_ID_BYTES = 128;

/** Ed25519 signatures are 64 bytes; 128 admits other libp2p key types (secp256k1 DER). */
export const MAX_SIGNATURE_BYTES = 128;

/**
 * A reset clears at most this many stops at once. An operator clears a handful
 * after an incident; 64 keeps a RESET frame under 2 KiB.
 */
export const MAX_RESET_STOP_IDS = 64;

/**
 * Commands (stop and reset ids) remembered for de-duplication and replay
 * rejection. A plant issues a few e-stops a day; 100 000 covers a storm of one
 * per second for a day and costs ≈ 20 MB. When full, the oldest is forgotten and
 * the replay floor rises past it (older commands are then refused as expired).
 */
export const MAX_KNOWN_COMMANDS = 100_000;

/**
 * Default age after which a command is refused as expired: it is also how long
 * ids are remembered and how long an origin keeps redelivering an undelivered
 * stop. One day outlasts any partition the plant would run through unattended.
 */
export const DEFAULT_COMMAND_MAX_AGE_MS = 24 * 60 * 60 * 1000;

/**
 * Undelivered (stop or reset, owner) pairs an origin keeps for redelivery. Far
 * above any plausible storm (1 000 stops × 10 owners); beyond it the oldest entry
 * is dropped with an error log and the `outbox_overflow` counter, because memory
 * and disk are finite and the newest stop is the most urgent.
 */
export const MAX_OUTBOX_ENTRIES = 10_000;

/** Events kept for `status().recent`: enough for an incident review page. */
export const MAX_RECENT_EVENTS = 256;

/** Commands awaiting acks at once; a bound on the dispatcher's memory and timers. */
export const MAX_PENDING_COMMANDS = 4096;

/**
 * Default time `stop()` and `reset()` wait for acks before reporting the
 * missing owners. Delivery continues afterwards (late acks are recorded).
 */
export const DEFAULT_ACK_DEADLINE_MS = 2_000;

/**
 * Delays between the origin's sends of an unacked command, in ms. The first
 * retry at 10 ms is well inside the 50 ms budget (a healthy round trip is
 * < 1 ms); later ones back off so a dead owner costs little. The last entry
 * repeats until the owner acks or the replay window ends.
 */
export const RETRY_SCHEDULE_MS: readonly number[] = [10, 15, 25, 50, 100, 200, 400, 1_000];

/**
 * From this retry on (1-based; 25 ms after issue) a retry also goes through
 * relays even when the direct stream looks fine. Without a direct stream,
 * relays are used from the first send.
 */
export const RELAY_FROM_ATTEMPT = 2;
/**
 * Retries to an owner wait at least this many times the owner's usual ack
 * time (a smoothed average of its acks), capped at
 * {@link MAX_ACK_TIME_RETRY_MS}. On a loaded mesh acks take longer than the
 * fixed schedule; retrying (and relaying and gossiping) on the schedule then
 * multiplies the traffic that made the acks slow, while the stop already sits
 * in the owner's TCP queue. A dead link is not waited for: its connection
 * closes and the stop goes by relays at once.
 */
export const RETRY_ACK_TIME_FACTOR = 2;
/** Upper bound of the ack-time-based wait (see {@link RETRY_ACK_TIME_FACTOR}). */
export const MAX_ACK_TIME_RETRY_MS = 1_000;

/** From this retry on (50 ms after issue) a retry also goes out over gossip, the last resort. */
export const GOSSIP_FROM_ATTEMPT = 3;

/**
 * Relays tried per retry. Two independent paths survive one broken peer without
 * multiplying traffic by the mesh size.
 */
export const MAX_RELAY_FANOUT = 2;

/**
 * Heartbeat on every e-stop stream; it also feeds the watchdog. 250 ms keeps a
 * dead link visible within ~1.5 s at a few frames per second per peer; faster
 * heartbeats showed up as event-loop lag in the latency benchmark.
 */
export const DEFAULT_PING_INTERVAL_MS = 250;

/**
 * A stream with nothing received for this long (twelve heartbeats) no longer
 * counts as a live link and is replaced. Not shorter: on a loaded gateway a
 * peer's pongs can lag by a second or more, and replacing healthy streams
 * then only adds work (seen with 10 gateways on 2 cores). Delivery does not
 * wait for this: an unacked stop is retried over other paths within ms, and a
 * crashed peer's TCP connection closes at once. Watchdog timeouts should be longer.
 */
export const DEFAULT_LINK_TIMEOUT_MS = 3_000;

/** Reopening a dropped stream backs off from 0 up to this, so a dead peer is not hammered. */
export const MAX_REOPEN_BACKOFF_MS = 2_000;

/** An owner flags a stop as late when it arrives this long after its HLC. */
export const DEFAULT_LATE_AFTER_MS = 1_000;

/**
 * Streams per connection for this protocol. Each side opens one; a few more
 * cover a reopen racing the old stream's close.
 */
export const MAX_ESTOP_STREAMS_PER_CONNECTION = 4;

/**
 * Bytes queued on one stream before it is treated as stuck and reset. 256 KiB
 * holds > 100 full frames; a peer that cannot drain that is not a live link.
 */
export const MAX_STREAM_WRITE_BUFFER_BYTES = 256 * 1024;
