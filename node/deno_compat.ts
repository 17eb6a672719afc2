/**
 * Fixes for Node-targeted dependencies running on Deno. Imported for its
 * side effects before libp2p is loaded.
 *
 * Why the gateway process stayed alive after `libp2p.stop()`: the peer
 * store's read/write lock (the `mortice` package) opens a `BroadcastChannel`
 * named "mortice" in the main thread so that worker threads could ask it for
 * locks, then calls `channel.unref?.()` so that the channel does not keep
 * Node's event loop alive. Deno's `BroadcastChannel` has no `unref()`, so the
 * channel's pending receive kept the process running forever. The channel is
 * created lazily, by the address manager's debounced peer-store update, which
 * can even fire after `stop()`.
 *
 * twinmesh runs no worker threads that take mortice locks, so this channel
 * never carries a message; giving it an `unref()` that closes it is exact.
 */
const MORTICE_CHANNEL = "mortice";

interface Unrefable {
  unref?: () => void;
}

const proto = BroadcastChannel.prototype as BroadcastChannel & Unrefable;
if (typeof proto.unref !== "function") {
  Object.defineProperty(proto, "unref", {
    configurable: true,
    value: function unref(this: BroadcastChannel) {
      if (this.name === MORTICE_CHANNEL) this.close();
    },
  });
}

/**
 * `AbortSignal.timeout()` in Node does not keep the process alive; in Deno its
 * timer does. libp2p creates one per inbound ping (10 s), per dial and per
 * protocol negotiation, so a stopped gateway lingered for up to the longest of
 * those timeouts. This version keeps Node's semantics with an unref'd timer.
 */
AbortSignal.timeout = function timeout(ms: number): AbortSignal {
  const controller = new AbortController();
  const id = setTimeout(() => {
    controller.abort(new DOMException("The operation timed out.", "TimeoutError"));
  }, ms);
  Deno.unrefTimer(id);
  return controller.signal;
};
