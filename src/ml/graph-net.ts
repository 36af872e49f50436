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

import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import type { FrozenNet, FrozenStep } from './frozen.ts';
import type { Tf } from './tf.ts';
import { UnavailableError, unreachable } from '../core/errors.ts';

/* eslint-disable @typescript-eslint/no-explicit-any -- the generated protobuf classes are untyped */
type Proto = any;

const require = createRequire(import.meta.url);

const DT_FLOAT = 1;
const DT_INT32 = 3;
/** The GraphDef version the nodes are written for (TensorFlow 2.x graphs; every op used is older). */
const PRODUCER = 1205;
const SIGNATURE = 'serving_default';
const INPUT_KEY = 'x';

/** The protobuf messages of tfjs-node's SavedModel reader (TensorFlow's field numbers). */
function messages(): Proto {
  return require('@tensorflow/tfjs-node/dist/proto/api_pb.js');
}

interface NodeSpec {
  name: string;
  op: string;
  inputs: string[];
  attrs: Record<string, Proto>;
}

/** The folded steps as GraphDef nodes: weights as constants, one output node per result. */
export function graphNodes(net: FrozenNet, m: Proto = messages()): { nodes: NodeSpec[]; outputs: string[] } {
  const attr = {
    type: (t: number) => { const a = new m.AttrValue(); a.setType(t); return a; },
    s: (text: string) => { const a = new m.AttrValue(); a.setS(new TextEncoder().encode(text)); return a; },
    b: (value: boolean) => { const a = new m.AttrValue(); a.setB(value); return a; },
    i: (value: number) => { const a = new m.AttrValue(); a.setI(value); return a; },
    ints: (values: number[]) => { const list = new m.AttrValue.ListValue(); list.setIList(values); const a = new m.AttrValue(); a.setList(list); return a; },
    shape: (dims: number[]) => { const a = new m.AttrValue(); a.setShape(shapeProto(m, dims)); return a; },
    tensor: (t: Proto) => { const a = new m.AttrValue(); a.setTensor(t); return a; },
  };
  const nodes: NodeSpec[] = [];
  const constant = (name: string, dtype: number, dims: number[], bytes: Uint8Array) => {
    const t = new m.Tensor();
    t.setDtype(dtype);
    t.setTensorShape(shapeProto(m, dims));
    t.setTensorContent(bytes);
    nodes.push({ name, op: 'Const', inputs: [], attrs: { dtype: attr.type(dtype), value: attr.tensor(t) } });
    return name;
  };
  const floats = (name: string, tensor: Tensor) => {
    const values = tensor.dataSync() as Float32Array;
    return constant(name, DT_FLOAT, tensor.shape, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  };
  const ints = (name: string, dims: number[], values: number[]) => {
    const data = Int32Array.from(values);
    return constant(name, DT_INT32, dims, new Uint8Array(data.buffer));
  };
  const T = attr.type(DT_FLOAT);
  const [h, w, c] = net.inputShape;
  nodes.push({ name: net.input, op: 'Placeholder', inputs: [], attrs: { dtype: T, shape: attr.shape([-1, h, w, c]) } });

  for (const step of net.steps) addStep(step);
  const outputs = net.results.map((result, i) => {
    const name = `pipe_output_${i}`;
    nodes.push({ name, op: 'Identity', inputs: [result], attrs: { T } });
    return name;
  });
  return { nodes, outputs };

  function addStep(step: FrozenStep): void {
    switch (step.op) {
      case 'conv':
      case 'depthwise': {
        const filter = floats(`${step.name}/pipe_kernel`, step.filter);
        const bias = floats(`${step.name}/pipe_bias`, step.bias);
        const convAttrs = {
          T,
          strides: attr.ints([1, step.strides, step.strides, 1]),
          padding: attr.s(step.pad === 'same' ? 'SAME' : 'VALID'),
          data_format: attr.s('NHWC'),
          dilations: attr.ints([1, 1, 1, 1]),
          explicit_paddings: attr.ints([]),
          ...(step.op === 'conv' ? { use_cudnn_on_gpu: attr.b(true) } : {}),
        };
        const conv = `${step.name}/pipe_conv`;
        nodes.push({ name: conv, op: step.op === 'conv' ? 'Conv2D' : 'DepthwiseConv2dNative', inputs: [step.input, filter], attrs: convAttrs });
        const biased = step.activation === 'relu6' ? `${step.name}/pipe_bias_add` : step.name;
        nodes.push({ name: biased, op: 'BiasAdd', inputs: [conv, bias], attrs: { T, data_format: attr.s('NHWC') } });
        if (step.activation === 'relu6') nodes.push({ name: step.name, op: 'Relu6', inputs: [biased], attrs: { T } });
        return;
      }
      case 'pad': {
        const [[top, bottom], [left, right]] = step.padding;
        const paddings = ints(`${step.name}/pipe_paddings`, [4, 2], [0, 0, top, bottom, left, right, 0, 0]);
        nodes.push({ name: step.name, op: 'Pad', inputs: [step.input, paddings], attrs: { T, Tpaddings: attr.type(DT_INT32) } });
        return;
      }
      case 'relu6':
        nodes.push({ name: step.name, op: 'Relu6', inputs: [step.input], attrs: { T } });
        return;
      case 'affine': {
        const scale = floats(`${step.name}/pipe_scale`, step.scale);
        const offset = floats(`${step.name}/pipe_offset`, step.offset);
        nodes.push({ name: `${step.name}/pipe_mul`, op: 'Mul', inputs: [step.input, scale], attrs: { T } });
        nodes.push({ name: step.name, op: 'AddV2', inputs: [`${step.name}/pipe_mul`, offset], attrs: { T } });
        return;
      }
      case 'add':
        nodes.push({ name: step.name, op: 'AddN', inputs: step.inputs, attrs: { T, N: attr.i(step.inputs.length) } });
        return;
      default:
        unreachable(step, 'step');
    }
  }
}

function shapeProto(m: Proto, dims: number[]): Proto {
  const shape = new m.TensorShape();
  for (const size of dims) {
    const dim = new m.TensorShape.Dim();
    dim.setSize(size);
    shape.addDim(dim);
  }
  return shape;
}

/** saved_model.pb for the folded network: one MetaGraph tagged `serve`, signature x → output_i. */
export function savedModelBytes(net: FrozenNet): Uint8Array {
  const m = messages();
  const { nodes, outputs } = graphNodes(net, m);
  const graph = new m.GraphDef();
  for (const spec of nodes) {
    const node = new m.NodeDef();
    node.setName(spec.name);
    node.setOp(spec.op);
    node.setInputList(spec.inputs);
    const attrs = node.getAttrMap();
    for (const [key, value] of Object.entries(spec.attrs)) attrs.set(key, value);
    graph.addNode(node);
  }
  const versions = new m.VersionDef();
  versions.setProducer(PRODUCER);
  graph.setVersions(versions);

  const info = (name: string, dims: number[]) => {
    const t = new m.TensorInfo();
    t.setName(`${name}:0`);
    t.setDtype(DT_FLOAT);
    t.setTensorShape(shapeProto(m, dims));
    return t;
  };
  const signature = new m.SignatureDef();
  const [h, w, c] = net.inputShape;
  signature.getInputsMap().set(INPUT_KEY, info(net.input, [-1, h, w, c]));
  outputs.forEach((name, i) => {
    const [oh, ow, oc] = net.outputShapes[i]!;
    signature.getOutputsMap().set(outputKey(i), info(name, [-1, oh, ow, oc]));
  });
  signature.setMethodName('tensorflow/serving/predict');

  const metaInfo = new m.MetaGraphDef.MetaInfoDef();
  metaInfo.addTags('serve');
  const meta = new m.MetaGraphDef();
  meta.setMetaInfoDef(metaInfo);
  meta.setGraphDef(graph);
  meta.getSignatureDefMap().set(SIGNATURE, signature);
  const model = new m.SavedModel();
  model.setSavedModelSchemaVersion(1);
  model.addMetaGraphs(meta);
  return model.serializeBinary() as Uint8Array;
}

/** Output i's key in the signature; zero-padded so that tfjs-node's map keeps the order. */
const outputKey = (i: number) => `output_${String(i).padStart(3, '0')}`;

/** Whether graph execution is wanted: on unless PIPE_GRAPH=0. */
export function graphWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  return env['PIPE_GRAPH'] !== '0';
}

/**
 * `net` as one TensorFlow graph in a session: the same outputs, shapes and steps, `apply` running
 * the session. Throws when the graph cannot be written or loaded (the caller keeps `net`). The
 * SavedModel goes to a temporary directory (about the weights' size) removed once loaded. Disposing
 * the result frees the session and `net`.
 */
export async function graphNet(tf: Tf, net: FrozenNet, tmpDir: string = os.tmpdir()): Promise<FrozenNet> {
  if (typeof (tf as { node?: { loadSavedModel?: unknown } }).node?.loadSavedModel !== 'function') {
    throw new UnavailableError(`the ${tf.getBackend()} backend runs no TensorFlow sessions`);
  }
  const dir = await fs.mkdtemp(path.join(tmpDir, 'pipe-graph-'));
  let model: Awaited<ReturnType<Tf['node']['loadSavedModel']>>;
  try {
    await fs.writeFile(path.join(dir, 'saved_model.pb'), savedModelBytes(net));
    model = await tf.node.loadSavedModel(dir, ['serve'], SIGNATURE);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  const keys = net.outputs.map((_, i) => outputKey(i));
  const graph: FrozenNet = {
    ...net,
    apply(x: Tensor4D): Tensor4D[] {
      const result = model.predict({ [INPUT_KEY]: x }) as Record<string, Tensor>;
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
      const worst = Math.max(...session.map((t, i) => tf.tidy(() => tf.max(tf.abs(tf.sub(t, eager[i]!))).dataSync()[0]!)));
      const scale = Math.max(1, ...eager.map((t) => tf.tidy(() => tf.max(tf.abs(t)).dataSync()[0]!)));
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
