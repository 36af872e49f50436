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
  // oneDNN's kernels for convolutions, matrix products and their gradients, also in eager mode.
  // tfjs-node's libtensorflow leaves them off on this project's 2-core AVX2 machine unless asked
  // (it prints "oneDNN custom operations are on" only with the variable set). With them, in
  // alternating runs there (2026-12-06): the frozen base 182–186 against 115–123 images/s, the
  // fine-tuning step 177–190 against 155–168. TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own kernels.
  process.env['TF_ENABLE_ONEDNN_OPTS'] ??= '1';
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
  binding: { TF_ATTR_TYPE: number; TF_ATTR_BOOL: number; TF_ATTR_SHAPE: number; TF_ATTR_STRING: number; TF_FLOAT: number };
  executeSingleOutput(name: string, attrs: Array<{ name: string; type: number; value: unknown }>, inputs: Tensor[]): Tensor;
  executeMultipleOutputs(name: string, attrs: Array<{ name: string; type: number; value: unknown }>, inputs: Tensor[], numOutputs: number): Tensor[];
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

/** TensorFlow's name for an anonymous resource: the variable lives as long as its handle. */
const ANONYMOUS_RESOURCE = 'cd2c89b7-88b7-44c8-ad83-06c2a9158347';

/**
 * TensorFlow resource variables and the fused training kernels that update them in place, through
 * tfjs-node's binding (which passes a resource handle along as an opaque tensor). One
 * `ResourceApplyRMSProp` is one pass over a variable where tfjs's ops take nine, each a kernel
 * launch and a trip through memory. Undefined on a backend that runs no TensorFlow ops.
 */
export interface ResourceOps {
  /** A new variable holding a copy of `initial` (float32). The handle is a tensor: dispose it to free the variable. */
  variable(initial: Tensor): Tensor;
  assign(handle: Tensor, value: Tensor): void;
  /** The variable's value now, as a tensor of its own (later updates do not change it). */
  read(handle: Tensor): Tensor;
  /**
   * TensorFlow's ApplyRMSProp: ms += (g² − ms)(1 − ρ); mom = momentum·mom + lr·g / sqrt(ms + ε);
   * var −= mom. The scalars are float32 tensors.
   */
  applyRmsprop(variable: Tensor, ms: Tensor, mom: Tensor, lr: Tensor, rho: Tensor, momentum: Tensor, epsilon: Tensor, grad: Tensor): void;
}

export function resourceOps(tf: Tf): ResourceOps | undefined {
  const backend = tf.backend() as unknown as Partial<NodeBackend>;
  const binding = backend.binding;
  if (!binding || typeof backend.executeSingleOutput !== 'function' || typeof backend.executeMultipleOutputs !== 'function') return undefined;
  const node = backend as NodeBackend;
  const float = (name: string) => ({ name, type: binding.TF_ATTR_TYPE, value: binding.TF_FLOAT as unknown });
  const ops: ResourceOps = {
    variable(initial) {
      const handle = node.executeSingleOutput('VarHandleOp', [float('dtype'), { name: 'shape', type: binding.TF_ATTR_SHAPE, value: initial.shape }, { name: 'shared_name', type: binding.TF_ATTR_STRING, value: ANONYMOUS_RESOURCE }], []);
      ops.assign(handle, initial);
      return handle;
    },
    assign(handle, value) {
      if (value.dtype !== 'float32') throw new Error(`bug: resource variables hold float32, got ${value.dtype}`);
      // A copy in TensorFlow's memory: AssignVariableOp may adopt its input's buffer, and a tensor
      // made from a JS array shares V8's memory, which the fused updates would then write into and
      // TensorFlow free outside V8's control (measured: heap corruption).
      const copy = node.executeSingleOutput('DeepCopy', [float('T')], [value]);
      try {
        node.executeMultipleOutputs('AssignVariableOp', [float('dtype')], [handle, copy], 0);
      } finally {
        copy.dispose();
      }
    },
    read: (handle) => node.executeSingleOutput('ReadVariableOp', [float('dtype')], [handle]),
    applyRmsprop(variable, ms, mom, lr, rho, momentum, epsilon, grad) {
      node.executeMultipleOutputs('ResourceApplyRMSProp', [float('T')], [variable, ms, mom, lr, rho, momentum, epsilon, grad], 0);
    },
  };
  return ops;
}
