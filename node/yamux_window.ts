/**
 * The yamux stream muxer, with receive-window updates sent at go-yamux's
 * rate instead of after every data frame.
 *
 * `@chainsafe/libp2p-yamux` 8.0.1 answers every data frame it receives with a
 * window-update frame (its only test is "is the window below its full size",
 * which any frame makes true). go-yamux, and the yamux spec's intent, send an
 * update only once at least half the receive window has been consumed, or
 * when the update must carry a flag (SYN/ACK). For a gateway every gossip
 * message is one small data frame, so the JS rule doubled the frames on the
 * wire: each update is encrypted, written, read, decrypted and parsed, and
 * wakes the other gateway's event loop. `bench twins`, nine interleaved pairs
 * (thirteenth session): update p99 20.2-32.6 ms against 29.5-40.3 without
 * (better in all nine, mean 27.7 against 35.2), CPU per write about 6% lower.
 *
 * The sender never stalls for it: it still has at least half a window (128
 * KiB by default) when an update is due, and the update goes out as soon as
 * the frame that crosses half is handled.
 */
import { yamux } from "@chainsafe/libp2p-yamux";
import { StreamState, YamuxStream } from "@chainsafe/libp2p-yamux/stream";

/** The private fields of a YamuxStream the rule reads. */
interface ReceiveWindow {
  state: StreamState;
  recvWindow: number;
  recvWindowCapacity: number;
}

/** The method the rule wraps; the mark makes loading this module twice wrap once. */
type SendWindowUpdate = ((this: YamuxStream) => void) & { halfWindowRule?: true };

const proto = YamuxStream.prototype as unknown as { sendWindowUpdate: SendWindowUpdate };
const original = proto.sendWindowUpdate;
if (typeof original !== "function") {
  // A yamux release without the method this module adjusts: fail loudly, not silently.
  throw new Error("@chainsafe/libp2p-yamux: YamuxStream.sendWindowUpdate not found");
}
if (!original.halfWindowRule) {
  const halfWindow = function sendWindowUpdate(this: YamuxStream): void {
    const stream = this as unknown as ReceiveWindow;
    // Init and SYNReceived make the next frame carry SYN or ACK: it must go out.
    const carriesFlag = stream.state === StreamState.Init ||
      stream.state === StreamState.SYNReceived;
    const consumed = stream.recvWindow - stream.recvWindowCapacity;
    if (
      !carriesFlag && stream.state !== StreamState.Paused && consumed < stream.recvWindow / 2
    ) {
      return;
    }
    original.call(this);
  };
  proto.sendWindowUpdate = Object.assign(halfWindow, { halfWindowRule: true as const });
}

/** The stream muxer every libp2p node of the gateway uses. */
export function yamuxMuxer(): ReturnType<typeof yamux> {
  return yamux();
}
