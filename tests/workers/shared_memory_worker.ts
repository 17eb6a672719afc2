/**
 * Test worker: acts on shared memory from a second thread, as the e-stop
 * thread does. `hlc`: issues `count` stamps on a clock sharing `buffer`;
 * `stop`: stops `assetId` on the safety line in `buffer`.
 */
import { formatTimestamp, HybridLogicalClock, SharedClockState } from "../../protocols/hlc.ts";
import { SafetyLine } from "../../node/safety_line.ts";

type Task =
  | { kind: "hlc"; buffer: SharedArrayBuffer; count: number }
  | { kind: "stop"; buffer: SharedArrayBuffer; assetIds: string[]; assetId: string };

const scope = self as unknown as {
  onmessage: (event: MessageEvent<Task>) => void;
  postMessage(message: unknown): void;
};
scope.onmessage = ({ data: task }) => {
  if (task.kind === "hlc") {
    const clock = new HybridLogicalClock({ node: "gw", shared: new SharedClockState(task.buffer) });
    const stamps: string[] = [];
    for (let i = 0; i < task.count; i++) stamps.push(formatTimestamp(clock.now()));
    scope.postMessage(stamps);
  } else {
    new SafetyLine(task.assetIds, task.buffer).stop(task.assetId);
    scope.postMessage("stopped");
  }
};
