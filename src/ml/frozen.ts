// The frozen part of a network as a fixed function, fast.
//
// With BatchNormalization in inference mode, `conv -> BN` is one convolution with a new kernel and a
// bias: BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = scale * y + (beta - mean * scale), so
// kernel' = kernel * scale (per output channel; per input channel for depthwise kernels) and
// bias' = beta - mean * scale. A following ReLU6 goes into the same fused op (`tf.fused.conv2d` /
// `tf.fused.depthwiseConv2d` with bias and activation). A ZeroPadding2D before a stride-2 'valid'
// depthwise conv that pads exactly as 'same' would is dropped in favour of 'same'.
//
// `foldNetwork` compiles a LayersModel (any graph of the layer types MobileNetV2 uses) into such
// steps up to the outputs asked for; `FrozenNet.apply` runs them in one tf.tidy, freeing each
// intermediate activation as soon as its last consumer ran. The folded weights are a snapshot:
// later changes to the model's weights do not reach a FrozenNet.

import type { LayersModel, Tensor, Tensor1D, Tensor4D } from '@tensorflow/tfjs-node';
import type { Boundary, Shape3 } from './mobilenet.ts';
import type { Tf } from './tf.ts';
import { unreachable } from '../core/errors.ts';

type Padding = [[number, number], [number, number]];

/** One step of a folded network: what it computes and from which earlier outputs. */
export type FrozenStep =
  | {
      op: 'conv' | 'depthwise';
      /** The output's name: the last Keras layer folded into the step. */
      name: string;
      /** The Keras layers this step stands for, e.g. [block_1_expand, block_1_expand_BN, block_1_expand_relu]. */
      layers: string[];
      input: string;
      filter: Tensor4D;
      bias: Tensor1D;
      strides: number;
      pad: 'same' | 'valid';
      activation: 'relu6' | 'linear';
    }
  | { op: 'pad'; name: string; layers: string[]; input: string; padding: Padding }
  | { op: 'relu6'; name: string; layers: string[]; input: string }
  | { op: 'affine'; name: string; layers: string[]; input: string; scale: Tensor1D; offset: Tensor1D }
  | { op: 'add'; name: string; layers: string[]; inputs: string[] };

export interface FrozenNet {
  /** Names of the layers whose outputs `apply` returns, in the order asked for. */
  outputs: string[];
  outputShapes: Shape3[];
  inputShape: Shape3;
  steps: FrozenStep[];
  /** The value `apply` takes: the model's input layer, or `from`. */
  input: string;
  /** Per output, the step (or the input) whose value it is. */
  results: string[];
  /**
   * Runs the folded network on a batch of preprocessed images (NHWC float32, as the model's input
   * expects) and returns one tensor per output. The caller disposes them.
   */
  apply(x: Tensor4D): Tensor4D[];
  /** Frees the folded weights. */
  dispose(): void;
}

type Layer = LayersModel['layers'][number];

interface LayerInfo {
  layer: Layer;
  index: number;
  className: string;
  config: Record<string, unknown>;
  inputs: string[];
  consumers: string[];
}

function shape3(layer: Layer): Shape3 {
  const shape = layer.outputShape as (number | null)[];
  return shape.slice(1) as Shape3;
}

/** The padding 'same' applies for a 3-wide (or k-wide) stride-s window: [before, after] per axis. */
function samePadding(size: number, kernel: number, stride: number): [number, number] {
  const out = Math.ceil(size / stride);
  const total = Math.max((out - 1) * stride + kernel - size, 0);
  return [Math.floor(total / 2), total - Math.floor(total / 2)];
}

function pair(value: unknown): [number, number] {
  if (typeof value === 'number') return [value, value];
  if (Array.isArray(value) && value.length === 2) return [Number(value[0]), Number(value[1])];
  throw new Error(`bug: expected a number or a pair, got ${JSON.stringify(value)}`);
}

/**
 * Compiles the part of `model` that computes `outputs` (layer names) into folded steps, with
 * BatchNormalization in inference mode. Throws on layer types or settings it cannot fold.
 */
export function foldNetwork(tf: Tf, model: LayersModel, outputs: string[], options: FoldOptions = {}): FrozenNet {
  const graph = layerGraph(model, outputs, options.from);
  const { steps, owned, alias } = compileSteps(tf, graph);
  const source = (name: string) => carrierOf(alias, name);
  const resultNames = outputs.map(source);
  const readers = countReaders(steps);
  const { infos, modelInput } = graph;
  return {
    outputs: [...outputs],
    outputShapes: outputs.map((name) => shape3(infos.get(name)!.layer)),
    inputShape: shape3(infos.get(modelInput)!.layer),
    steps,
    input: modelInput,
    results: resultNames,
    apply: (x: Tensor4D) => applySteps(tf, steps, readers, modelInput, resultNames, x),
    dispose() {
      tf.dispose(owned);
    },
  };
}

export interface FoldOptions {
  /**
   * Start at this layer's output instead of the model's input: `apply` then takes that activation
   * (e.g. cached boundary activations) and runs only the layers above it. Every output must depend
   * on the model's input through this layer alone (a block boundary of MobileNetV2: no residual
   * connection crosses it).
   */
  from?: string;
}

/** The layers `outputs` depend on, in model order, with who consumes whom among them. */
interface LayerGraph {
  infos: Map<string, LayerInfo>;
  /** The layers asked for as outputs: never folded into a following step. */
  wanted: Set<string>;
  order: string[];
  /** The model's single input layer, or the layer the network starts from (FoldOptions.from). */
  modelInput: string;
}

function layerGraph(model: LayersModel, outputs: string[], from?: string): LayerGraph {
  if (outputs.length === 0) throw new Error('bug: foldNetwork: no outputs asked for');
  const infos = new Map<string, LayerInfo>();
  model.layers.forEach((layer, index) => {
    const inputs = (layer.inboundNodes[0]?.inboundLayers ?? []).map((source) => source.name);
    infos.set(layer.name, { layer, index, className: layer.getClassName(), config: layer.getConfig(), inputs, consumers: [] });
  });
  for (const name of [...outputs, ...(from === undefined ? [] : [from])]) {
    if (!infos.has(name)) throw new Error(`bug: foldNetwork: ${model.name} has no layer ${name}`);
  }

  // Only the layers the outputs depend on (above `from`, when given).
  const needed = new Set<string>();
  const visit = (name: string) => {
    if (needed.has(name)) return;
    needed.add(name);
    if (name !== from) for (const input of infos.get(name)!.inputs) visit(input);
  };
  outputs.forEach(visit);
  for (const name of needed) {
    if (name === from) continue;
    for (const input of infos.get(name)!.inputs) infos.get(input)!.consumers.push(name);
  }
  const order = [...needed].sort((a, b) => infos.get(a)!.index - infos.get(b)!.index);

  const inputLayers = order.filter((name) => infos.get(name)!.className === 'InputLayer');
  const modelInput = from ?? model.inputs[0]!.sourceLayer.name;
  if (from !== undefined && inputLayers.length > 0) {
    throw new Error(`bug: foldNetwork: ${outputs.join(', ')} depend(s) on the input other than through ${from}: not a boundary`);
  }
  if (from !== undefined && !needed.has(from)) throw new Error(`bug: foldNetwork: ${outputs.join(', ')} do(es) not depend on ${from}`);
  if (inputLayers.some((name) => name !== modelInput)) throw new Error('bug: foldNetwork: only single-input models are supported');
  return { infos, wanted: new Set(outputs), order, modelInput };
}

/** `name`'s only consumer if it is of class `className` with one input, and `name` itself is not an output. */
function soleConsumer(graph: LayerGraph, name: string, className: string): LayerInfo | undefined {
  const info = graph.infos.get(name)!;
  if (graph.wanted.has(name) || info.consumers.length !== 1) return undefined;
  const next = graph.infos.get(info.consumers[0]!)!;
  return next.className === className && next.inputs.length === 1 ? next : undefined;
}

function isRelu6(info: LayerInfo): boolean {
  const { maxValue, negativeSlope, threshold } = info.config as { maxValue?: number; negativeSlope?: number; threshold?: number };
  return maxValue === 6 && !negativeSlope && !threshold;
}

/** The steps compiled so far and what they own, while `compileSteps` walks the graph. */
interface Compilation {
  tf: Tf;
  graph: LayerGraph;
  steps: FrozenStep[];
  /** Tensors the steps hold: freed by FrozenNet.dispose(), or at once when compiling fails. */
  owned: Tensor[];
  /** Layer name -> the step output that carries its value. */
  alias: Map<string, string>;
  /** Layers already folded into an earlier step (a conv's BatchNormalization and ReLU). */
  folded: Set<string>;
}

function compileSteps(tf: Tf, graph: LayerGraph): Pick<Compilation, 'steps' | 'owned' | 'alias'> {
  const { modelInput } = graph;
  const compilation: Compilation = {
    tf, graph, steps: [], owned: [], alias: new Map([[modelInput, modelInput]]), folded: new Set(),
  };
  try {
    for (const name of graph.order) {
      if (compilation.folded.has(name) || name === modelInput) continue;
      compileLayer(compilation, name);
    }
  } catch (error) {
    tf.dispose(compilation.owned);
    throw error;
  }
  return compilation;
}

function carrierOf(alias: Map<string, string>, name: string): string {
  const carried = alias.get(name);
  if (carried === undefined) throw new Error(`bug: foldNetwork: layer ${name} was folded away but is needed`);
  return carried;
}

/** Appends the step for layer `name` (a layer that carries its own value: alias to itself). */
function compileLayer(compilation: Compilation, name: string): void {
  const { tf, graph, steps, owned, alias } = compilation;
  const info = graph.infos.get(name)!;
  const { className, config } = info;
  const input = () => carrierOf(alias, info.inputs[0]!);
  switch (className) {
    case 'Conv2D':
    case 'DepthwiseConv2D':
      compileConv(compilation, name, info);
      return;
    case 'BatchNormalization': {
      const { scale, offset } = batchNormAffine(tf, info);
      owned.push(scale, offset);
      alias.set(name, name);
      steps.push({ op: 'affine', name, layers: [name], input: input(), scale, offset });
      return;
    }
    case 'ReLU': {
      if (!isRelu6(info)) throw new Error(`bug: foldNetwork: ${name}: only ReLU(max_value=6) is supported`);
      alias.set(name, name);
      steps.push({ op: 'relu6', name, layers: [name], input: input() });
      return;
    }
    case 'ZeroPadding2D': {
      const padding = config['padding'] as Padding;
      alias.set(name, name);
      steps.push({ op: 'pad', name, layers: [name], input: input(), padding: [pair(padding[0]), pair(padding[1])] });
      return;
    }
    case 'Add': {
      alias.set(name, name);
      steps.push({ op: 'add', name, layers: [name], inputs: info.inputs.map((layer) => carrierOf(alias, layer)) });
      return;
    }
    default:
      throw new Error(`bug: foldNetwork: ${name}: layer type ${className} is not supported`);
  }
}

/** A standalone BatchNormalization as `x * scale + offset`. */
function batchNormAffine(tf: Tf, info: LayerInfo): { scale: Tensor1D; offset: Tensor1D } {
  const channels = shape3(info.layer)[2];
  const [gamma, beta, mean, variance] = batchNormWeights(tf, info, channels);
  const epsilon = Number(info.config['epsilon']);
  const affine = tf.tidy(() => {
    const s = tf.div(gamma, tf.sqrt(tf.add(variance, epsilon))) as Tensor1D;
    return { scale: s, offset: tf.sub(beta, tf.mul(mean, s)) as Tensor1D };
  });
  tf.dispose([gamma, beta, mean, variance]);
  return affine;
}

/**
 * A Conv2D or DepthwiseConv2D as one fused step, taking in a ZeroPadding2D before it that pads as
 * 'same' would, and the BatchNormalization and ReLU6 after it when it is their only input.
 */
function compileConv(compilation: Compilation, name: string, info: LayerInfo): void {
  const { tf, graph, steps, owned, alias, folded } = compilation;
  const depthwise = info.className === 'DepthwiseConv2D';
  const strides = checkedConvStrides(name, info);
  const { input, pad, layers } = takeInSamePadding(compilation, info, strides, name);

  // Copies: getWeights() hands out the model's own variables, which must survive dispose().
  const weights = info.layer.getWeights().map((weight) => tf.clone(weight));
  let filter = weights[0]! as Tensor4D;
  const channels = depthwise ? filter.shape[2] : filter.shape[3];
  let bias: Tensor1D = weights[1] ? (weights[1] as Tensor1D) : tf.zeros([channels]);
  let output = name;

  const bn = soleConsumer(graph, name, 'BatchNormalization');
  if (bn) {
    ({ filter, bias } = foldBatchNormIntoKernel(tf, bn, { filter, bias, channels, depthwise }));
    folded.add(bn.layer.name);
    layers.push(bn.layer.name);
    output = bn.layer.name;
  }
  let activation: 'relu6' | 'linear' = 'linear';
  const relu = soleConsumer(graph, output, 'ReLU');
  if (relu && isRelu6(relu)) {
    folded.add(relu.layer.name);
    layers.push(relu.layer.name);
    output = relu.layer.name;
    activation = 'relu6';
  }
  owned.push(filter, bias);
  for (const layer of layers) alias.set(layer, output);
  steps.push({ op: depthwise ? 'depthwise' : 'conv', name: output, layers, input, filter, bias, strides, pad, activation });
}

/** The conv's stride, after checking it is a setting the fused ops take. */
function checkedConvStrides(name: string, info: LayerInfo): number {
  const { config } = info;
  const activation = config['activation'];
  if (activation !== 'linear') throw new Error(`bug: foldNetwork: ${name}: activation ${String(activation)} is not supported`);
  const [sh, sw] = pair(config['strides']);
  const [dh, dw] = pair(config['dilationRate'] ?? 1);
  if (sh !== sw || dh !== 1 || dw !== 1) throw new Error(`bug: foldNetwork: ${name}: strides ${sh}×${sw} / dilation not supported`);
  if (info.className === 'DepthwiseConv2D' && config['depthMultiplier'] !== 1) throw new Error(`bug: foldNetwork: ${name}: depth multiplier ≠ 1`);
  return sh;
}

/**
 * The conv's input and padding: when the last step is a ZeroPadding2D feeding only this 'valid'
 * conv and padding exactly as 'same' would, that step is dropped and the conv pads 'same' itself.
 */
function takeInSamePadding(
  compilation: Compilation, info: LayerInfo, strides: number, name: string,
): { input: string; pad: 'same' | 'valid'; layers: string[] } {
  const { graph, steps, alias } = compilation;
  const pad = info.config['padding'] as 'same' | 'valid';
  const input = carrierOf(alias, info.inputs[0]!);
  const layers = [name];
  const previous = steps[steps.length - 1];
  if (pad !== 'valid' || previous?.op !== 'pad' || previous.name !== input) return { input, pad, layers };
  if (graph.infos.get(input)!.consumers.length !== 1 || graph.wanted.has(input)) return { input, pad, layers };
  const [h, w] = shape3(graph.infos.get(previous.input)!.layer);
  const [kh, kw] = pair(info.config['kernelSize']);
  const same = [samePadding(h, kh, strides), samePadding(w, kw, strides)];
  if (JSON.stringify(same) !== JSON.stringify(previous.padding)) return { input, pad, layers };
  steps.pop();
  return { input: previous.input, pad: 'same', layers: [...previous.layers, name] };
}

/** kernel * scale and (bias - mean) * scale + beta; disposes the unfolded filter and bias. */
function foldBatchNormIntoKernel(
  tf: Tf, bn: LayerInfo, conv: { filter: Tensor4D; bias: Tensor1D; channels: number; depthwise: boolean },
): { filter: Tensor4D; bias: Tensor1D } {
  const { filter, bias, channels, depthwise } = conv;
  const [gamma, beta, mean, variance] = batchNormWeights(tf, bn, channels);
  const epsilon = Number(bn.config['epsilon']);
  const folded = tf.tidy(() => {
    const scale = tf.div(gamma, tf.sqrt(tf.add(variance, epsilon)));
    const kernelScale = depthwise ? tf.reshape(scale, [1, 1, channels, 1]) : tf.reshape(scale, [1, 1, 1, channels]);
    return {
      filter: tf.mul(filter, kernelScale) as Tensor4D,
      bias: tf.add(tf.mul(tf.sub(bias, mean), scale), beta) as Tensor1D,
    };
  });
  tf.dispose([filter, bias, gamma, beta, mean, variance]);
  return folded;
}

function stepInputs(step: FrozenStep): string[] {
  return step.op === 'add' ? step.inputs : [step.input];
}

/** How many steps read each value, so that apply() frees it after its last reader. */
function countReaders(steps: FrozenStep[]): Map<string, number> {
  const readers = new Map<string, number>();
  for (const step of steps) {
    for (const input of stepInputs(step)) readers.set(input, (readers.get(input) ?? 0) + 1);
  }
  return readers;
}

/** FrozenNet.apply: runs the steps in one tidy, freeing each value after its last reader. */
function applySteps(
  tf: Tf, steps: FrozenStep[], readers: Map<string, number>, modelInput: string, resultNames: string[], x: Tensor4D,
): Tensor4D[] {
  return tf.tidy(() => {
    const values = new Map<string, Tensor4D>([[modelInput, x]]);
    const left = new Map(readers);
    const keep = new Set([...resultNames, modelInput]);
    const read = (name: string): Tensor4D => values.get(name)!;
    const release = (name: string) => {
      const count = (left.get(name) ?? 0) - 1;
      left.set(name, count);
      if (count === 0 && !keep.has(name)) {
        values.get(name)!.dispose();
        values.delete(name);
      }
    };
    for (const step of steps) {
      values.set(step.name, runStep(tf, step, read));
      for (const input of stepInputs(step)) release(input);
    }
    return resultNames.map((name) => (name === modelInput ? tf.clone(x) : values.get(name)!));
  });
}

function runStep(tf: Tf, step: FrozenStep, read: (name: string) => Tensor4D): Tensor4D {
  switch (step.op) {
    case 'conv':
      return tf.fused.conv2d({
        x: read(step.input), filter: step.filter, strides: step.strides, pad: step.pad,
        bias: step.bias, activation: step.activation,
      });
    case 'depthwise':
      return tf.fused.depthwiseConv2d({
        x: read(step.input), filter: step.filter, strides: step.strides, pad: step.pad,
        bias: step.bias, activation: step.activation,
      });
    case 'pad':
      return tf.pad(read(step.input), [[0, 0], step.padding[0], step.padding[1], [0, 0]]);
    case 'relu6':
      return tf.relu6(read(step.input));
    case 'affine':
      return tf.add(tf.mul(read(step.input), step.scale), step.offset);
    case 'add':
      return tf.addN(step.inputs.map(read));
    default:
      return unreachable(step, 'step');
  }
}

/** gamma, beta, moving mean, moving variance of a BatchNormalization layer (defaults when center/scale are off). */
function batchNormWeights(tf: Tf, info: LayerInfo, channels: number): [Tensor1D, Tensor1D, Tensor1D, Tensor1D] {
  const axis = info.config['axis'];
  if (!(axis === -1 || axis === 3 || (Array.isArray(axis) && axis.length === 1 && (axis[0] === -1 || axis[0] === 3)))) {
    throw new Error(`bug: foldNetwork: ${info.layer.name}: only channels-last BatchNormalization is supported`);
  }
  const weights = info.layer.getWeights().map((weight) => tf.clone(weight)) as Tensor1D[];
  const gamma = info.config['scale'] === false ? tf.ones([channels]) as Tensor1D : weights.shift()!;
  const beta = info.config['center'] === false ? tf.zeros([channels]) as Tensor1D : weights.shift()!;
  const [mean, variance] = weights;
  if (!mean || !variance) throw new Error(`bug: foldNetwork: ${info.layer.name}: missing moving statistics`);
  return [gamma, beta, mean, variance];
}

/**
 * The frozen bottom of MobileNetV2: the folded network from the image to the boundary activation
 * (`boundary.layerName`). Its `apply` returns `[boundaryActivation]`.
 */
export function buildBottom(tf: Tf, model: LayersModel, boundary: Boundary): FrozenNet {
  return foldNetwork(tf, model, [boundary.layerName]);
}

/**
 * The frozen blocks between two boundaries: from the activation at `from` (a lower boundary) to the
 * one at `to`. Its `apply` takes `from`'s activations and returns `[to's activation]`; with equal
 * boundaries it returns a copy of its input.
 */
export function buildBetween(tf: Tf, model: LayersModel, from: Boundary, to: Boundary): FrozenNet {
  return foldNetwork(tf, model, [to.layerName], { from: from.layerName });
}

/**
 * Runs `net` over `count` images in batches, feeding `batch(start, size)` (a preprocessed NHWC
 * float32 batch, disposed here) and handing each batch's outputs to `onBatch` (disposed after it).
 */
export async function runBatched(
  tf: Tf,
  net: FrozenNet,
  count: number,
  batchSize: number,
  batch: (start: number, size: number) => Tensor4D,
  onBatch: (start: number, outputs: Tensor4D[]) => void | Promise<void>,
): Promise<void> {
  for (let start = 0; start < count; start += batchSize) {
    const size = Math.min(batchSize, count - start);
    const x = batch(start, size);
    let outputs: Tensor4D[];
    try {
      outputs = net.apply(x);
    } finally {
      x.dispose();
    }
    try {
      await onBatch(start, outputs);
    } finally {
      tf.dispose(outputs);
    }
  }
}
