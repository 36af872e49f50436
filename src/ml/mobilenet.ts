// MobileNetV2 without its classifier top, layer for layer as `keras.applications.MobileNetV2(
// include_top=False)` builds it: the same 154 layers in the same order with the same names
// (`input_1` … `out_relu`), the same shapes and parameter counts, for any alpha and input size.
//
// Matching Keras exactly matters twice: the official weights files address layers by name, and
// `fine_tune_at` (the recipe's `base.layers[:100]`) is an index into this very layer list.
//
// The network is first described as data (`describeMobileNetV2`, pure, no TensorFlow), then built
// as a tfjs LayersModel (`buildMobileNetV2`). Planning code (fingerprints, `boundaryFor`) uses the
// description; the stages use the model.

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { LayersModel, SymbolicTensor, Tensor, layers as tfLayers } from '@tensorflow/tfjs-node';
import { download, sha256File } from '../util/download.ts';
import { assignLayerWeights, readKerasH5, shortWeightName, type NamedWeight } from './keras-h5.ts';
import type { Tf } from './tf.ts';
import { InputError, unreachable } from '../core/errors.ts';

type Layer = tfLayers.Layer;

/** Height, width, channels of one image's activation (no batch dimension). */
export type Shape3 = [number, number, number];

interface LayerSpecBase {
  /** Keras's layer name. */
  name: string;
  /** Position in Keras's `model.layers` (what `fine_tune_at` indexes). */
  index: number;
  /** Names of the layers whose outputs this layer consumes. */
  inputs: string[];
  outputShape: Shape3;
  /** -1 for the stem (`input_1` … `Conv1_relu`), 0–16 for the inverted residual blocks, 17 for the head. */
  block: number;
  /** Weights as Keras counts them (BatchNormalization's moving statistics included). */
  params: number;
  /** Trainable weights (all but BatchNormalization's moving mean and variance). */
  trainableParams: number;
}

export type LayerSpec = LayerSpecBase &
  (
    | { kind: 'input' }
    | { kind: 'conv'; filters: number; kernelSize: number; strides: number; padding: 'same' | 'valid' }
    | { kind: 'depthwise'; kernelSize: number; strides: number; padding: 'same' | 'valid' }
    | { kind: 'batchnorm' }
    | { kind: 'relu6' }
    | { kind: 'zeropad'; padding: [[number, number], [number, number]] }
    | { kind: 'add' }
  );

export type LayerKind = LayerSpec['kind'];

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

export interface MobileNetV2Options {
  /** Width multiplier (Keras `alpha`). Default 1.0. */
  alpha?: number;
  /** Input height and width in pixels: one number for square inputs. Default 224. */
  inputSize?: number | [number, number];
}

export const BLOCK_STEM = -1;
export const BLOCK_HEAD = 17;
export const BN_EPSILON = 1e-3;
export const BN_MOMENTUM = 0.999;

/** The inverted residual blocks of MobileNetV2: output filters (before alpha), stride, expansion. */
export const MOBILENET_V2_BLOCKS: ReadonlyArray<{ filters: number; stride: number; expansion: number }> = [
  { filters: 16, stride: 1, expansion: 1 },
  { filters: 24, stride: 2, expansion: 6 },
  { filters: 24, stride: 1, expansion: 6 },
  { filters: 32, stride: 2, expansion: 6 },
  { filters: 32, stride: 1, expansion: 6 },
  { filters: 32, stride: 1, expansion: 6 },
  { filters: 64, stride: 2, expansion: 6 },
  { filters: 64, stride: 1, expansion: 6 },
  { filters: 64, stride: 1, expansion: 6 },
  { filters: 64, stride: 1, expansion: 6 },
  { filters: 96, stride: 1, expansion: 6 },
  { filters: 96, stride: 1, expansion: 6 },
  { filters: 96, stride: 1, expansion: 6 },
  { filters: 160, stride: 2, expansion: 6 },
  { filters: 160, stride: 1, expansion: 6 },
  { filters: 160, stride: 1, expansion: 6 },
  { filters: 320, stride: 1, expansion: 6 },
];

/** Keras's `_make_divisible`: round to the nearest multiple of `divisor`, never down by more than 10 %. */
export function makeDivisible(value: number, divisor = 8, minValue = divisor): number {
  let rounded = Math.max(minValue, Math.floor(Math.trunc(value + divisor / 2) / divisor) * divisor);
  if (rounded < 0.9 * value) rounded += divisor;
  return rounded;
}

/** Keras's `imagenet_utils.correct_pad` for a square kernel: ((top, bottom), (left, right)). */
export function correctPad(inputSize: [number, number], kernelSize = 3): [[number, number], [number, number]] {
  const correct = Math.floor(kernelSize / 2);
  const adjustH = 1 - (inputSize[0] % 2);
  const adjustW = 1 - (inputSize[1] % 2);
  return [
    [correct - adjustH, correct],
    [correct - adjustW, correct],
  ];
}

function sizeOf(inputSize: MobileNetV2Options['inputSize']): [number, number] {
  const size = inputSize ?? 224;
  const [h, w] = typeof size === 'number' ? [size, size] : size;
  if (!Number.isInteger(h) || !Number.isInteger(w) || h < 32 || w < 32) {
    throw new InputError(`image_size: MobileNetV2 takes images of at least 32×32 pixels (whole numbers), got ${h}×${w}`);
  }
  return [h, w];
}

function convOut(size: number, kernel: number, stride: number, padding: 'same' | 'valid'): number {
  return padding === 'same' ? Math.ceil(size / stride) : Math.floor((size - kernel) / stride) + 1;
}

/** Keras's model name, e.g. `mobilenetv2_1.00_160`. */
export function kerasModelName(alpha: number, rows: number): string {
  return `mobilenetv2_${alpha.toFixed(2)}_${rows}`;
}

/** The layers of Keras's MobileNetV2 (include_top=False), in Keras's order, with shapes and parameter counts. */
export function describeMobileNetV2(options: MobileNetV2Options = {}): LayerSpec[] {
  const alpha = options.alpha ?? 1.0;
  if (!(alpha > 0)) throw new InputError(`alpha: expected a positive MobileNetV2 width multiplier, got ${alpha}`);
  const [rows, cols] = sizeOf(options.inputSize);
  const layers = new LayerList();
  layers.push({ kind: 'input', name: 'input_1', outputShape: [rows, cols, 3] });
  layers.conv('Conv1', makeDivisible(32 * alpha, 8), 3, 2, 'same');
  layers.batchnorm('bn_Conv1');
  layers.relu6('Conv1_relu');
  MOBILENET_V2_BLOCKS.forEach((spec, blockId) => invertedResidualBlock(layers, blockId, spec, alpha));
  layers.block = BLOCK_HEAD;
  layers.conv('Conv_1', alpha > 1.0 ? makeDivisible(1280 * alpha, 8) : 1280, 1, 1, 'same');
  layers.batchnorm('Conv_1_bn');
  layers.relu6('out_relu');
  return layers.specs;
}

/** A layer as LayerList takes it: `index` and `block` are filled in, `inputs` defaults to the
 * previous layer, parameter counts default to 0 and all trainable. */
type NewLayer = DistributiveOmit<LayerSpec, 'index' | 'block' | 'inputs' | 'params' | 'trainableParams'> &
  Partial<Pick<LayerSpecBase, 'inputs' | 'params' | 'trainableParams'>>;

/** The layer list being described, each new layer reading the shape of the one before. */
class LayerList {
  readonly specs: LayerSpec[] = [];
  block = BLOCK_STEM;

  get last(): LayerSpec {
    return this.specs[this.specs.length - 1]!;
  }

  push(layer: NewLayer): void {
    const params = layer.params ?? 0;
    this.specs.push({
      inputs: this.specs.length > 0 ? [this.last.name] : [],
      ...layer,
      index: this.specs.length,
      block: this.block,
      params,
      trainableParams: layer.trainableParams ?? params,
    } as LayerSpec);
  }

  conv(name: string, filters: number, kernelSize: number, strides: number, padding: 'same' | 'valid'): void {
    const [h, w, c] = this.last.outputShape;
    this.push({
      kind: 'conv', name, filters, kernelSize, strides, padding,
      outputShape: [convOut(h, kernelSize, strides, padding), convOut(w, kernelSize, strides, padding), filters],
      params: kernelSize * kernelSize * c * filters,
    });
  }

  depthwise(name: string, strides: number, padding: 'same' | 'valid'): void {
    const [h, w, c] = this.last.outputShape;
    this.push({
      kind: 'depthwise', name, kernelSize: 3, strides, padding,
      outputShape: [convOut(h, 3, strides, padding), convOut(w, 3, strides, padding), c],
      params: 9 * c,
    });
  }

  batchnorm(name: string): void {
    const c = this.last.outputShape[2];
    this.push({ kind: 'batchnorm', name, outputShape: this.last.outputShape, params: 4 * c, trainableParams: 2 * c });
  }

  relu6(name: string): void {
    this.push({ kind: 'relu6', name, outputShape: this.last.outputShape });
  }
}

/** Block `blockId`: expand (not in block 0), pad for stride 2, depthwise, project, and the residual add when shapes allow. */
function invertedResidualBlock(
  layers: LayerList, blockId: number, { filters, stride, expansion }: (typeof MOBILENET_V2_BLOCKS)[number], alpha: number,
): void {
  layers.block = blockId;
  const blockInput = layers.last;
  const inChannels = blockInput.outputShape[2];
  const pointwiseFilters = makeDivisible(Math.trunc(filters * alpha), 8);
  let prefix = `block_${blockId}_`;
  if (blockId > 0) {
    layers.conv(`${prefix}expand`, expansion * inChannels, 1, 1, 'same');
    layers.batchnorm(`${prefix}expand_BN`);
    layers.relu6(`${prefix}expand_relu`);
  } else {
    prefix = 'expanded_conv_';
  }
  if (stride === 2) {
    const [h, w, c] = layers.last.outputShape;
    const padding = correctPad([h, w], 3);
    layers.push({
      kind: 'zeropad', name: `${prefix}pad`, padding,
      outputShape: [h + padding[0][0] + padding[0][1], w + padding[1][0] + padding[1][1], c],
    });
  }
  layers.depthwise(`${prefix}depthwise`, stride, stride === 1 ? 'same' : 'valid');
  layers.batchnorm(`${prefix}depthwise_BN`);
  layers.relu6(`${prefix}depthwise_relu`);
  layers.conv(`${prefix}project`, pointwiseFilters, 1, 1, 'same');
  layers.batchnorm(`${prefix}project_BN`);
  if (inChannels === pointwiseFilters && stride === 1) {
    layers.push({ kind: 'add', name: `${prefix}add`, inputs: [blockInput.name, layers.last.name], outputShape: layers.last.outputShape });
  }
}

export function countParams(specs: readonly LayerSpec[]): { total: number; trainable: number } {
  let total = 0;
  let trainable = 0;
  for (const spec of specs) {
    total += spec.params;
    trainable += spec.trainableParams;
  }
  return { total, trainable };
}

// ---------------------------------------------------------------------------------------------
// The split between the frozen bottom and the fine-tuned top

/**
 * Where the network is cut for fine-tuning: the bottom computes `layerName`'s output (frozen,
 * computed once and cached); the top takes that activation and runs layers `topStart` … end.
 */
export interface Boundary {
  /** The layer whose output is the cut activation, e.g. `block_10_project_BN`. */
  layerName: string;
  /** That layer's index in Keras's layer list. */
  index: number;
  /** Its output shape per image, e.g. [10, 10, 96] at 160 px, alpha 1.0. */
  shape: Shape3;
  /** The first layer of the top part (`index + 1`). */
  topStart: number;
  /** The `fine_tune_at` this boundary was made for: layers of the top below it stay frozen. */
  fineTuneAt: number;
}

/** What `boundaryFor` needs of a layer: a LayerSpec or a tfjs layer of a model built here. */
export interface NamedLayer {
  name: string;
  outputShape: unknown;
}

/** Indices at which a block starts: the stem's first conv, each inverted residual block, the head. */
function blockStarts(names: readonly string[]): number[] {
  const starts = new Set<number>([1, names.length]);
  names.forEach((name, index) => {
    if (name === 'expanded_conv_depthwise' || name === 'Conv_1' || /^block_\d+_expand$/.test(name)) starts.add(index);
  });
  return [...starts].sort((a, b) => a - b);
}

/**
 * The boundary for `fine_tune_at` (Keras semantics: `base.layers[:fine_tune_at]` frozen): the
 * highest block start at or below fine_tune_at, so that every residual connection of the top
 * starts inside the top. Its activation is the output of the layer just before that block start.
 * For fine_tune_at = 100 (`block_11_expand_relu`): block 11 starts at index 98, so the boundary is
 * `block_10_project_BN` (index 97) and layers 98–99 are frozen layers computed in the top.
 */
export function boundaryFor(fineTuneAt: number, layers: readonly NamedLayer[]): Boundary {
  if (!Number.isInteger(fineTuneAt) || fineTuneAt < 0) {
    throw new InputError(`fine_tune_at: expected a Keras layer index (an integer ≥ 0), got ${fineTuneAt}`);
  }
  if (layers[0]?.name !== 'input_1' || layers[layers.length - 1]?.name !== 'out_relu') {
    throw new Error('bug: boundaryFor expects the MobileNetV2 layer list (input_1 … out_relu)');
  }
  const starts = blockStarts(layers.map((layer) => layer.name));
  let start = 1;
  for (const candidate of starts) if (candidate <= fineTuneAt) start = candidate;
  const index = start - 1;
  const layer = layers[index]!;
  return { layerName: layer.name, index, shape: shapeOf(layer.outputShape, layer.name), topStart: start, fineTuneAt };
}

function shapeOf(outputShape: unknown, name: string): Shape3 {
  const shape = Array.isArray(outputShape) && Array.isArray(outputShape[0]) ? outputShape[0] : outputShape;
  if (!Array.isArray(shape)) throw new Error(`bug: layer ${name} has no output shape`);
  const dims = shape.length === 4 ? shape.slice(1) : shape;
  if (dims.length !== 3 || !dims.every((d) => typeof d === 'number')) {
    throw new Error(`bug: layer ${name}: expected an output shape [h, w, c], got ${JSON.stringify(shape)}`);
  }
  return dims as Shape3;
}

// ---------------------------------------------------------------------------------------------
// The tfjs model

export interface BuildOptions extends MobileNetV2Options {
  /**
   * Seed of the random initialisation (glorot-uniform kernels, seeded per layer with seed + index;
   * BatchNormalization starts as the identity, as in Keras). Without it, initialisation is random.
   */
  seed?: number;
}

/** A tfjs LayersModel of Keras's MobileNetV2 (include_top=False), random or seeded weights. */
export function buildMobileNetV2(tf: Tf, options: BuildOptions = {}): LayersModel {
  const alpha = options.alpha ?? 1.0;
  const specs = describeMobileNetV2(options);
  const outputs = new Map<string, SymbolicTensor>();
  const init = (index: number) =>
    tf.initializers.glorotUniform(options.seed === undefined ? {} : { seed: options.seed + index });
  let input: SymbolicTensor | undefined;

  for (const spec of specs) {
    if (spec.kind === 'input') {
      input = tf.input({ shape: spec.outputShape, name: spec.name });
      outputs.set(spec.name, input);
      continue;
    }
    const layer = makeLayer(tf, spec, init);
    const inputs = spec.inputs.map((name) => outputs.get(name)!);
    const output = layer.apply(inputs.length === 1 ? inputs[0]! : inputs) as SymbolicTensor;
    outputs.set(spec.name, output);
  }
  return tf.model({
    inputs: input!,
    outputs: outputs.get('out_relu')!,
    name: kerasModelName(alpha, specs[0]!.outputShape[0]),
  });
}

function makeLayer(tf: Tf, spec: LayerSpec, init: (index: number) => ReturnType<Tf['initializers']['glorotUniform']>): Layer {
  const { name } = spec;
  switch (spec.kind) {
    case 'conv':
      return tf.layers.conv2d({
        name, filters: spec.filters, kernelSize: spec.kernelSize, strides: spec.strides, padding: spec.padding,
        useBias: false, kernelInitializer: init(spec.index),
      });
    case 'depthwise':
      return tf.layers.depthwiseConv2d({
        name, kernelSize: spec.kernelSize, strides: spec.strides, padding: spec.padding, depthMultiplier: 1,
        useBias: false, depthwiseInitializer: init(spec.index),
      });
    case 'batchnorm':
      return tf.layers.batchNormalization({ name, axis: -1, epsilon: BN_EPSILON, momentum: BN_MOMENTUM });
    case 'relu6':
      return tf.layers.reLU({ name, maxValue: 6 });
    case 'zeropad':
      return tf.layers.zeroPadding2d({ name, padding: spec.padding });
    case 'add':
      return tf.layers.add({ name });
    case 'input':
      throw new Error('bug: input layers are made with tf.input');
    default: {
      unreachable(spec, 'layer kind');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The fine-tuned top

/**
 * A model from the boundary activation to `out_relu`, built from the very layer objects of
 * `model` (same names, same weight variables: training the top trains the base). Layers with a
 * Keras index below `boundary.fineTuneAt` are frozen (`trainable = false`), the others trainable.
 *
 * Use it with BatchNormalization in inference mode, as the recipe does (DESIGN §6): train with a
 * custom step over `top.apply(x, {training: false})` and an optimizer, never with `top.fit`, which
 * would normalise with batch statistics. `top.predict(x)` already runs in inference mode.
 *
 * Note: `trainable` is a property of the shared layer objects, so it also changes in `model`.
 */
export function buildTop(tf: Tf, model: LayersModel, boundary: Boundary): LayersModel {
  const layers = model.layers;
  if (boundary.topStart >= layers.length) {
    throw new InputError(`fine_tune_at ${boundary.fineTuneAt} leaves no layer to fine-tune (the base has ${layers.length})`);
  }
  const cut = layers[boundary.index];
  if (cut?.name !== boundary.layerName) {
    throw new Error(`bug: boundary ${boundary.layerName} is not layer ${boundary.index} of ${model.name}`);
  }
  const input = tf.input({ shape: boundary.shape, name: `${boundary.layerName}_activation` });
  const outputs = new Map<string, SymbolicTensor>([[boundary.layerName, input]]);
  for (let index = boundary.topStart; index < layers.length; index++) {
    const layer = layers[index]!;
    const inbound = layer.inboundNodes[0]?.inboundLayers ?? [];
    const inputs = inbound.map((source) => {
      const tensor = outputs.get(source.name);
      if (!tensor) {
        throw new Error(`bug: layer ${layer.name} reads ${source.name}, which is below the boundary ${boundary.layerName}`);
      }
      return tensor;
    });
    outputs.set(layer.name, layer.apply(inputs.length === 1 ? inputs[0]! : inputs) as SymbolicTensor);
    layer.trainable = index >= boundary.fineTuneAt;
  }
  return tf.model({ inputs: input, outputs: outputs.get(layers[layers.length - 1]!.name)!, name: `${model.name}_top` });
}

/** Scales uint8-range pixels to [-1, 1] as Keras's `mobilenet_v2.preprocess_input` does: x / 127.5 - 1. */
export function preprocessInput(tf: Tf, pixels: Tensor): Tensor {
  return tf.tidy(() => tf.sub(tf.div(tf.cast(pixels, 'float32'), 127.5), 1));
}

// ---------------------------------------------------------------------------------------------
// Weights

/** The alphas and input sizes keras-applications publishes ImageNet weights for. */
export const IMAGENET_ALPHAS: readonly number[] = [0.35, 0.5, 0.75, 1.0, 1.3, 1.4];
export const IMAGENET_ROWS: readonly number[] = [96, 128, 160, 192, 224];

/**
 * Where weights come from, as a pipeline names them:
 * - `none`: random initialisation, seeded;
 * - `imagenet`: the official keras-applications file for the alpha and input size, downloaded;
 * - an `http(s)://` URL of a Keras HDF5 weights file, downloaded;
 * - a local Keras HDF5 file (`.h5`, `.hdf5`, `.keras-weights`…: anything that is not a directory or a `.json`);
 * - a local tfjs layers model: its directory or its `model.json`.
 */
export type WeightsSource =
  | { kind: 'none' }
  | { kind: 'imagenet' }
  | { kind: 'url'; url: string }
  | { kind: 'h5'; path: string }
  | { kind: 'tfjs'; path: string };

/** Classifies a `weights` parameter; `isDirectory` tells local directories (tfjs models) from files. */
export function parseWeightsSpec(spec: string, isDirectory = false): WeightsSource {
  if (spec === 'none') return { kind: 'none' };
  if (spec === 'imagenet') return { kind: 'imagenet' };
  if (/^https?:\/\//i.test(spec)) return { kind: 'url', url: spec };
  if (isDirectory || spec.endsWith('.json')) return { kind: 'tfjs', path: spec };
  return { kind: 'h5', path: spec };
}

/** Python's `str(float(alpha))`: 1 -> '1.0', 0.35 -> '0.35'. */
function pythonFloat(value: number): string {
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}

/**
 * The URL of keras-applications' ImageNet weights (include_top=False) for `alpha` and input height
 * `rows`. As in Keras, a size without published weights falls back to the 224-pixel file (the
 * weights do not depend on the input size); an alpha without published weights is an error.
 */
export function imagenetWeightsUrl(alpha: number, rows: number): string {
  if (!IMAGENET_ALPHAS.includes(alpha)) {
    throw new InputError(`weights imagenet: no ImageNet weights for alpha ${alpha}; keras-applications publishes alpha ${IMAGENET_ALPHAS.join(', ')}`);
  }
  const size = IMAGENET_ROWS.includes(rows) ? rows : 224;
  return (
    'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/' +
    `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_${pythonFloat(alpha)}_${size}_no_top.h5`
  );
}

export interface LoadOptions extends BuildOptions {
  /** `none`, `imagenet`, a URL, a Keras HDF5 file or a tfjs model directory / model.json. */
  weights: string;
  /** Expected sha256 of a downloaded or local weights file (checked when given). */
  sha256?: string;
  /** Where downloads are cached (needed for `imagenet` and URLs). */
  cacheDir?: string;
  onDownloadProgress?: (received: number, total?: number) => void;
  log?: (message: string) => void;
}

/** What a loaded model's weights are, recorded with the artifacts built from it. */
export interface WeightsInfo {
  /** The `weights` parameter as given. */
  source: string;
  kind: WeightsSource['kind'];
  /** The URL downloaded (`imagenet`, URLs). */
  url?: string;
  /** The local file or model.json read. */
  file?: string;
  /** sha256 of that file (for tfjs models: of model.json followed by its weight shards). */
  sha256?: string;
  /** Seed of a random initialisation (`none`). */
  seed?: number;
  /** Weight tensors and scalars assigned. */
  weightTensors: number;
  params: number;
}

/** Builds MobileNetV2 and loads the weights `options.weights` names into it. */
export async function loadMobileNetV2(
  tf: Tf,
  options: LoadOptions,
): Promise<{ model: LayersModel; weights: WeightsInfo }> {
  const isDirectory = await fs.stat(options.weights).then((s) => s.isDirectory(), () => false);
  const source = parseWeightsSpec(options.weights, isDirectory);
  const alpha = options.alpha ?? 1.0;
  const model = buildMobileNetV2(tf, { ...options, seed: source.kind === 'none' ? (options.seed ?? 0) : options.seed });
  const info: WeightsInfo = { source: options.weights, kind: source.kind, weightTensors: 0, params: 0 };

  const loadH5 = async (file: string) => {
    const { weights } = await readKerasH5(file);
    const report = assignLayerWeights(tf, model, weights, file);
    info.file = file;
    info.weightTensors = report.weights;
    info.params = report.params;
  };
  const checkSha = (actual: string, what: string) => {
    if (options.sha256 !== undefined && actual !== options.sha256.toLowerCase()) {
      throw new InputError(`weights ${what}: expected sha256 ${options.sha256}, got ${actual}`);
    }
  };

  switch (source.kind) {
    case 'none':
      info.seed = options.seed ?? 0;
      info.params = model.countParams();
      info.weightTensors = model.weights.length;
      break;
    case 'imagenet':
    case 'url': {
      const url = source.kind === 'url' ? source.url : imagenetWeightsUrl(alpha, model.inputs[0]!.shape[1] as number);
      if (!options.cacheDir) throw new Error(`bug: weights ${options.weights}: a download cache directory is needed`);
      options.log?.(`weights: ${url}`);
      const file = await download({
        url,
        sha256: options.sha256,
        cacheDir: options.cacheDir,
        onProgress: options.onDownloadProgress,
        log: options.log,
      });
      info.url = url;
      await loadH5(file);
      info.sha256 = await sha256File(file);
      break;
    }
    case 'h5': {
      info.sha256 = await sha256File(source.path);
      checkSha(info.sha256, source.path);
      await loadH5(source.path);
      break;
    }
    case 'tfjs': {
      const modelJson = source.path.endsWith('.json') ? source.path : path.join(source.path, 'model.json');
      const report = await loadTfjsLayerWeights(tf, model, modelJson);
      info.file = modelJson;
      info.sha256 = report.sha256;
      checkSha(info.sha256, modelJson);
      info.weightTensors = report.weights;
      info.params = report.params;
      break;
    }
    default: {
      unreachable(source, 'weights source');
    }
  }
  return { model, weights: info };
}

/**
 * Copies the weights of a saved tfjs layers model into `model`, by layer name and weight name,
 * as strictly as an HDF5 file (see `assignLayerWeights`). Returns the report and a sha256 over
 * model.json and its weight shards.
 */
export async function loadTfjsLayerWeights(
  tf: Tf,
  model: LayersModel,
  modelJson: string,
): Promise<{ weights: number; params: number; layers: number; sha256: string }> {
  const text = await fs.readFile(modelJson, 'utf8');
  const hash = createHash('sha256').update(text);
  const manifest = (JSON.parse(text) as { weightsManifest?: Array<{ paths: string[] }> }).weightsManifest ?? [];
  for (const group of manifest) {
    for (const shard of group.paths) hash.update(await fs.readFile(path.join(path.dirname(modelJson), shard)));
  }
  const saved = await tf.loadLayersModel(tf.io.fileSystem(modelJson));
  try {
    const weights = new Map<string, NamedWeight[]>();
    for (const layer of saved.layers) {
      if (layer.weights.length === 0) continue;
      weights.set(
        layer.name,
        layer.weights.map((variable) => ({
          name: shortWeightName(variable.originalName),
          fullName: variable.originalName,
          shape: variable.shape.map((d) => d ?? -1),
          values: variable.read().dataSync() as Float32Array,
        })),
      );
    }
    const report = assignLayerWeights(tf, model, weights, modelJson);
    return { ...report, sha256: hash.digest('hex') };
  } finally {
    saved.dispose();
  }
}

/** Saves `model` (architecture and weights) as a tfjs layers model in `dir` (model.json + shards). */
export async function saveLayersModel(model: LayersModel, dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await model.save(`file://${dir}`);
}
