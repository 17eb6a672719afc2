/** A fully connected layer as stored in a `.tflite` file. */

/** Activation applied after a dense layer. */
export type DenseActivation = "none" | "relu" | "tanh";

/**
 * One dense layer: `output = activation(weights · input + bias)`.
 * `weights` is row-major `[outputSize][inputSize]`, the layout TFLite's
 * FULLY_CONNECTED expects.
 */
export interface DenseLayer {
  readonly inputSize: number;
  readonly outputSize: number;
  readonly weights: Float32Array;
  readonly bias: Float32Array;
  readonly activation: DenseActivation;
}
