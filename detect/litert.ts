/**
 * Runs `.tflite` models with LiteRT.js (`@litertjs/core`, Google's official
 * runtime compiled to wasm, XNNPack CPU kernels) inside Deno, offline.
 *
 * LiteRT.js is written for browsers: its loader injects a `<script>` for the
 * emscripten glue, or calls `importScripts` inside a worker. Deno has neither,
 * so {@link loadLiteRtRuntime} installs a temporary `importScripts` that
 * evaluates the glue file as a CommonJS module (the glue ends with a UMD
 * `module.exports = ModuleFactory`) and publishes `ModuleFactory` on
 * `globalThis`, where the loader looks. The wasm bytes are read from the
 * package's `wasm/` folder and handed over as `Module.wasmBinary`, so nothing
 * is fetched. Nothing here touches the network.
 */
import { createRequire } from "node:module";
import { getGlobalLiteRt, loadAndCompile, loadLiteRt, Tensor } from "@litertjs/core";
import type { CompiledModel } from "@litertjs/core";
import { assert } from "./assert.ts";
import { DetectInputError, TfliteModelError } from "./errors.ts";

/** Where `deno install`/`deno cache` puts the package (deno.json: nodeModulesDir auto). */
export const DEFAULT_LITERT_WASM_DIR = new URL(
  "../node_modules/@litertjs/core/wasm/",
  import.meta.url,
);

/** The glue/wasm pair without threads or JSPI: runs on any wasm engine with SIMD. */
const GLUE_FILE = "litert_wasm_internal.js";
const WASM_FILE = "litert_wasm_internal.wasm";

type GlobalWithLoaderHooks = typeof globalThis & {
  importScripts?: (url: string) => void;
  ModuleFactory?: unknown;
  Module?: unknown;
};

/**
 * LiteRT logs INFO lines about accelerators it registers on every load;
 * they would pollute tool output whose last stdout line is machine-read.
 * Warnings and errors still reach stderr.
 */
function quietLog(line: string): void {
  if (line.includes("ERROR")) {
    recentErrors.push(line);
    if (recentErrors.length > MAX_RECENT_ERRORS) recentErrors.shift();
  }
  // The NPU warning only says this machine has no NPU, which is expected.
  if (!line.startsWith("INFO") && !line.includes("npu_registry")) console.error(`litert: ${line}`);
}

/** LiteRT error lines kept to explain a failed compile (bounded). */
const MAX_RECENT_ERRORS = 16;
const recentErrors: string[] = [];

let runtimePromise: Promise<void> | undefined;

/**
 * Loads the LiteRT wasm runtime once per process. Safe to call repeatedly;
 * later calls return the first call's promise.
 *
 * @param wasmDir folder holding LiteRT's `wasm/` files
 */
export function loadLiteRtRuntime(wasmDir: URL = DEFAULT_LITERT_WASM_DIR): Promise<void> {
  runtimePromise ??= loadOnce(wasmDir).catch((error) => {
    runtimePromise = undefined;
    throw error;
  });
  return runtimePromise;
}

async function loadOnce(wasmDir: URL): Promise<void> {
  const g = globalThis as GlobalWithLoaderHooks;
  const glueUrl = new URL(GLUE_FILE, wasmDir);
  const wasmBinary = await Deno.readFile(new URL(WASM_FILE, wasmDir));
  const glueSource = await Deno.readTextFile(glueUrl);
  const previousImportScripts = g.importScripts;
  const nodeRequire = createRequire(glueUrl);
  g.importScripts = (url: string) => {
    if (new URL(url).href !== glueUrl.href) {
      throw new DetectInputError("importScripts url", url, glueUrl.href);
    }
    const module = { exports: {} as unknown };
    // The glue is an emscripten UMD bundle: evaluate it as CommonJS.
    const evaluate = new Function(
      "module",
      "exports",
      "require",
      "__filename",
      "__dirname",
      glueSource,
    );
    const gluePath = decodeURIComponent(glueUrl.pathname);
    const glueDir = gluePath.slice(0, gluePath.lastIndexOf("/"));
    evaluate(module, module.exports, nodeRequire, gluePath, glueDir);
    g.ModuleFactory = module.exports;
    // Handing the bytes over keeps emscripten from fetching or reading files.
    g.Module = { wasmBinary, print: quietLog, printErr: quietLog };
  };
  try {
    // The loader picks the glue by name from the directory; pass it exactly.
    await loadLiteRt(glueUrl.href);
  } finally {
    if (previousImportScripts) g.importScripts = previousImportScripts;
    else delete g.importScripts;
  }
  assert(getGlobalLiteRt() !== undefined, "LiteRT is loaded");
}

/** A compiled `.tflite` model with one float32 input and output. */
export class LiteRtModel {
  private constructor(
    private readonly compiled: CompiledModel,
    readonly inputShape: readonly number[],
  ) {}

  /**
   * Compiles `bytes` on LiteRT's wasm (XNNPack) CPU path.
   * @param inputShape the model's input shape, e.g. `[1, 32]`
   */
  static async load(bytes: Uint8Array, inputShape: readonly number[]): Promise<LiteRtModel> {
    await loadLiteRtRuntime();
    recentErrors.length = 0;
    let compiled: CompiledModel;
    try {
      compiled = await loadAndCompile(bytes, { accelerator: "wasm" });
    } catch (error) {
      throw new TfliteModelError(`LiteRT refused the model: ${String(error)}`);
    }
    // LiteRT can log a failed tensor allocation yet hand back a model whose
    // runs return zeros; treat logged errors as a refusal.
    if (recentErrors.length > 0) {
      compiled.delete();
      throw new TfliteModelError(`LiteRT refused the model: ${recentErrors.join(" | ")}`);
    }
    return new LiteRtModel(compiled, inputShape);
  }

  /** Runs the model once and copies the first output out of wasm memory. */
  async run(input: Float32Array): Promise<Float32Array> {
    const expected = this.inputShape.reduce((a, b) => a * b, 1);
    if (input.length !== expected) {
      throw new DetectInputError("LiteRtModel.run input.length", input.length, expected);
    }
    const tensor = new Tensor(input, [...this.inputShape]);
    try {
      const outputs = await this.compiled.run(tensor);
      try {
        const first = outputs[0];
        assert(first !== undefined, "a model has at least one output");
        return new Float32Array(first.toTypedArray() as Float32Array);
      } finally {
        for (const t of outputs) t.delete();
      }
    } finally {
      tensor.delete();
    }
  }

  /** Frees the wasm-side model. */
  delete(): void {
    this.compiled.delete();
  }
}
