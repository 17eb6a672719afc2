/** Foundation: configuration errors exit non-zero with a message naming the problem. */
import { match as assertMatch, notStrictEqual, ok as assert } from "node:assert/strict";
import { runCli, tempDir } from "./gateway_test_util.ts";
import {
  ConfigError,
  defaultConfig,
  envName,
  GATEWAY_MALLOC_ARENA_MAX,
  GATEWAY_V8_FLAGS,
  helpText,
  loadConfig,
} from "../node/config.ts";

async function expectFailure(args: string[], pattern: RegExp): Promise<void> {
  const result = await runCli(args);
  notStrictEqual(result.code, 0, `expected a non-zero exit for ${args.join(" ")}`);
  assertMatch(result.stderr, pattern);
}

Deno.test("an unknown flag exits non-zero and names the flag", async () => {
  await expectFailure(["--colour", "blue"], /--colour: expected a known flag/);
});

Deno.test("a bad multiaddr exits non-zero and names the field", async () => {
  await expectFailure(["--peer", "not-a-multiaddr"], /config: peers: expected a TCP multiaddr/);
  await expectFailure(
    ["--listen", "/ip4/127.0.0.1/udp/4001"],
    /config: listen: expected a TCP multiaddr/,
  );
});

Deno.test("an HTTP port in use exits non-zero and names the address", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    const dir = tempDir("port");
    await expectFailure(
      [
        "--data-dir",
        dir,
        "--http",
        `127.0.0.1:${port}`,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
      ],
      new RegExp(`127\\.0\\.0\\.1:${port} is already in use \\(--http\\)`),
    );
  } finally {
    listener.close();
  }
});

Deno.test("a libp2p listen port in use exits non-zero and names --listen", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    await expectFailure(
      [
        "--data-dir",
        tempDir("listen"),
        "--http",
        "127.0.0.1:0",
        "--listen",
        `/ip4/127.0.0.1/tcp/${port}`,
        "--no-mdns",
      ],
      /cannot start libp2p on .* \(--listen\)/,
    );
  } finally {
    listener.close();
  }
});

Deno.test("an unreadable or malformed mesh key file exits non-zero and names meshKeyFile", async () => {
  await expectFailure(
    ["--mesh-key", "/nonexistent/mesh.key"],
    /config: meshKeyFile: expected a readable key file/,
  );
  const bad = `${tempDir("badkey")}/bad.key`;
  Deno.writeTextFileSync(bad, "not a key");
  await expectFailure(
    ["--mesh-key", bad, "--data-dir", tempDir("badkey2")],
    /meshKeyFile: expected a libp2p pnet key/,
  );
});

Deno.test("--help lists every flag with its default and exits 0", async () => {
  const result = await runCli(["--help"]);
  assert(result.code === 0);
  for (
    const flag of [
      "--name",
      "--factory",
      "--region",
      "--data-dir",
      "--listen",
      "--http",
      "--peer",
      "--mesh-key",
      "--no-mdns",
      "--assets",
    ]
  ) {
    assert(result.stdout.includes(flag), `help lacks ${flag}`);
  }
  assertMatch(result.stdout, /--http <host:port>.*\[default: 127\.0\.0\.1:8080\]/);
  // An opt-out flag names the setting it turns off.
  assertMatch(result.stdout, /--no-mdns .*\[default: mdns on\]/);
  assertMatch(result.stdout, /--no-estop-realtime .*\[default: estopRealtime on\]/);
});

Deno.test("bench NAME --help prints that benchmark's options without running it", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      new URL("../scripts/bench.ts", import.meta.url).pathname,
      "twins",
      "--help",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  assert(output.code === 0, new TextDecoder().decode(output.stderr));
  assertMatch(text, /^`deno task bench twins`/);
  assertMatch(text, /Options: `--duration-s n` \(30/);
  assert(!text.includes("@example"), text);
});

Deno.test("loadConfig applies file < env < flag precedence and validates the result", () => {
  const dir = tempDir("cfg");
  const file = `${dir}/gw.json`;
  Deno.writeTextFileSync(file, JSON.stringify({ name: "from-file", factory: "ff", assets: 7 }));
  const { config } = loadConfig(["--config", file, "--name", "from-flag"], {
    [envName("factory")]: "from-env",
  });
  assert(config.name === "from-flag");
  assert(config.factory === "from-env");
  assert(config.assets === 7);
  assert(config.region === defaultConfig().region);
});

Deno.test("loadConfig rejects unknown config-file fields and bad values with the field named", () => {
  const dir = tempDir("cfg2");
  const file = `${dir}/gw.json`;
  Deno.writeTextFileSync(file, JSON.stringify({ nmae: "typo" }));
  try {
    loadConfig(["--config", file], {});
    assert(false, "expected ConfigError");
  } catch (err) {
    assert(err instanceof ConfigError && /nmae/.test(err.message), String(err));
  }
  for (
    const [args, field] of [[["--assets", "-1"], "assets"], [["--name", "bad name"], "name"], [[
      "--http",
      "nope",
    ], "http"]] as const
  ) {
    try {
      loadConfig([...args], {});
      assert(false, `expected ConfigError for ${args.join(" ")}`);
    } catch (err) {
      assert(err instanceof ConfigError && err.field === field, `${args.join(" ")}: ${err}`);
    }
  }
  assert(helpText().includes("TWINMESH_DATA_DIR"));
});

Deno.test("deno.json runs and compiles the gateway with its V8 flags, and runs it with its malloc arena limit", () => {
  const tasks = JSON.parse(Deno.readTextFileSync(new URL("../deno.json", import.meta.url))).tasks;
  for (const task of ["gateway", "compile"]) {
    assert(tasks[task].includes(`--v8-flags=${GATEWAY_V8_FLAGS}`), `task ${task}: ${tasks[task]}`);
  }
  // glibc reads it at process start: the task sets it (a compiled binary's service unit must).
  assert(
    tasks.gateway.startsWith(`MALLOC_ARENA_MAX=${GATEWAY_MALLOC_ARENA_MAX} `),
    `task gateway: ${tasks.gateway}`,
  );
});
