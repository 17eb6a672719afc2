/**
 * The few numbers of the TFLite flatbuffer schema (schema v3, file
 * identifier "TFL3") that the dense writer and reader need. Field numbers are
 * the positions of the fields in schema.fbs tables; a union occupies two
 * slots (its type byte, then its value).
 */

/** File identifier written at bytes 4..8 of every TFLite model. */
export const TFLITE_FILE_IDENTIFIER = "TFL3";
/** Schema version stored in `Model.version`. */
export const TFLITE_SCHEMA_VERSION = 3;

/** `BuiltinOperator` codes used here. */
export const BuiltinOperator = {
  FULLY_CONNECTED: 9,
  LOGISTIC: 14,
  RELU: 19,
  TANH: 28,
} as const;

/** `BuiltinOptions` union tag of `FullyConnectedOptions`. */
export const BUILTIN_OPTIONS_FULLY_CONNECTED = 8;

/** `ActivationFunctionType` codes. */
export const ActivationCode = { NONE: 0, RELU: 1, TANH: 4 } as const;

/** `TensorType.FLOAT32`. */
export const TENSOR_TYPE_FLOAT32 = 0;

/** Field slots of the tables used. */
export const ModelField = {
  version: 0,
  operatorCodes: 1,
  subgraphs: 2,
  description: 3,
  buffers: 4,
  signatureDefs: 7,
} as const;
export const OperatorCodeField = {
  deprecatedBuiltinCode: 0,
  customCode: 1,
  version: 2,
  builtinCode: 3,
} as const;
export const SubGraphField = { tensors: 0, inputs: 1, outputs: 2, operators: 3, name: 4 } as const;
export const TensorField = { shape: 0, type: 1, buffer: 2, name: 3 } as const;
export const OperatorField = {
  opcodeIndex: 0,
  inputs: 1,
  outputs: 2,
  builtinOptionsType: 3,
  builtinOptions: 4,
} as const;
export const FullyConnectedOptionsField = { fusedActivationFunction: 0 } as const;
export const BufferField = { data: 0 } as const;
export const SignatureDefField = {
  inputs: 0,
  outputs: 1,
  signatureKey: 2,
  subgraphIndex: 4,
} as const;
export const TensorMapField = { name: 0, tensorIndex: 1 } as const;
