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
export function foldNetwork(tf: Tf, model: LayersModel, outputs: string[]): FrozenNet {
  if (outputs.length === 0) throw new Error('bug: foldNetwork: no outputs asked for');
  const infos = new Map<string, LayerInfo>();
  model.layers.forEach((layer, index) => {
    const inputs = (layer.inboundNodes[0]?.inboundLayers ?? []).map((source) => source.name);
    infos.set(layer.name, { layer, index, className: layer.getClassName(), config: layer.getConfig(), inputs, consumers: [] });
  });
  const wanted = new Set(outputs);
  for (const name of outputs) if (!infos.has(name)) throw new Error(`bug: foldNetwork: ${model.name} has no layer ${name}`);

  // Only the layers the outputs depend on.
  const needed = new Set<string>();
  const visit = (name: string) => {
    if (needed.has(name)) return;
    needed.add(name);
    for (const input of infos.get(name)!.inputs) visit(input);
  };
  outputs.forEach(visit);
  for (const name of needed) for (const input of infos.get(name)!.inputs) infos.get(input)!.consumers.push(name);
  const order = [...needed].sort((a, b) => infos.get(a)!.index - infos.get(b)!.index);

  const inputLayers = order.filter((name) => infos.get(name)!.className === 'InputLayer');
  const modelInput = model.inputs[0]!.sourceLayer.name;
  if (inputLayers.some((name) => name !== modelInput)) throw new Error('bug: foldNetwork: only single-input models are supported');

  /** `next` is `name`'s only consumer, of class `className`, and `name` itself is not an output. */
  const soleConsumer = (name: string, className: string): LayerInfo | undefined => {
    const info = infos.get(name)!;
    if (wanted.has(name) || info.consumers.length !== 1) return undefined;
    const next = infos.get(info.consumers[0]!)!;
    return next.className === className && next.inputs.length === 1 ? next : undefined;
  };
  const isRelu6 = (info: LayerInfo) => {
    const { maxValue, negativeSlope, threshold } = info.config as { maxValue?: number; negativeSlope?: number; threshold?: number };
    return maxValue === 6 && !negativeSlope && !threshold;
  };

  const steps: FrozenStep[] = [];
  const owned: Tensor[] = [];
  /** Layer name -> the step output that carries its value. */
  const alias = new Map<string, string>([[modelInput, modelInput]]);
  const source = (name: string) => {
    const carried = alias.get(name);
    if (carried === undefined) throw new Error(`bug: foldNetwork: layer ${name} was folded away but is needed`);
    return carried;
  };
  const skipped = new Set<string>();

  try {
    for (const name of order) {
      if (skipped.has(name) || name === modelInput) continue;
      const info = infos.get(name)!;
      const { className, config } = info;
      switch (className) {
        case 'Conv2D':
        case 'DepthwiseConv2D': {
          const depthwise = className === 'DepthwiseConv2D';
          const activation = config['activation'];
          if (activation !== 'linear') throw new Error(`bug: foldNetwork: ${name}: activation ${String(activation)} is not supported`);
          const [sh, sw] = pair(config['strides']);
          const [dh, dw] = pair(config['dilationRate'] ?? 1);
          if (sh !== sw || dh !== 1 || dw !== 1) throw new Error(`bug: foldNetwork: ${name}: strides ${sh}×${sw} / dilation not supported`);
          if (depthwise && config['depthMultiplier'] !== 1) throw new Error(`bug: foldNetwork: ${name}: depth multiplier ≠ 1`);
          let pad = config['padding'] as 'same' | 'valid';
          let input = source(info.inputs[0]!);
          const layers = [name];

          // A ZeroPadding2D that pads as 'same' would: fold it into the conv's padding.
          const previous = steps[steps.length - 1];
          if (pad === 'valid' && previous?.op === 'pad' && previous.name === input && infos.get(input)!.consumers.length === 1 && !wanted.has(input)) {
            const padInput = infos.get(previous.input)!;
            const [h, w] = shape3(padInput.layer);
            const [kh, kw] = pair(config['kernelSize']);
            const same = [samePadding(h, kh, sh), samePadding(w, kw, sw)];
            if (JSON.stringify(same) === JSON.stringify(previous.padding)) {
              steps.pop();
              layers.unshift(...previous.layers);
              input = previous.input;
              pad = 'same';
            }
          }

          // Copies: getWeights() hands out the model's own variables, which must survive dispose().
          const weights = info.layer.getWeights().map((weight) => tf.clone(weight));
          let filter = weights[0]! as Tensor4D;
          const channels = depthwise ? filter.shape[2] : filter.shape[3];
          let bias: Tensor1D = weights[1] ? (weights[1] as Tensor1D) : tf.zeros([channels]);
          let output = name;

          const bn = soleConsumer(name, 'BatchNormalization');
          if (bn) {
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
            filter = folded.filter;
            bias = folded.bias;
            skipped.add(bn.layer.name);
            layers.push(bn.layer.name);
            output = bn.layer.name;
          }
          let stepActivation: 'relu6' | 'linear' = 'linear';
          const relu = soleConsumer(output, 'ReLU');
          if (relu && isRelu6(relu)) {
            skipped.add(relu.layer.name);
            layers.push(relu.layer.name);
            output = relu.layer.name;
            stepActivation = 'relu6';
          }
          owned.push(filter, bias);
          for (const layer of layers) alias.set(layer, output);
          steps.push({ op: depthwise ? 'depthwise' : 'conv', name: output, layers, input, filter, bias, strides: sh, pad, activation: stepActivation });
          break;
        }
        case 'BatchNormalization': {
          const channels = shape3(info.layer)[2];
          const [gamma, beta, mean, variance] = batchNormWeights(tf, info, channels);
          const epsilon = Number(config['epsilon']);
          const { scale, offset } = tf.tidy(() => {
            const s = tf.div(gamma, tf.sqrt(tf.add(variance, epsilon))) as Tensor1D;
            return { scale: s, offset: tf.sub(beta, tf.mul(mean, s)) as Tensor1D };
          });
          tf.dispose([gamma, beta, mean, variance]);
          owned.push(scale, offset);
          alias.set(name, name);
          steps.push({ op: 'affine', name, layers: [name], input: source(info.inputs[0]!), scale, offset });
          break;
        }
        case 'ReLU': {
          if (!isRelu6(info)) throw new Error(`bug: foldNetwork: ${name}: only ReLU(max_value=6) is supported`);
          alias.set(name, name);
          steps.push({ op: 'relu6', name, layers: [name], input: source(info.inputs[0]!) });
          break;
        }
        case 'ZeroPadding2D': {
          const padding = config['padding'] as Padding;
          alias.set(name, name);
          steps.push({ op: 'pad', name, layers: [name], input: source(info.inputs[0]!), padding: [pair(padding[0]), pair(padding[1])] });
          break;
        }
        case 'Add': {
          alias.set(name, name);
          steps.push({ op: 'add', name, layers: [name], inputs: info.inputs.map(source) });
          break;
        }
        default:
          throw new Error(`bug: foldNetwork: ${name}: layer type ${className} is not supported`);
      }
    }
  } catch (error) {
    tf.dispose(owned);
    throw error;
  }

  const resultNames = outputs.map(source);
  // How many steps read each value, so that apply() frees it after its last reader.
  const readers = new Map<string, number>();
  for (const step of steps) {
    for (const input of step.op === 'add' ? step.inputs : [step.input]) readers.set(input, (readers.get(input) ?? 0) + 1);
  }

  const inputShape = shape3(infos.get(modelInput)!.layer);
  return {
    outputs: [...outputs],
    outputShapes: outputs.map((name) => shape3(infos.get(name)!.layer)),
    inputShape,
    steps,
    apply(x: Tensor4D): Tensor4D[] {
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
          let y: Tensor4D;
          switch (step.op) {
            case 'conv':
              y = tf.fused.conv2d({
                x: read(step.input), filter: step.filter, strides: step.strides, pad: step.pad,
                bias: step.bias, activation: step.activation,
              });
              break;
            case 'depthwise':
              y = tf.fused.depthwiseConv2d({
                x: read(step.input), filter: step.filter, strides: step.strides, pad: step.pad,
                bias: step.bias, activation: step.activation,
              });
              break;
            case 'pad':
              y = tf.pad(read(step.input), [[0, 0], step.padding[0], step.padding[1], [0, 0]]);
              break;
            case 'relu6':
              y = tf.relu6(read(step.input));
              break;
            case 'affine':
              y = tf.add(tf.mul(read(step.input), step.scale), step.offset);
              break;
            case 'add':
              y = tf.addN(step.inputs.map(read));
              break;
            default: {
              unreachable(step, 'step');
            }
          }
          values.set(step.name, y);
          for (const input of step.op === 'add' ? step.inputs : [step.input]) release(input);
        }
        return resultNames.map((name) => (name === modelInput ? tf.clone(x) : values.get(name)!));
      });
    },
    dispose() {
      tf.dispose(owned);
    },
  };
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
