/**
 * A pure-TypeScript runner for dense-only `.tflite` models: reads the same
 * file LiteRT runs, extracts FULLY_CONNECTED weights (plus standalone RELU,
 * TANH and LOGISTIC ops), and evaluates them with plain loops. For the small
 * autoencoders used per channel group this is ~50× cheaper per call than
 * crossing into wasm, so it is the path used on the hot loop; LiteRT stays
 * the reference that proves the file is a real TFLite model.
 */
import * as flatbuffers from "flatbuffers";
import { assert } from "./assert.ts";
import type { DenseActivation, DenseLayer } from "./dense_layer.ts";
import { TfliteModelError } from "./errors.ts";
import {
  ActivationCode,
  BufferField,
  BuiltinOperator,
  FullyConnectedOptionsField,
  ModelField,
  OperatorCodeField,
  OperatorField,
  SubGraphField,
  TENSOR_TYPE_FLOAT32,
  TensorField,
  TFLITE_FILE_IDENTIFIER,
} from "./tflite_schema.ts";
import { MAX_DENSE_WIDTH } from "./tflite_writer.ts";

/** Largest `.tflite` file the TS path parses (dense models here are a few KB). */
export const MAX_TFLITE_BYTES = 8 * 1024 * 1024;

/** Minimal table reader over a flatbuffer (no generated code needed). */
class Table {
  constructor(readonly bb: flatbuffers.ByteBuffer, readonly pos: number) {}
  private field(slot: number): number {
    return this.bb.__offset(this.pos, 4 + 2 * slot);
  }
  has(slot: number): boolean {
    return this.field(slot) !== 0;
  }
  int32(slot: number, fallback: number): number {
    const o = this.field(slot);
    return o ? this.bb.readInt32(this.pos + o) : fallback;
  }
  int8(slot: number, fallback: number): number {
    const o = this.field(slot);
    return o ? this.bb.readInt8(this.pos + o) : fallback;
  }
  uint8(slot: number, fallback: number): number {
    const o = this.field(slot);
    return o ? this.bb.readUint8(this.pos + o) : fallback;
  }
  table(slot: number): Table | null {
    const o = this.field(slot);
    return o ? new Table(this.bb, this.bb.__indirect(this.pos + o)) : null;
  }
  tables(slot: number): Table[] {
    const o = this.field(slot);
    if (!o) return [];
    const start = this.bb.__vector(this.pos + o);
    const n = this.bb.__vector_len(this.pos + o);
    const out: Table[] = [];
    for (let i = 0; i < n; i++) out.push(new Table(this.bb, this.bb.__indirect(start + 4 * i)));
    return out;
  }
  ints(slot: number): number[] {
    const o = this.field(slot);
    if (!o) return [];
    const start = this.bb.__vector(this.pos + o);
    const n = this.bb.__vector_len(this.pos + o);
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(this.bb.readInt32(start + 4 * i));
    return out;
  }
  bytes(slot: number): Uint8Array | null {
    const o = this.field(slot);
    if (!o) return null;
    const start = this.bb.__vector(this.pos + o);
    const n = this.bb.__vector_len(this.pos + o);
    return this.bb.bytes().subarray(start, start + n);
  }
}

function floatsOf(bytes: Uint8Array): Float32Array {
  // Copy: the flatbuffer's data may not be 4-byte aligned in our ArrayBuffer.
  const copy = bytes.slice();
  return new Float32Array(copy.buffer, 0, copy.length / 4);
}

function fusedActivation(code: number): DenseActivation {
  if (code === ActivationCode.NONE) return "none";
  if (code === ActivationCode.RELU) return "relu";
  if (code === ActivationCode.TANH) return "tanh";
  throw new TfliteModelError(`fused activation ${code} is not supported (NONE, RELU, TANH are)`);
}

/**
 * Parses the dense layers out of a `.tflite` file. Throws
 * {@link TfliteModelError} naming the first unsupported construct.
 */
export function readDenseTflite(bytes: Uint8Array): DenseLayer[] {
  if (bytes.length < 8 || bytes.length > MAX_TFLITE_BYTES) {
    throw new TfliteModelError(`file size ${bytes.length} B; expected 8..${MAX_TFLITE_BYTES} B`);
  }
  const bb = new flatbuffers.ByteBuffer(bytes);
  if (!bb.__has_identifier(TFLITE_FILE_IDENTIFIER)) {
    throw new TfliteModelError(`file identifier is not "${TFLITE_FILE_IDENTIFIER}"`);
  }
  const model = new Table(bb, bb.readInt32(bb.position()) + bb.position());
  const opcodes = model.tables(ModelField.operatorCodes).map((t) => {
    const code = t.int32(OperatorCodeField.builtinCode, 0);
    return Math.max(code, t.int8(OperatorCodeField.deprecatedBuiltinCode, 0));
  });
  const buffers = model.tables(ModelField.buffers);
  const subgraphs = model.tables(ModelField.subgraphs);
  const sg = subgraphs[0];
  if (!sg || subgraphs.length !== 1) {
    throw new TfliteModelError(`model has ${subgraphs.length} subgraphs; expected 1`);
  }
  const tensors = sg.tables(SubGraphField.tensors);
  const tensorData = (index: number): Float32Array | null => {
    const t = tensors[index];
    if (!t) throw new TfliteModelError(`tensor index ${index} out of range`);
    if (t.int8(TensorField.type, TENSOR_TYPE_FLOAT32) !== TENSOR_TYPE_FLOAT32) {
      throw new TfliteModelError(`tensor ${index} is not FLOAT32`);
    }
    const buf = buffers[t.int32(TensorField.buffer, 0)];
    const data = buf?.bytes(BufferField.data);
    return data && data.length > 0 ? floatsOf(data) : null;
  };
  const shapeOf = (index: number): number[] => tensors[index]?.ints(TensorField.shape) ?? [];

  const layers: DenseLayer[] = [];
  let current = sg.ints(SubGraphField.inputs)[0];
  if (current === undefined) throw new TfliteModelError("subgraph has no input");
  for (const op of sg.tables(SubGraphField.operators)) {
    const code = opcodes[op.int32(OperatorField.opcodeIndex, 0)];
    const inputs = op.ints(OperatorField.inputs);
    const output = op.ints(OperatorField.outputs)[0];
    if (inputs[0] !== current || output === undefined) {
      throw new TfliteModelError("operators are not a single chain from the input");
    }
    if (code === BuiltinOperator.FULLY_CONNECTED) {
      const weights = tensorData(inputs[1] ?? -1);
      const [outSize, inSize] = shapeOf(inputs[1] ?? -1);
      if (!weights || outSize === undefined || inSize === undefined) {
        throw new TfliteModelError("FULLY_CONNECTED without constant 2-D weights");
      }
      if (outSize > MAX_DENSE_WIDTH || inSize > MAX_DENSE_WIDTH) {
        throw new TfliteModelError(`layer ${outSize}×${inSize} exceeds ${MAX_DENSE_WIDTH}`);
      }
      const biasIndex = inputs[2] ?? -1;
      const bias = biasIndex >= 0 ? tensorData(biasIndex) : null;
      const options = op.table(OperatorField.builtinOptions);
      const act = options?.int8(FullyConnectedOptionsField.fusedActivationFunction, 0) ?? 0;
      if (weights.length !== outSize * inSize) {
        throw new TfliteModelError(
          `weights of ${weights.length} floats; expected ${outSize * inSize}`,
        );
      }
      layers.push({
        inputSize: inSize,
        outputSize: outSize,
        weights,
        bias: bias ?? new Float32Array(outSize),
        activation: fusedActivation(act),
      });
    } else if (
      code === BuiltinOperator.RELU || code === BuiltinOperator.TANH ||
      code === BuiltinOperator.LOGISTIC
    ) {
      const last = layers[layers.length - 1];
      if (!last || last.activation !== "none" || code === BuiltinOperator.LOGISTIC) {
        throw new TfliteModelError(`standalone activation op ${code} must follow a linear dense`);
      }
      layers[layers.length - 1] = {
        ...last,
        activation: code === BuiltinOperator.RELU ? "relu" : "tanh",
      };
    } else {
      throw new TfliteModelError(`operator code ${code} is not supported by the dense TS path`);
    }
    current = output;
  }
  if (layers.length === 0) throw new TfliteModelError("model has no FULLY_CONNECTED layer");
  return layers;
}

/** Runs a dense model with preallocated scratch buffers (no allocation per call). */
export class DenseModel {
  private readonly scratch: Float32Array[];

  constructor(readonly layers: readonly DenseLayer[]) {
    assert(layers.length > 0, "a dense model has layers");
    this.scratch = layers.map((l) => new Float32Array(l.outputSize));
  }

  /** Loads the dense layers of a `.tflite` file. */
  static fromTflite(bytes: Uint8Array): DenseModel {
    return new DenseModel(readDenseTflite(bytes));
  }

  /** Input width. */
  get inputSize(): number {
    return this.layers[0]!.inputSize;
  }

  /** Output width. */
  get outputSize(): number {
    return this.layers[this.layers.length - 1]!.outputSize;
  }

  /**
   * Evaluates the model. The returned array is owned by the model and
   * overwritten by the next call; copy it to keep it.
   */
  run(input: ArrayLike<number>): Float32Array {
    assert(input.length === this.inputSize, "input width matches the model");
    let x: ArrayLike<number> = input;
    for (let l = 0; l < this.layers.length; l++) {
      const layer = this.layers[l]!;
      const out = this.scratch[l]!;
      const w = layer.weights;
      const nIn = layer.inputSize;
      for (let o = 0; o < layer.outputSize; o++) {
        let s = layer.bias[o]!;
        const row = o * nIn;
        for (let i = 0; i < nIn; i++) s += w[row + i]! * x[i]!;
        if (layer.activation === "relu") s = s > 0 ? s : 0;
        else if (layer.activation === "tanh") s = Math.tanh(s);
        out[o] = s;
      }
      x = out;
    }
    return x as Float32Array;
  }
}
