/**
 * Yamux receive-window updates (node/yamux_window.ts): a real YamuxStream is
 * handed data frames and the frames it sends back are counted.
 */
import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { StreamState, YamuxStream } from "@chainsafe/libp2p-yamux/stream";
import type { Logger } from "@libp2p/interface";
import "../node/yamux_window.ts";

/** Frame types and flags of the yamux spec. */
const DATA = 0;
const WINDOW_UPDATE = 1;
const FLAG_ACK = 2;
/** @chainsafe/libp2p-yamux's initial stream window (256 KiB). */
const INITIAL_WINDOW = 256 * 1024;

interface SentHeader {
  type: number;
  flag: number;
  streamID: number;
  length: number;
}

function quietLogger(): Logger {
  const log = Object.assign(() => {}, {
    error: () => {},
    trace: () => {},
    enabled: false,
    newScope: () => log,
  });
  return log as unknown as Logger;
}

function streamIn(state: StreamState): { stream: YamuxStream; sent: SentHeader[] } {
  const sent: SentHeader[] = [];
  const stream = new YamuxStream({
    id: "1",
    streamId: 1,
    state,
    direction: "inbound",
    log: quietLogger(),
    getRTT: () => -1,
    sendFrame: (header: SentHeader) => {
      sent.push({ ...header });
      return true;
    },
  });
  return { stream, sent };
}

function receive(stream: YamuxStream, bytes: number): void {
  const frame = {
    header: { type: DATA, flag: 0, streamID: 1, length: bytes },
    data: new Uint8Array(bytes),
  };
  (stream as unknown as { handleData(frame: unknown): void }).handleData(frame);
}

const windowUpdates = (sent: SentHeader[]) => sent.filter((h) => h.type === WINDOW_UPDATE);

Deno.test("yamux: small data frames get no window update until half the window is used", () => {
  const { stream, sent } = streamIn(StreamState.Established);
  const frameBytes = 1000;
  const framesToHalf = Math.ceil(INITIAL_WINDOW / 2 / frameBytes); // 132
  for (let i = 1; i < framesToHalf; i++) receive(stream, frameBytes);
  strictEqual(windowUpdates(sent).length, 0, "no update while less than half is used");
  receive(stream, frameBytes);
  deepStrictEqual(windowUpdates(sent).map((h) => h.length), [framesToHalf * frameBytes]);
  // The update restored the full window: the count starts again.
  for (let i = 0; i < framesToHalf; i++) receive(stream, frameBytes);
  deepStrictEqual(windowUpdates(sent).map((h) => h.length), [
    framesToHalf * frameBytes,
    framesToHalf * frameBytes,
  ]);
});

Deno.test("yamux: a stream that owes its peer an ACK sends it with the first frame", () => {
  const { stream, sent } = streamIn(StreamState.SYNReceived);
  receive(stream, 100);
  const updates = windowUpdates(sent);
  strictEqual(updates.length, 1);
  strictEqual(updates[0]!.flag & FLAG_ACK, FLAG_ACK);
  strictEqual(stream.state, StreamState.Established);
  receive(stream, 100);
  strictEqual(windowUpdates(sent).length, 1, "established: no update for a small frame");
});
