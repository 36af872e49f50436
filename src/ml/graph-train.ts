// The fine-tuning step as one TensorFlow graph: forward and backward of the top of the base and
// the head, run in a session (src/ml/tf-graph.ts) instead of op by op from JavaScript.
//
// Eagerly (train.ts `inferenceForward` under `tf.variableGrads`) every layer's forward and
// backward are several kernels with JavaScript between them, and tfjs-node cannot call
// TensorFlow's fused kernels. Grappler fuses Conv2D + BiasAdd + Relu6 in a graph, runs independent
// ops side by side and leaves no JavaScript between ops. tfjs-node builds no gradient graphs, so the
// backward pass is written here, op by op, with the kernels TensorFlow's own gradients use:
//
//   forward, BatchNormalization in inference mode folded into the convolution (as train.ts does):
//     s = γ·rsqrt(σ² + ε), t = β − μ·s (+ b·s with a conv bias), K' = K·s (per output channel;
//     per input channel for depthwise kernels), a = conv(x, K') + t, y = relu6(a) or a;
//   backward from dy:
//     da = Relu6Grad(dy, y) (or dy), dt = BiasAddGrad(da),
//     dK' = Conv2DBackpropFilter / DepthwiseConv2dNativeBackpropFilter(x, da),
//     dK = dK'·s, dγ = (Σ dK'·K − dt·μ (+ dt·b))·rsqrt(σ² + ε), dβ = dt, db = dt·s,
//     dx = Conv2DBackpropInput / DepthwiseConv2dNativeBackpropInput(K', da);
//   residual adds pass dy to both inputs, ZeroPadding2D's gradient is a slice, global average
//   pooling's is dy / (h·w) everywhere, dropout's the same mask; the loss gradient is
//   (sigmoid(x) − z) / n (binary) or (softmax(x) − onehot) / n (multiclass).
//
// The variables stay tfjs variables: each step feeds their current values to the session and
// takes back the loss, the logits and one gradient per trained variable, and the optimizer
// (train.ts, Keras's update rules) applies them as before. So checkpoints, the optimizer's state and
// the saved model are those of the eager step; the values agree with it to float noise
// (test/ml/graph-train.test.ts compares the gradients), and `graphTrainer` checks that on a probe
// batch before the stage uses it.

import type * as tfTypes from '@tensorflow/tfjs-node';
import { dropoutMask, forwardSteps, lossFor, type ForwardStep, type Task } from './train.ts';
import { DT_FLOAT, DT_INT32, GraphBuilder, graphWanted, loadGraph, maxDifference, type SignatureSpec } from './tf-graph.ts';
import type { Tf } from './tf.ts';
import { UnavailableError, unreachable } from '../core/errors.ts';

type Tensor = tfTypes.Tensor;
type Scalar = tfTypes.Scalar;
type Variable = tfTypes.Variable;
type LayerObject = tfTypes.LayersModel['layers'][number];

/** The head the step trains on top of the base: global average pooling, dropout, dense. */
export interface GraphHead {
  kernel: Variable;
  bias: Variable;
  dropout: number;
}

export interface GraphTrainer {
  /**
   * The loss, the logits and the gradient of every trained variable (in the order given to
   * `graphTrainer`) for one training batch. `keep` is dropout's 0/1 mask over the pooled features
   * (absent when the rate is 0). The caller disposes the results.
   */
  gradients(x: Tensor, labels: Tensor, keep?: Tensor): { loss: Scalar; logits: Tensor; grads: Tensor[] };
  /** Logits in inference mode (no dropout). */
  logits(x: Tensor): Tensor;
  dispose(): void;
}

const TRAIN = 'train';
const INFER = 'infer';

/**
 * The training step of `top` (a model from a boundary activation to the base's output, its
 * BatchNormalization in inference mode) and `head`, as a graph in a session. `vars` are the
 * variables to differentiate (trainable weights of the top, then the head's): gradients come back
 * in that order. Throws an UnavailableError for a layer the graph has no form for, or where the
 * backend runs no sessions.
 */
export async function graphTrainer(
  tf: Tf,
  top: tfTypes.LayersModel,
  head: GraphHead,
  task: Task,
  vars: readonly Variable[],
  options: TrainGraphOptions = {},
  tmpDir?: string,
): Promise<GraphTrainer> {
  const built = buildTrainGraph(top, head, task, vars, options);
  const [train, infer] = await loadGraph(tf, built.bytes, [TRAIN, INFER], tmpDir);
  if (!train || !infer) throw new Error('bug: loadGraph returned fewer signatures than asked');
  const weights = () => Object.fromEntries(built.weights.map(({ key, variable }) => [key, variable as Tensor]));
  return {
    gradients(x, labels, keep) {
      const feed: Record<string, Tensor> = { ...weights(), x, labels };
      if (built.dropout) {
        if (!keep) throw new Error('bug: graphTrainer: dropout needs its mask');
        feed['keep'] = keep;
      }
      const out = train.run(feed);
      return { loss: out['loss'] as Scalar, logits: out['logits']!, grads: built.gradKeys.map((key) => out[key]!) };
    },
    logits(x) {
      return infer.run({ ...weights(), x })['logits']!;
    },
    dispose() {
      train.dispose();
      infer.dispose();
    },
  };
}

/**
 * The graph trainer when it can be used (and PIPE_GRAPH is not 0), else undefined: the caller
 * keeps the eager step. Before it is used, one probe batch goes through both, in training mode
 * with the same dropout mask: the loss, the logits and every gradient must agree to float noise.
 * `log` says which step runs and, when the graph could not be used, why.
 */
export async function fastestTrainer(
  tf: Tf,
  spec: {
    top: tfTypes.LayersModel;
    head: GraphHead;
    task: Task;
    vars: readonly Variable[];
    /** The eager logits (train.ts's forward): what the graph must agree with. */
    eagerLogits: (x: Tensor, training: boolean, dropoutSeed: number) => Tensor;
    probe: { x: Tensor; labels: Tensor };
  },
  log: (line: string) => void,
  tmpDir?: string,
): Promise<GraphTrainer | undefined> {
  if (!graphWanted()) {
    log('fine-tuning step: eager ops (PIPE_GRAPH=0)');
    return undefined;
  }
  let trainer: GraphTrainer | undefined;
  try {
    const started = performance.now();
    trainer = await graphTrainer(tf, spec.top, spec.head, spec.task, spec.vars, {}, tmpDir);
    const worst = probeDifference(tf, trainer, spec);
    log(
      `fine-tuning step: one TensorFlow graph (forward and backward), in a session; built in ${((performance.now() - started) / 1000).toFixed(1)} s, ` +
        `probe batch within ${worst.toExponential(1)} of the eager step`,
    );
    return trainer;
  } catch (error) {
    trainer?.dispose();
    log(`fine-tuning step: eager ops (the graph could not be used: ${(error as Error).message})`);
    return undefined;
  }
}

/** The largest difference, relative to the values' scale, between the graph's and the eager step's results. */
function probeDifference(tf: Tf, trainer: GraphTrainer, spec: Parameters<typeof fastestTrainer>[1]): number {
  const { x, labels } = spec.probe;
  const seed = 1;
  const inputDim = spec.head.kernel.shape[0]!;
  return tf.tidy(() => {
    const keep = spec.head.dropout > 0 ? dropoutMask(tf, [x.shape[0]!, inputDim], spec.head.dropout, seed) : undefined;
    const got = trainer.gradients(x, labels, keep);
    let logits: Tensor | undefined;
    const want = tf.variableGrads(() => {
      const out = spec.eagerLogits(x, true, seed);
      logits = tf.keep(out);
      return lossFor(tf, spec.task, labels, out);
    }, spec.vars as Variable[]);
    const pairs: Array<[string, Tensor, Tensor]> = [
      ['the loss', got.loss, want.value],
      ['the logits', got.logits, logits!],
      ...spec.vars.map((v, i) => [`the gradient of ${v.name}`, got.grads[i]!, want.grads[v.name]!] as [string, Tensor, Tensor]),
    ];
    let worst = 0;
    for (const [what, a, b] of pairs) {
      if (a.shape.join() !== b.shape.join()) throw new UnavailableError(`${what}: shape ${a.shape.join('×')}, expected ${b.shape.join('×')}`);
      const { diff, scale } = maxDifference(tf, a, b);
      const relative = diff / Math.max(scale, 1e-12);
      if (!(relative <= 1e-2) && !(diff <= 1e-9)) throw new UnavailableError(`${what} differs from the eager step's by ${diff} (values up to ${scale})`);
      if (diff > 1e-9) worst = Math.max(worst, relative);
    }
    return worst;
  });
}

export interface TrainGraphOptions {
  /**
   * 1×1 convolutions with stride 1 as the matrix products they are ('matmul', the default: the
   * gradients are two MatMuls) or as Conv2D with its backprop kernels ('conv').
   */
  pointwise?: 'matmul' | 'conv';
}

/** The graph's SavedModel bytes and how to feed it: exported for the tests. */
export function buildTrainGraph(
  top: tfTypes.LayersModel,
  head: GraphHead,
  task: Task,
  vars: readonly Variable[],
  options: TrainGraphOptions = {},
): { bytes: Uint8Array; weights: { key: string; variable: Variable }[]; gradKeys: string[]; dropout: boolean; ops: Set<string> } {
  if (top.inputs.length !== 1 || top.outputs.length !== 1) throw new Error(`bug: graphTrainer: ${top.name} must have one input and one output`);
  const g = new GraphBuilder();
  const T = g.T;
  const input = top.inputs[0]!;
  const output = top.outputs[0]!;
  const [, h, w, c] = input.shape as number[];
  const trained = new Set<Variable>(vars);

  // Every variable the graph reads is an input, fed its current value at each run.
  const weights: { key: string; variable: Variable }[] = [];
  const weightNodes = new Map<Variable, string>();
  const weight = (variable: Variable): string => {
    let node = weightNodes.get(variable);
    if (!node) {
      const key = `w_${String(weights.length).padStart(4, '0')}`;
      node = g.placeholder(`pipe/${key}`, DT_FLOAT, variable.shape);
      weights.push({ key, variable });
      weightNodes.set(variable, node);
    }
    return node;
  };
  const read = (layer: LayerObject, i: number) => layer.weights[i]!.read() as Variable;

  const x = g.placeholder('pipe/x', DT_FLOAT, [-1, h!, w!, c!]);
  const values = new Map<number, string>([[input.id, x]]);
  /** Whether a value depends on a trained variable (so its gradient is needed). */
  const needsGrad = new Set<string>();
  const steps = forwardSteps(input, output, false);
  const backward: Array<(dy: string) => Array<[string, string]>> = [];
  const stepOutputs: string[] = [];

  const shape = (node: string) => g.op('Shape', [node], { T, out_type: g.attr.type(DT_INT32) });
  const sum = (node: string, axes: number[], keep = false) => g.op('Sum', [node, g.ints(axes)], { T, Tidx: g.attr.type(DT_INT32), keep_dims: g.attr.b(keep) });
  const mul = (a: string, b: string) => g.op('Mul', [a, b], { T });
  const sub = (a: string, b: string) => g.op('Sub', [a, b], { T });
  const add = (a: string, b: string) => g.op('AddV2', [a, b], { T });
  const reshape = (node: string, dims: number[]) => g.op('Reshape', [node, g.ints(dims)], { T, Tshape: g.attr.type(DT_INT32) });

  for (const step of steps) {
    const { out, grad } = forwardStep(step);
    values.set(step.output, out);
    stepOutputs.push(out);
    backward.push(grad);
  }

  // The head: pooling, dropout (training only), dense.
  const features = values.get(output.id)!;
  const [, oh, ow, oc] = output.shape as number[];
  const pooled = g.op('Mean', [features, g.ints([1, 2])], { T, Tidx: g.attr.type(DT_INT32), keep_dims: g.attr.b(false) });
  const kernel = weight(head.kernel);
  const bias = weight(head.bias);
  const units = head.kernel.shape[1]!;
  const dense = (v: string) => add(g.op('MatMul', [v, kernel], { T, transpose_a: g.attr.b(false), transpose_b: g.attr.b(false) }), bias);
  const inferLogits = g.op('Identity', [dense(pooled)], { T }, 'pipe/infer_logits');

  const dropout = head.dropout > 0;
  const keep = dropout ? g.placeholder('pipe/keep', DT_FLOAT, [-1, oc!]) : undefined;
  const rateScale = dropout ? g.scalar(1 - head.dropout) : undefined;
  // Keras's dropout as train.ts applies it: x·keep / (1 − rate).
  const dropped = keep ? g.op('RealDiv', [mul(pooled, keep), rateScale!], { T }) : pooled;
  const logits = g.op('Identity', [dense(dropped)], { T }, 'pipe/logits');

  // The loss (mean over the batch) and its gradient with respect to the logits.
  const labels = g.placeholder('pipe/labels', task.kind === 'binary' ? DT_FLOAT : DT_INT32, [-1]);
  const count = g.op('Cast', [g.op('Size', [labels], { T: g.attr.type(task.kind === 'binary' ? DT_FLOAT : DT_INT32), out_type: g.attr.type(DT_INT32) })], {
    SrcT: g.attr.type(DT_INT32), DstT: g.attr.type(DT_FLOAT), Truncate: g.attr.b(false),
  });
  let loss: string;
  let dLogits: string;
  if (task.kind === 'binary') {
    // max(x, 0) − x·z + log(1 + exp(−|x|)), as train.ts's binaryCrossentropyFromLogits.
    const flat = reshape(logits, [-1]);
    const perExample = add(
      sub(g.op('Relu', [flat], { T }), mul(flat, labels)),
      g.op('Log1p', [g.op('Exp', [g.op('Neg', [g.op('Abs', [flat], { T })], { T })], { T })], { T }),
    );
    loss = g.op('Mean', [perExample, g.ints([0])], { T, Tidx: g.attr.type(DT_INT32), keep_dims: g.attr.b(false) }, 'pipe/loss');
    dLogits = reshape(g.op('RealDiv', [sub(g.op('Sigmoid', [flat], { T }), labels), count], { T }), [-1, 1]);
  } else {
    const oneHot = g.op('OneHot', [labels, g.ints([task.classes], []), g.scalar(1), g.scalar(0)], { T, TI: g.attr.type(DT_INT32), axis: g.attr.i(-1) });
    const picked = sum(mul(g.op('LogSoftmax', [logits], { T }), oneHot), [1]);
    loss = g.op('Mean', [g.op('Neg', [picked], { T }), g.ints([0])], { T, Tidx: g.attr.type(DT_INT32), keep_dims: g.attr.b(false) }, 'pipe/loss');
    dLogits = g.op('RealDiv', [sub(g.op('Softmax', [logits], { T }), oneHot), count], { T });
  }

  // Backward through the head.
  const grads = new Map<string, string[]>();
  const addGrad = (node: string, grad: string) => {
    const list = grads.get(node) ?? [];
    list.push(grad);
    grads.set(node, list);
  };
  const gradOf = (node: string): string | undefined => {
    const list = grads.get(node);
    if (!list || list.length === 0) return undefined;
    return list.length === 1 ? list[0]! : g.op('AddN', list, { T, N: g.attr.i(list.length) });
  };
  addGrad(kernel, g.op('MatMul', [dropped, dLogits], { T, transpose_a: g.attr.b(true), transpose_b: g.attr.b(false) }));
  addGrad(bias, sum(dLogits, [0]));
  if (needsGrad.has(features)) {
    const dDropped = g.op('MatMul', [dLogits, kernel], { T, transpose_a: g.attr.b(false), transpose_b: g.attr.b(true) });
    const dPooled = keep ? g.op('RealDiv', [mul(dDropped, keep), rateScale!], { T }) : dDropped;
    const spread = g.op('RealDiv', [reshape(dPooled, [-1, 1, 1, oc!]), g.scalar(oh! * ow!)], { T });
    addGrad(features, g.op('BroadcastTo', [spread, shape(features)], { T, Tidx: g.attr.type(DT_INT32) }));
  }
  for (let i = steps.length - 1; i >= 0; i--) {
    const out = stepOutputs[i]!;
    if (!needsGrad.has(out)) continue;
    const dy = gradOf(out);
    if (!dy) continue;
    for (const [node, grad] of backward[i]!(dy)) addGrad(node, grad);
  }

  const gradKeys: string[] = [];
  const outputs: SignatureSpec['outputs'] = {
    loss: { node: loss, dtype: DT_FLOAT, dims: [] },
    logits: { node: logits, dtype: DT_FLOAT, dims: [-1, units] },
  };
  vars.forEach((variable, i) => {
    const node = weightNodes.get(variable);
    const grad = node ? gradOf(node) : undefined;
    if (!grad) throw new UnavailableError(`variable ${variable.name} (${variable.shape.join('×')}) is not reached by the graph's gradients`);
    const key = `g_${String(i).padStart(4, '0')}`;
    gradKeys.push(key);
    outputs[key] = { node: g.op('Identity', [grad], { T }), dtype: DT_FLOAT, dims: variable.shape };
  });

  const weightInputs = Object.fromEntries(weights.map(({ key, variable }) => [key, { node: weightNodes.get(variable)!, dtype: DT_FLOAT, dims: variable.shape }]));
  const xInput = { node: x, dtype: DT_FLOAT, dims: [-1, h!, w!, c!] };
  const bytes = g.savedModel({
    [TRAIN]: {
      inputs: {
        ...weightInputs,
        x: xInput,
        labels: { node: labels, dtype: task.kind === 'binary' ? DT_FLOAT : DT_INT32, dims: [-1] },
        ...(keep ? { keep: { node: keep, dtype: DT_FLOAT, dims: [-1, oc!] } } : {}),
      },
      outputs,
    },
    [INFER]: { inputs: { ...weightInputs, x: xInput }, outputs: { logits: { node: inferLogits, dtype: DT_FLOAT, dims: [-1, units] } } },
  });
  return { bytes, weights, gradKeys, dropout, ops: new Set(g.nodes.map((n) => n.op)) };

  /** A forward step's nodes, and its backward: from the output's gradient, gradients of inputs and variables. */
  function forwardStep(step: ForwardStep): { out: string; grad: (dy: string) => Array<[string, string]> } {
    switch (step.op) {
      case 'conv':
        return convStep(step);
      case 'batchnorm': {
        const xIn = values.get(step.input)!;
        const bn = batchNorm(step.layer);
        const out = add(mul(xIn, bn.s), bn.t);
        if (needsGrad.has(xIn) || bn.trains) needsGrad.add(out);
        return {
          out,
          grad: (dy) => {
            const result: Array<[string, string]> = [];
            if (needsGrad.has(xIn)) result.push([xIn, mul(dy, bn.s)]);
            if (bn.trainsBeta) result.push([bn.beta, sum(dy, [0, 1, 2])]);
            if (bn.trainsGamma) result.push([bn.gamma, mul(sum(mul(dy, sub(xIn, bn.mean)), [0, 1, 2]), bn.inv)]);
            return result;
          },
        };
      }
      case 'relu6': {
        const xIn = values.get(step.input)!;
        const out = g.op('Relu6', [xIn], { T });
        if (needsGrad.has(xIn)) needsGrad.add(out);
        return { out, grad: (dy) => [[xIn, g.op('Relu6Grad', [dy, out], { T })]] };
      }
      case 'layer': {
        const inputs = step.inputs.map((id) => values.get(id)!);
        const className = step.layer.getClassName();
        if (className === 'Add') {
          const out = g.op('AddN', inputs, { T, N: g.attr.i(inputs.length) });
          if (inputs.some((node) => needsGrad.has(node))) needsGrad.add(out);
          return { out, grad: (dy) => inputs.filter((node) => needsGrad.has(node)).map((node) => [node, dy] as [string, string]) };
        }
        if (className === 'ZeroPadding2D') {
          const [[top, bottom], [left, right]] = (step.layer.getConfig() as { padding: [[number, number], [number, number]] }).padding;
          const [, oh, ow] = step.layer.outputShape as number[];
          const [ih, iw] = [oh! - top - bottom, ow! - left - right];
          const xIn = inputs[0]!;
          const out = g.op('Pad', [xIn, g.ints([0, 0, top, bottom, left, right, 0, 0], [4, 2])], { T, Tpaddings: g.attr.type(DT_INT32) });
          if (needsGrad.has(xIn)) needsGrad.add(out);
          return {
            out,
            grad: (dy) => [[xIn, g.op('Slice', [dy, g.ints([0, top, left, 0]), g.ints([-1, ih, iw, -1])], { T, Index: g.attr.type(DT_INT32) })]],
          };
        }
        throw new UnavailableError(`layer ${step.layer.name} (${className}) has no graph form`);
      }
      default:
        return unreachable(step, 'step');
    }
  }

  /** BatchNormalization in inference mode: s = γ·rsqrt(σ² + ε), t = β − μ·s, and which of γ, β train. */
  function batchNorm(layer: LayerObject) {
    const config = layer.getConfig() as { epsilon: number; axis?: number | number[]; center?: boolean; scale?: boolean };
    const axis = [config.axis ?? -1].flat();
    if (config.center === false || config.scale === false || !(axis.length === 1 && (axis[0] === -1 || axis[0] === 3))) {
      throw new UnavailableError(`${layer.name}: only channels-last BatchNormalization with center and scale has a graph form`);
    }
    const [gammaVar, betaVar, meanVar, varianceVar] = [0, 1, 2, 3].map((i) => read(layer, i));
    const gamma = weight(gammaVar!);
    const beta = weight(betaVar!);
    const mean = weight(meanVar!);
    const inv = g.op('Rsqrt', [add(weight(varianceVar!), g.scalar(config.epsilon))], { T });
    const s = mul(gamma, inv);
    const t = sub(beta, mul(mean, s));
    const trainsGamma = trained.has(gammaVar!);
    const trainsBeta = trained.has(betaVar!);
    if (trained.has(meanVar!) || trained.has(varianceVar!)) throw new Error(`bug: ${layer.name}: moving statistics are not trained`);
    return { gamma, beta, mean, inv, s, t, trainsGamma, trainsBeta, trains: trainsGamma || trainsBeta };
  }

  function convStep(step: Extract<ForwardStep, { op: 'conv' }>): { out: string; grad: (dy: string) => Array<[string, string]> } {
    const layer = step.layer;
    const depthwise = layer.getClassName() === 'DepthwiseConv2D';
    const config = layer.getConfig() as { strides: number | number[]; padding: 'same' | 'valid'; useBias?: boolean };
    const strides = [config.strides].flat();
    const sh = strides[0]!;
    const sw = strides[1] ?? sh;
    const kernelVar = read(layer, 0);
    const biasVar = config.useBias ? read(layer, 1) : undefined;
    const xIn = values.get(step.input)!;
    const K = weight(kernelVar);
    const b = biasVar ? weight(biasVar) : undefined;
    const channels = kernelVar.shape[depthwise ? 2 : 3]!;
    const bn = step.bn ? batchNorm(step.bn) : undefined;
    // s per kernel entry: per output channel of a conv ([co] broadcasts), per input channel of a
    // depthwise kernel ([c, 1] broadcasts over [kh, kw, c, 1]).
    const kernelScale = bn ? (depthwise ? reshape(bn.s, [channels, 1]) : bn.s) : undefined;
    const kernel = kernelScale ? mul(K, kernelScale) : K;
    const shift = bn ? (b ? add(bn.t, mul(b, bn.s)) : bn.t) : b;
    const convAttrs = {
      T,
      strides: g.attr.ints([1, sh, sw, 1]),
      padding: g.attr.s(config.padding === 'same' ? 'SAME' : 'VALID'),
      data_format: g.attr.s('NHWC'),
      dilations: g.attr.ints([1, 1, 1, 1]),
      explicit_paddings: g.attr.ints([]),
      ...(depthwise ? {} : { use_cudnn_on_gpu: g.attr.b(true) }),
    };
    // A 1×1 convolution with stride 1 is the matrix product of [n·h·w, in] by [in, out]: MatMul,
    // whose gradients are two MatMuls (faster than the convolution's backprop kernels).
    const [kh, kw, inChannels, outChannels] = kernelVar.shape as number[];
    const pointwise = !depthwise && kh === 1 && kw === 1 && sh === 1 && sw === 1 && options.pointwise !== 'conv';
    const [, oh, ow] = layer.outputShape as number[];
    const rows = pointwise ? reshape(xIn, [-1, inChannels!]) : xIn;
    const kernel2d = pointwise ? reshape(kernel, [inChannels!, outChannels!]) : kernel;
    const z = pointwise
      ? g.op('MatMul', [rows, kernel2d], { T, transpose_a: g.attr.b(false), transpose_b: g.attr.b(false) })
      : g.op(depthwise ? 'DepthwiseConv2dNative' : 'Conv2D', [xIn, kernel], convAttrs);
    const a = shift ? g.op('BiasAdd', [z, shift], { T, data_format: g.attr.s('NHWC') }) : z;
    const y = step.relu6 ? g.op('Relu6', [a], { T }) : a;
    const out = pointwise ? reshape(y, [-1, oh!, ow!, outChannels!]) : y;
    const trainsKernel = trained.has(kernelVar);
    const trainsBias = biasVar !== undefined && trained.has(biasVar);
    if (needsGrad.has(xIn) || trainsKernel || trainsBias || bn?.trains) needsGrad.add(out);
    return {
      out,
      grad: (dOut) => {
        const result: Array<[string, string]> = [];
        const dy = pointwise ? reshape(dOut, [-1, outChannels!]) : dOut;
        const da = step.relu6 ? g.op('Relu6Grad', [dy, y], { T }) : dy;
        const dt = shift && (trainsBias || bn?.trains) ? g.op('BiasAddGrad', [da], { T, data_format: g.attr.s('NHWC') }) : undefined;
        if (trainsKernel || bn?.trainsGamma) {
          const dKernel = pointwise
            ? reshape(g.op('MatMul', [rows, da], { T, transpose_a: g.attr.b(true), transpose_b: g.attr.b(false) }), kernelVar.shape)
            : g.op(depthwise ? 'DepthwiseConv2dNativeBackpropFilter' : 'Conv2DBackpropFilter', [xIn, g.ints(kernelVar.shape), da], convAttrs);
          if (trainsKernel) result.push([K, kernelScale ? mul(dKernel, kernelScale) : dKernel]);
          if (bn?.trainsGamma) {
            // ∂L/∂s = Σ dK'·K over all but the channel axis, − dt·μ from t = β − μ·s, + dt·b from b·s.
            let ds = sum(mul(dKernel, K), depthwise ? [0, 1, 3] : [0, 1, 2]);
            ds = sub(ds, mul(dt!, bn.mean));
            if (b) ds = add(ds, mul(dt!, b));
            result.push([bn.gamma, mul(ds, bn.inv)]);
          }
        }
        if (bn?.trainsBeta) result.push([bn.beta, dt!]);
        if (trainsBias) result.push([b!, bn ? mul(dt!, bn.s) : dt!]);
        if (needsGrad.has(xIn)) {
          result.push([
            xIn,
            pointwise
              ? reshape(g.op('MatMul', [da, kernel2d], { T, transpose_a: g.attr.b(false), transpose_b: g.attr.b(true) }), [-1, oh!, ow!, inChannels!])
              : g.op(depthwise ? 'DepthwiseConv2dNativeBackpropInput' : 'Conv2DBackpropInput', [shape(xIn), kernel, da], convAttrs),
          ]);
        }
        return result;
      },
    };
  }
}
