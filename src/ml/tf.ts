// Loads the native TensorFlow.js flavour a stage asked for. Stages import tf from here, never from
// '@tensorflow/tfjs-node' directly, so that `backend: gpu` swaps in '@tensorflow/tfjs-node-gpu'.

import { createRequire } from 'node:module';
import type { Flavour } from '../core/stage-kind.ts';
import { UnavailableError } from '../core/errors.ts';

export type Tf = typeof import('@tensorflow/tfjs-node');

const require = createRequire(import.meta.url);
const packageOf: Record<Flavour, string> = {
  cpu: '@tensorflow/tfjs-node',
  gpu: '@tensorflow/tfjs-node-gpu',
};

let loaded: { flavour: Flavour; tf: Tf } | undefined;

/** The tfjs module of the flavour, loaded once per process (TF logs only errors). */
export function loadTf(flavour: Flavour = 'cpu'): Tf {
  if (loaded) {
    if (loaded.flavour !== flavour) {
      throw new Error(`bug: tfjs flavour ${loaded.flavour} is already loaded; cannot switch to ${flavour}`);
    }
    return loaded.tf;
  }
  process.env['TF_CPP_MIN_LOG_LEVEL'] ??= '2';
  const name = packageOf[flavour];
  let tf: Tf;
  try {
    tf = require(name) as Tf;
  } catch (cause) {
    throw new UnavailableError(
      `cannot load ${name}: run \`npm run setup${flavour === 'gpu' ? ' -- --gpu' : ''}\` ` +
        `to install it with its native TensorFlow library`,
      { cause },
    );
  }
  loaded = { flavour, tf };
  return tf;
}

/**
 * The values of the tensors `compute` makes, read after its tf.tidy (which frees the rest).
 * Never return typed arrays from tf.tidy itself: it looks for tensors in its result by walking
 * every key of every object it returns, a Float32Array's elements included — for a batch of
 * activations that cost 5× the forward pass that made them.
 */
export function tidyValues(tf: Tf, compute: () => import('@tensorflow/tfjs-node').Tensor[]): Float32Array[] {
  const tensors = tf.tidy(compute);
  try {
    return tensors.map((t) => t.dataSync() as Float32Array);
  } finally {
    tf.dispose(tensors);
  }
}

type Tensor = import('@tensorflow/tfjs-node').Tensor;

interface NodeBackend {
  binding: { TF_ATTR_TYPE: number; TF_ATTR_BOOL: number; TF_FLOAT: number };
  executeSingleOutput(name: string, attrs: Array<{ name: string; type: number; value: unknown }>, inputs: Tensor[]): Tensor;
}

/**
 * Runs one TensorFlow op that tfjs does not expose (e.g. `Relu6Grad`, `BiasAddGrad`) on float32
 * inputs (and boolean attributes, e.g. `transpose_a`), through tfjs-node's binding — the same
 * path tfjs's own kernels take. The op is not
 * recorded for gradients: use it inside a tf.customGrad.
 */
export function rawOp(tf: Tf, name: string, inputs: Tensor[], flags: Record<string, boolean> = {}): Tensor {
  const backend = tf.backend() as unknown as NodeBackend;
  if (typeof backend.executeSingleOutput !== 'function') throw new Error(`bug: rawOp ${name}: the ${tf.getBackend()} backend runs no TensorFlow ops`);
  for (const input of inputs) if (input.dtype !== 'float32') throw new Error(`bug: rawOp ${name}: float32 inputs only, got ${input.dtype}`);
  const attrs = [
    { name: 'T', type: backend.binding.TF_ATTR_TYPE, value: backend.binding.TF_FLOAT as unknown },
    ...Object.entries(flags).map(([flag, value]) => ({ name: flag, type: backend.binding.TF_ATTR_BOOL, value: value as unknown })),
  ];
  return backend.executeSingleOutput(name, attrs, inputs);
}
