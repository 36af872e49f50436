// The recipe's classification head: GlobalAveragePooling2D → Dropout(rate) → Dense(units) logit(s).
// Keras names the layers `global_average_pooling2d`, `dropout` and `dense`; the Dense layer starts
// as Keras's default (glorot_uniform kernel, zero bias). Pooling has no weights, so the head's
// weights are the Dense kernel [inputDim, units] and bias [units]: 1,281 values for 1280 features
// and one logit.
//
// On disk (in a train-head or fine-tune artifact):
//   head.json   {format, inputDim, units, dropout, task, classNames, weights: [{name, shape}]}
//   head.bin    float32 little-endian, the weights in that order (kernel row-major, then bias)

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type * as tfTypes from '@tensorflow/tfjs-node';
import type { Tf } from './tf.ts';
import { type Task, dropout as applyDropout, glorotUniform, logitUnits, rng } from './train.ts';
import { InputError } from '../core/errors.ts';

type Tensor = tfTypes.Tensor;
type Variable = tfTypes.Variable;

export const HEAD_FORMAT = 'pipe-head/1';
export const HEAD_LAYER_NAMES = { pooling: 'global_average_pooling2d', dropout: 'dropout', dense: 'dense' } as const;

export interface HeadWeights {
  inputDim: number;
  units: number;
  /** Dropout rate before the Dense layer (active in training only). */
  dropout: number;
  task: Task;
  classNames: string[];
  /** Row-major [inputDim, units]. */
  kernel: Float32Array;
  bias: Float32Array;
}

interface HeadFile {
  format: typeof HEAD_FORMAT;
  inputDim: number;
  units: number;
  dropout: number;
  task: Task;
  classNames: string[];
  weights: Array<{ name: string; shape: number[] }>;
}

/** A fresh head with Keras's Dense defaults, seeded. */
export function initHead(spec: {
  inputDim: number;
  task: Task;
  dropout: number;
  classNames: string[];
  seed: number;
}): HeadWeights {
  const units = logitUnits(spec.task);
  return {
    inputDim: spec.inputDim,
    units,
    dropout: spec.dropout,
    task: spec.task,
    classNames: spec.classNames,
    kernel: glorotUniform(spec.inputDim, units, rng(spec.seed)),
    bias: new Float32Array(units),
  };
}

export function headParamCount(head: Pick<HeadWeights, 'inputDim' | 'units'>): number {
  return head.inputDim * head.units + head.units;
}

export async function writeHead(dir: string, head: HeadWeights): Promise<void> {
  const file: HeadFile = {
    format: HEAD_FORMAT,
    inputDim: head.inputDim,
    units: head.units,
    dropout: head.dropout,
    task: head.task,
    classNames: head.classNames,
    weights: [
      { name: `${HEAD_LAYER_NAMES.dense}/kernel`, shape: [head.inputDim, head.units] },
      { name: `${HEAD_LAYER_NAMES.dense}/bias`, shape: [head.units] },
    ],
  };
  const bytes = new Float32Array(head.kernel.length + head.bias.length);
  bytes.set(head.kernel, 0);
  bytes.set(head.bias, head.kernel.length);
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'head.bin'), new Uint8Array(bytes.buffer));
  await fs.writeFile(path.join(dir, 'head.json'), JSON.stringify(file, null, 2));
}

export async function readHead(dir: string): Promise<HeadWeights> {
  let file: HeadFile;
  try {
    file = JSON.parse(await fs.readFile(path.join(dir, 'head.json'), 'utf8')) as HeadFile;
  } catch (cause) {
    throw new InputError(`no head weights (head.json) in ${dir}`, { cause });
  }
  if (file.format !== HEAD_FORMAT) throw new InputError(`${dir}/head.json: unknown format ${String(file.format)}`);
  const buffer = await fs.readFile(path.join(dir, 'head.bin'));
  const kernelSize = file.inputDim * file.units;
  if (buffer.byteLength !== (kernelSize + file.units) * 4) {
    throw new InputError(`${dir}/head.bin: ${buffer.byteLength} bytes, expected ${(kernelSize + file.units) * 4}`);
  }
  const values = new Float32Array(buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength));
  return {
    inputDim: file.inputDim,
    units: file.units,
    dropout: file.dropout,
    task: file.task,
    classNames: file.classNames,
    kernel: values.slice(0, kernelSize),
    bias: values.slice(kernelSize),
  };
}

/** The head's weights as trainable tfjs variables, applied to pooled features. */
export class HeadVariables {
  readonly kernel: Variable;
  readonly bias: Variable;
  constructor(
    private readonly tf: Tf,
    readonly spec: HeadWeights,
  ) {
    // Unnamed: tfjs variable names are global to the engine, and a process may hold several heads.
    this.kernel = tf.variable(tf.tensor2d(spec.kernel, [spec.inputDim, spec.units]));
    this.bias = tf.variable(tf.tensor1d(spec.bias));
  }

  get vars(): Variable[] {
    return [this.kernel, this.bias];
  }

  /** Logits of pooled features [n, inputDim]; in training, dropout (seeded) comes first. */
  logits(pooled: Tensor, training: boolean, dropoutSeed = 0): Tensor {
    const tf = this.tf;
    return tf.tidy(() => {
      const x = training ? applyDropout(tf, pooled, this.spec.dropout, dropoutSeed) : pooled;
      return x.matMul(this.kernel).add(this.bias);
    });
  }

  /** Logits of a 4-d activation [n, h, w, c]: global average pooling, then the head. */
  logitsOfActivation(activation: Tensor, training: boolean, dropoutSeed = 0): Tensor {
    return this.tf.tidy(() => this.logits(activation.mean([1, 2]), training, dropoutSeed));
  }

  /** The current values as plain arrays. */
  weights(): HeadWeights {
    return {
      ...this.spec,
      kernel: new Float32Array(this.kernel.dataSync()),
      bias: new Float32Array(this.bias.dataSync()),
    };
  }

  dispose(): void {
    this.kernel.dispose();
    this.bias.dispose();
  }
}

/**
 * The head as tfjs layers, for a whole saved model: pooling → dropout → dense, weights set.
 * Returns the output of the dense layer for the given symbolic input.
 */
export function applyHeadLayers(tf: Tf, input: tfTypes.SymbolicTensor, head: HeadWeights): tfTypes.SymbolicTensor {
  const pooled = tf.layers.globalAveragePooling2d({ name: HEAD_LAYER_NAMES.pooling }).apply(input);
  const dropped = tf.layers.dropout({ rate: head.dropout, name: HEAD_LAYER_NAMES.dropout }).apply(pooled);
  const dense = tf.layers.dense({ units: head.units, name: HEAD_LAYER_NAMES.dense });
  const out = dense.apply(dropped) as tfTypes.SymbolicTensor;
  dense.setWeights([tf.tensor2d(head.kernel, [head.inputDim, head.units]), tf.tensor1d(head.bias)]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The whole classifier, as saved by evaluate and read by `pipe predict`

export const CLASSIFIER_FORMAT = 'pipe-classifier/1';

/** Stored in the saved model's model.json (`userDefinedMetadata`). */
export interface ClassifierMetadata {
  format: typeof CLASSIFIER_FORMAT;
  classNames: string[];
  task: Task;
  /** Height, width, channels of the raw image the model takes (RGB, values 0..255). */
  inputShape: [number, number, number];
  /** The model's output: logits (sigmoid / softmax give probabilities), as the recipe's model. */
  output: 'logits';
  /** Applied inside the model, by its first layer. */
  preprocessing: 'x / 127.5 - 1';
}

/**
 * One flat tfjs LayersModel for raw pixels: `image` (h×w×3, 0..255) → `preprocess` (Rescaling
 * x/127.5 − 1, Keras's mobilenet_v2.preprocess_input) → the base's layers (the very layer objects
 * of `base`, so its current weights) → the head's pooling, dropout and dense layers. Output: logits.
 */
export function buildClassifier(tf: Tf, base: tfTypes.LayersModel, head: HeadWeights): tfTypes.LayersModel {
  const inputLayer = base.layers[0]!;
  const shape = (base.inputs[0]!.shape.slice(1) as number[]);
  const image = tf.input({ shape, name: 'image' });
  const scaled = tf.layers.rescaling({ scale: 1 / 127.5, offset: -1, name: 'preprocess' }).apply(image) as tfTypes.SymbolicTensor;
  const outputs = new Map<string, tfTypes.SymbolicTensor>([[inputLayer.name, scaled]]);
  for (const layer of base.layers.slice(1)) {
    const inputs = (layer.inboundNodes[0]?.inboundLayers ?? []).map((source) => {
      const tensor = outputs.get(source.name);
      if (!tensor) throw new Error(`bug: buildClassifier: layer ${layer.name} reads ${source.name}, which is not computed before it`);
      return tensor;
    });
    outputs.set(layer.name, layer.apply(inputs.length === 1 ? inputs[0]! : inputs) as tfTypes.SymbolicTensor);
  }
  const last = outputs.get(base.layers[base.layers.length - 1]!.name)!;
  const logits = applyHeadLayers(tf, last, head);
  const model = tf.model({ inputs: image, outputs: logits, name: 'classifier' });
  const metadata: ClassifierMetadata = {
    format: CLASSIFIER_FORMAT,
    classNames: head.classNames,
    task: head.task,
    inputShape: shape as [number, number, number],
    output: 'logits',
    preprocessing: 'x / 127.5 - 1',
  };
  model.setUserDefinedMetadata(metadata as unknown as Record<string, unknown>);
  return model;
}
