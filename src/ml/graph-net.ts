// A folded network (src/ml/frozen.ts) run as one TensorFlow graph, in a session, instead of op by
// op from JavaScript.
//
// tfjs-node runs every op eagerly, and its fused ops are not fused: `tf.fused.conv2d` with a bias
// and ReLU6 is three kernels (Conv2D, Add, Relu6), each a pass over the activation in memory, and
// the wide expansion activations of MobileNetV2 (80×80×96 per image at 160 px) make those passes a
// large share of a forward pass. TensorFlow's graph mode rewrites Conv2D + BiasAdd + Relu6 into one
// fused kernel (Grappler's remapper; oneDNN's fused kernels when they are on) — the `tf.function`
// the benchmark compares with. tfjs-node reaches TensorFlow's graph runtime only through its
// SavedModel support (TF_LoadSessionFromSavedModel), so `graphNet` writes the folded steps as a
// SavedModel — a GraphDef whose weights are constants, serialised with the protobuf classes
// tfjs-node itself reads SavedModels with — loads it into a session and runs each batch through it.
//
// The maths are the folded network's: the same convolutions with the same folded kernels and
// biases; only the order of float operations inside the fused kernels differs (float noise,
// test/ml/graph-net.test.ts bounds it). Where the graph cannot be built or loaded (another
// backend, an op the runtime lacks: an UnavailableError, or TensorFlow's own error), the caller
// keeps the eager network (`fastest` logs why), and
// PIPE_GRAPH=0 turns it off.

import type { Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import type { FrozenNet, FrozenStep } from './frozen.ts';
import type { Tf } from './tf.ts';
import { DT_FLOAT, DT_INT32, GraphBuilder, graphWanted, loadGraph, maxDifference, type NodeSpec } from './tf-graph.ts';
import { UnavailableError, unreachable } from '../core/errors.ts';

const SIGNATURE = 'serving_default';
const INPUT_KEY = 'x';

export function graphNodes(net: FrozenNet, g: GraphBuilder = new GraphBuilder()): { nodes: NodeSpec[]; outputs: string[] } {
  const floats = (name: string, tensor: Tensor) => g.floats(tensor.dataSync() as Float32Array, tensor.shape, name);
  const T = g.T;
  const [h, w, c] = net.inputShape;
  g.placeholder(net.input, DT_FLOAT, [-1, h, w, c]);

  for (const step of net.steps) addStep(step);
  const outputs = net.results.map((result, i) => g.op('Identity', [result], { T }, `pipe_output_${i}`));
  return { nodes: g.nodes, outputs };

  function addStep(step: FrozenStep): void {
    switch (step.op) {
      case 'conv':
      case 'depthwise': {
        const filter = floats(`${step.name}/pipe_kernel`, step.filter);
        const bias = floats(`${step.name}/pipe_bias`, step.bias);
        const convAttrs = {
          T,
          strides: g.attr.ints([1, step.strides, step.strides, 1]),
          padding: g.attr.s(step.pad === 'same' ? 'SAME' : 'VALID'),
          data_format: g.attr.s('NHWC'),
          dilations: g.attr.ints([1, 1, 1, 1]),
          explicit_paddings: g.attr.ints([]),
          ...(step.op === 'conv' ? { use_cudnn_on_gpu: g.attr.b(true) } : {}),
        };
        const conv = g.op(step.op === 'conv' ? 'Conv2D' : 'DepthwiseConv2dNative', [step.input, filter], convAttrs, `${step.name}/pipe_conv`);
        const biased = step.activation === 'relu6' ? `${step.name}/pipe_bias_add` : step.name;
        g.op('BiasAdd', [conv, bias], { T, data_format: g.attr.s('NHWC') }, biased);
        if (step.activation === 'relu6') g.op('Relu6', [biased], { T }, step.name);
        return;
      }
      case 'pad': {
        const [[top, bottom], [left, right]] = step.padding;
        const paddings = g.ints([0, 0, top, bottom, left, right, 0, 0], [4, 2], `${step.name}/pipe_paddings`);
        g.op('Pad', [step.input, paddings], { T, Tpaddings: g.attr.type(DT_INT32) }, step.name);
        return;
      }
      case 'relu6':
        g.op('Relu6', [step.input], { T }, step.name);
        return;
      case 'affine': {
        const scale = floats(`${step.name}/pipe_scale`, step.scale);
        const offset = floats(`${step.name}/pipe_offset`, step.offset);
        g.op('Mul', [step.input, scale], { T }, `${step.name}/pipe_mul`);
        g.op('AddV2', [`${step.name}/pipe_mul`, offset], { T }, step.name);
        return;
      }
      case 'add':
        g.op('AddN', step.inputs, { T, N: g.attr.i(step.inputs.length) }, step.name);
        return;
      default:
        unreachable(step, 'step');
    }
  }
}

/** saved_model.pb for the folded network: one MetaGraph tagged `serve`, signature x → output_i. */
export function savedModelBytes(net: FrozenNet): Uint8Array {
  const g = new GraphBuilder();
  const { outputs } = graphNodes(net, g);
  const [h, w, c] = net.inputShape;
  return g.savedModel({
    [SIGNATURE]: {
      inputs: { [INPUT_KEY]: { node: net.input, dtype: DT_FLOAT, dims: [-1, h, w, c] } },
      outputs: Object.fromEntries(outputs.map((node, i) => {
        const [oh, ow, oc] = net.outputShapes[i]!;
        return [outputKey(i), { node, dtype: DT_FLOAT, dims: [-1, oh, ow, oc] }];
      })),
    },
  });
}

/** Output i's key in the signature; zero-padded so that tfjs-node's map keeps the order. */
const outputKey = (i: number) => `output_${String(i).padStart(3, '0')}`;

/**
 * `net` as one TensorFlow graph in a session: the same outputs, shapes and steps, `apply` running
 * the session. Throws when the graph cannot be written or loaded (the caller keeps `net`). The
 * SavedModel goes to a temporary directory (about the weights' size) removed once loaded. Disposing
 * the result frees the session and `net`.
 */
export async function graphNet(tf: Tf, net: FrozenNet, tmpDir?: string): Promise<FrozenNet> {
  const [model] = await loadGraph(tf, savedModelBytes(net), [SIGNATURE], tmpDir);
  if (!model) throw new Error('bug: loadGraph returned no signature');
  const keys = net.outputs.map((_, i) => outputKey(i));
  const graph: FrozenNet = {
    ...net,
    apply(x: Tensor4D): Tensor4D[] {
      const result = model.run({ [INPUT_KEY]: x });
      return keys.map((key) => result[key] as Tensor4D);
    },
    dispose() {
      model.dispose();
      net.dispose();
    },
  };
  // One batch through both, so that a graph the runtime runs differently fails here, not later.
  const probe = tf.zeros([1, ...net.inputShape]) as Tensor4D;
  try {
    const eager = net.apply(probe);
    const session = graph.apply(probe);
    try {
      session.forEach((t, i) => {
        if (t.shape.join() !== eager[i]!.shape.join()) throw new UnavailableError(`output ${i}: shape ${t.shape.join('×')}, expected ${eager[i]!.shape.join('×')}`);
      });
      const differences = session.map((t, i) => maxDifference(tf, t, eager[i]!));
      const worst = Math.max(...differences.map((d) => d.diff));
      const scale = Math.max(1, ...differences.map((d) => d.scale));
      if (!(worst <= 1e-3 * scale)) throw new UnavailableError(`the graph's outputs differ from the eager ones by ${worst} (scale ${scale})`);
    } finally {
      tf.dispose([...eager, ...session]);
    }
  } catch (error) {
    model.dispose();
    throw error;
  } finally {
    probe.dispose();
  }
  return graph;
}

/**
 * `net` in a session when it can be (and PIPE_GRAPH is not 0), else `net` itself; `log` says which
 * and, when the graph could not be used, why.
 */
export async function fastest(tf: Tf, net: FrozenNet, log: (line: string) => void, tmpDir?: string): Promise<FrozenNet> {
  if (!graphWanted()) {
    log('frozen layers: eager ops (PIPE_GRAPH=0)');
    return net;
  }
  try {
    const graph = await graphNet(tf, net, tmpDir);
    log(`frozen layers: one TensorFlow graph of ${net.steps.length} folded steps, in a session`);
    return graph;
  } catch (error) {
    log(`frozen layers: eager ops (the graph could not be used: ${(error as Error).message})`);
    return net;
  }
}
