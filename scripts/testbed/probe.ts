/**
 * A tiny multicast probe, run inside a gateway namespace to check that mDNS-style multicast
 * (224.0.0.251:5353) reaches the hosts of the same LAN and no others.
 *
 * - `probe.ts listen --ms 3000 --token T`: joins the group on the LAN interface, prints
 *   `ready`, then prints one JSON line `{"received":[{"from":ip,"token":...}]}` when it sees
 *   `T` or when `--ms` runs out.
 * - `probe.ts send --from 10.77.1.11 --token T [--count 3]`: sends `T` to the group from the
 *   given interface address, `count` times 100 ms apart.
 *
 * @module
 */

import dgram from "node:dgram";
import { parseArgs } from "node:util";

/** mDNS multicast group and port (RFC 6762). */
export const MDNS_GROUP = "224.0.0.251";
export const MDNS_PORT = 5353;

/** Most datagrams a listener records; the probe expects one token a few times. */
const RECEIVED_MAX = 64;

/** Gap between repeated sends, so one lost datagram does not fail the probe. */
const SEND_GAP_MS = 100;

async function listen(durationMs: number, token: string, iface: string | undefined) {
  const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
  const received: Array<{ from: string; token: string }> = [];
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(MDNS_PORT, "0.0.0.0", () => resolve());
  });
  socket.addMembership(MDNS_GROUP, iface);
  let done: () => void = () => {};
  const finished = new Promise<void>((resolve) => done = resolve);
  socket.on("message", (bytes, from) => {
    const text = new TextDecoder().decode(bytes);
    if (received.length < RECEIVED_MAX && text.startsWith("tm-probe:")) {
      received.push({ from: from.address, token: text.slice("tm-probe:".length) });
    }
    if (text === `tm-probe:${token}`) done();
  });
  const timer = setTimeout(done, durationMs);
  console.log("ready");
  await finished;
  clearTimeout(timer);
  socket.close();
  console.log(JSON.stringify({ received }));
}

async function send(from: string, token: string, count: number) {
  const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
  await new Promise<void>((resolve) => socket.bind(0, from, () => resolve()));
  socket.setMulticastInterface(from);
  socket.setMulticastTTL(255);
  for (let i = 0; i < count; i++) {
    await new Promise<void>((resolve, reject) =>
      socket.send(`tm-probe:${token}`, MDNS_PORT, MDNS_GROUP, (e) => e ? reject(e) : resolve())
    );
    await new Promise((resolve) => setTimeout(resolve, SEND_GAP_MS));
  }
  socket.close();
  console.log(JSON.stringify({ sent: count }));
}

if (import.meta.main) {
  const { positionals, values } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      ms: { type: "string", default: "3000" },
      token: { type: "string", default: "x" },
      from: { type: "string" },
      iface: { type: "string" },
      count: { type: "string", default: "3" },
    },
  });
  if (positionals[0] === "listen") {
    await listen(Number(values.ms), values.token, values.iface);
  } else if (positionals[0] === "send" && values.from !== undefined) {
    await send(values.from, values.token, Math.min(Number(values.count), 20));
  } else {
    console.error("usage: probe.ts listen [--ms N] [--token T] | send --from IP [--token T]");
    Deno.exit(2);
  }
}
