/**
 * Writes a stack of dense layers as a TFLite flatbuffer (schema v3) that the
 * official runtime (LiteRT) loads: one subgraph, one FULLY_CONNECTED operator
 * per layer (ReLU fused, tanh as a following TANH operator), float32 tensors, and a
 * `serving_default` signature. Written with the `flatbuffers` package so no
 * Python toolchain is needed to ship a model.
 */
import * as flatbuffers from "flatbuffers";
import { assert } from "./assert.ts";
import type { DenseActivation, DenseLayer } from "./dense_layer.ts";
import { DetectInputError } from "./errors.ts";
import {
  ActivationCode,
  BufferField,
  BUILTIN_OPTIONS_FULLY_CONNECTED,
  BuiltinOperator,
  FullyConnectedOptionsField,
  ModelField,
  OperatorCodeField,
  OperatorField,
  SignatureDefField,
  SubGraphField,
  TENSOR_TYPE_FLOAT32,
  TensorField,
  TensorMapField,
  TFLITE_FILE_IDENTIFIER,
  TFLITE_SCHEMA_VERSION,
} from "./tflite_schema.ts";

/** Largest layer width accepted: keeps shipped models small (< 50 KB class). */
export const MAX_DENSE_WIDTH = 4096;
/** Most layers in one model; an autoencoder here has a handful. */
export const MAX_DENSE_LAYERS = 64;
/** Index of each operator in the model's operator-code table. */
const OPCODE_FULLY_CONNECTED = 0;
const OPCODE_TANH = 1;
/** TFLite aligns buffer data to 16 bytes (`force_align: 16` in the schema). */
const BUFFER_ALIGNMENT = 16;

/**
 * Fused activation of the FULLY_CONNECTED op. TFLite's kernel fuses only
 * NONE/RELU-family activations (it refuses a fused TANH at prepare time), so
 * tanh is written as a separate TANH operator after the dense op.
 */
function fusedActivationCode(activation: DenseActivation): number {
  return activation === "relu" ? ActivationCode.RELU : ActivationCode.NONE;
}

/** Checks one layer's shapes; throws {@link DetectInputError} naming the field. */
export function validateDenseLayers(layers: readonly DenseLayer[]): void {
  if (layers.length < 1 || layers.length > MAX_DENSE_LAYERS) {
    throw new DetectInputError("layers.length", layers.length, `1..${MAX_DENSE_LAYERS}`);
  }
  layers.forEach((layer, i) => {
    for (const size of [layer.inputSize, layer.outputSize]) {
      if (!Number.isInteger(size) || size < 1 || size > MAX_DENSE_WIDTH) {
        throw new DetectInputError(`layers[${i}] size`, size, `integer 1..${MAX_DENSE_WIDTH}`);
      }
    }
    if (layer.weights.length !== layer.inputSize * layer.outputSize) {
      throw new DetectInputError(
        `layers[${i}].weights.length`,
        layer.weights.length,
        `${layer.outputSize}×${layer.inputSize}`,
      );
    }
    if (layer.bias.length !== layer.outputSize) {
      throw new DetectInputError(`layers[${i}].bias.length`, layer.bias.length, layer.outputSize);
    }
    const prev = layers[i - 1];
    if (prev && prev.outputSize !== layer.inputSize) {
      throw new DetectInputError(
        `layers[${i}].inputSize`,
        layer.inputSize,
        `${prev.outputSize} (previous layer's output)`,
      );
    }
  });
}

function intVector(b: flatbuffers.Builder, values: readonly number[]): flatbuffers.Offset {
  b.startVector(4, values.length, 4);
  for (let i = values.length - 1; i >= 0; i--) b.addInt32(values[i]!);
  return b.endVector();
}

function offsetVector(
  b: flatbuffers.Builder,
  offsets: readonly flatbuffers.Offset[],
): flatbuffers.Offset {
  b.startVector(4, offsets.length, 4);
  for (let i = offsets.length - 1; i >= 0; i--) b.addOffset(offsets[i]!);
  return b.endVector();
}

function bufferTable(b: flatbuffers.Builder, data: Float32Array | null): flatbuffers.Offset {
  let dataOffset = 0;
  if (data) {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    b.startVector(1, bytes.length, BUFFER_ALIGNMENT);
    for (let i = bytes.length - 1; i >= 0; i--) b.addInt8(bytes[i]!);
    dataOffset = b.endVector();
  }
  b.startObject(3);
  if (dataOffset) b.addFieldOffset(BufferField.data, dataOffset, 0);
  return b.endObject();
}

function tensorTable(
  b: flatbuffers.Builder,
  name: string,
  shape: readonly number[],
  bufferIndex: number,
): flatbuffers.Offset {
  const nameOffset = b.createString(name);
  const shapeOffset = intVector(b, shape);
  b.startObject(10);
  b.addFieldOffset(TensorField.shape, shapeOffset, 0);
  b.addFieldInt8(TensorField.type, TENSOR_TYPE_FLOAT32, null);
  b.addFieldInt32(TensorField.buffer, bufferIndex, 0);
  b.addFieldOffset(TensorField.name, nameOffset, 0);
  return b.endObject();
}

function tensorMap(b: flatbuffers.Builder, name: string, index: number): flatbuffers.Offset {
  const nameOffset = b.createString(name);
  b.startObject(2);
  b.addFieldOffset(TensorMapField.name, nameOffset, 0);
  b.addFieldInt32(TensorMapField.tensorIndex, index, null);
  return b.endObject();
}

/**
 * Serialises `layers` as a `.tflite` model with input `[1, layers[0].inputSize]`
 * and output `[1, last.outputSize]`.
 */
export function writeDenseTflite(
  layers: readonly DenseLayer[],
  description = "twinmesh dense model",
): Uint8Array {
  validateDenseLayers(layers);
  const b = new flatbuffers.Builder(1024);

  // Buffers: 0 is the empty sentinel every TFLite model has; then, per
  // layer, weights and bias. Tensors: input, then per layer weights, bias,
  // output.
  const bufferOffsets: flatbuffers.Offset[] = [bufferTable(b, null)];
  const tensorOffsets: flatbuffers.Offset[] = [];
  const first = layers[0]!;
  tensorOffsets.push(tensorTable(b, "input", [1, first.inputSize], 0));
  const operatorOffsets: flatbuffers.Offset[] = [];
  let inputTensor = 0;
  layers.forEach((layer, i) => {
    const weightBuffer = bufferOffsets.length;
    bufferOffsets.push(bufferTable(b, layer.weights));
    const biasBuffer = bufferOffsets.length;
    bufferOffsets.push(bufferTable(b, layer.bias));
    const weightTensor = tensorOffsets.length;
    tensorOffsets.push(
      tensorTable(b, `dense_${i}/kernel`, [layer.outputSize, layer.inputSize], weightBuffer),
    );
    const biasTensor = tensorOffsets.length;
    tensorOffsets.push(tensorTable(b, `dense_${i}/bias`, [layer.outputSize], biasBuffer));
    const last = i === layers.length - 1;
    const separateTanh = layer.activation === "tanh";
    const denseOut = tensorOffsets.length;
    const denseName = last && !separateTanh ? "output" : `dense_${i}/linear`;
    tensorOffsets.push(tensorTable(b, denseName, [1, layer.outputSize], 0));

    b.startObject(5);
    b.addFieldInt8(
      FullyConnectedOptionsField.fusedActivationFunction,
      fusedActivationCode(layer.activation),
      0,
    );
    const options = b.endObject();
    const inputs = intVector(b, [inputTensor, weightTensor, biasTensor]);
    const outputs = intVector(b, [denseOut]);
    b.startObject(9);
    b.addFieldInt32(OperatorField.opcodeIndex, OPCODE_FULLY_CONNECTED, 0);
    b.addFieldOffset(OperatorField.inputs, inputs, 0);
    b.addFieldOffset(OperatorField.outputs, outputs, 0);
    b.addFieldInt8(OperatorField.builtinOptionsType, BUILTIN_OPTIONS_FULLY_CONNECTED, 0);
    b.addFieldOffset(OperatorField.builtinOptions, options, 0);
    operatorOffsets.push(b.endObject());
    inputTensor = denseOut;
    if (separateTanh) {
      const tanhOut = tensorOffsets.length;
      tensorOffsets.push(
        tensorTable(b, last ? "output" : `dense_${i}/tanh`, [1, layer.outputSize], 0),
      );
      const tIn = intVector(b, [denseOut]);
      const tOut = intVector(b, [tanhOut]);
      b.startObject(9);
      b.addFieldInt32(OperatorField.opcodeIndex, OPCODE_TANH, 0);
      b.addFieldOffset(OperatorField.inputs, tIn, 0);
      b.addFieldOffset(OperatorField.outputs, tOut, 0);
      operatorOffsets.push(b.endObject());
      inputTensor = tanhOut;
    }
  });
  const outputTensor = inputTensor;

  const subgraphName = b.createString("main");
  const tensors = offsetVector(b, tensorOffsets);
  const sgInputs = intVector(b, [0]);
  const sgOutputs = intVector(b, [outputTensor]);
  const operators = offsetVector(b, operatorOffsets);
  b.startObject(5);
  b.addFieldOffset(SubGraphField.tensors, tensors, 0);
  b.addFieldOffset(SubGraphField.inputs, sgInputs, 0);
  b.addFieldOffset(SubGraphField.outputs, sgOutputs, 0);
  b.addFieldOffset(SubGraphField.operators, operators, 0);
  b.addFieldOffset(SubGraphField.name, subgraphName, 0);
  const subgraph = b.endObject();

  // deprecated_builtin_code holds the code too for codes < 127, as old
  // readers (and the official converter) expect.
  const opcodeOffsets = [BuiltinOperator.FULLY_CONNECTED, BuiltinOperator.TANH].map((code) => {
    b.startObject(4);
    b.addFieldInt8(OperatorCodeField.deprecatedBuiltinCode, code, 0);
    b.addFieldInt32(OperatorCodeField.version, 1, null);
    b.addFieldInt32(OperatorCodeField.builtinCode, code, 0);
    return b.endObject();
  });

  const sigIn = tensorMap(b, "input", 0);
  const sigOut = tensorMap(b, "output", outputTensor);
  const sigInputs = offsetVector(b, [sigIn]);
  const sigOutputs = offsetVector(b, [sigOut]);
  const sigKey = b.createString("serving_default");
  b.startObject(5);
  b.addFieldOffset(SignatureDefField.inputs, sigInputs, 0);
  b.addFieldOffset(SignatureDefField.outputs, sigOutputs, 0);
  b.addFieldOffset(SignatureDefField.signatureKey, sigKey, 0);
  b.addFieldInt32(SignatureDefField.subgraphIndex, 0, null);
  const signature = b.endObject();

  const opcodes = offsetVector(b, opcodeOffsets);
  const subgraphs = offsetVector(b, [subgraph]);
  const buffers = offsetVector(b, bufferOffsets);
  const signatures = offsetVector(b, [signature]);
  const desc = b.createString(description);
  b.startObject(8);
  b.addFieldInt32(ModelField.version, TFLITE_SCHEMA_VERSION, null);
  b.addFieldOffset(ModelField.operatorCodes, opcodes, 0);
  b.addFieldOffset(ModelField.subgraphs, subgraphs, 0);
  b.addFieldOffset(ModelField.description, desc, 0);
  b.addFieldOffset(ModelField.buffers, buffers, 0);
  b.addFieldOffset(ModelField.signatureDefs, signatures, 0);
  const model = b.endObject();
  b.finish(model, TFLITE_FILE_IDENTIFIER);
  const out = b.asUint8Array().slice();
  assert(out.length > 8, "a finished flatbuffer has a header");
  return out;
}
