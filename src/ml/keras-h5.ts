// Reads Keras weights from HDF5 files and assigns layer-named weights to a tfjs model, strictly.
//
// The layout is the one keras-applications publishes its weights in (Keras 2 `save_weights`):
//   root attribute `layer_names`            every layer of the model, in order
//   group `<layer>`, attribute `weight_names` e.g. `bn_Conv1/gamma:0`, … (empty for weightless layers)
//   dataset `<layer>/<weight name>`           e.g. `/bn_Conv1/bn_Conv1/gamma:0`, kernels in HWIO order
// Whole-model files (`model.save('x.h5')`) keep the same structure under a `model_weights` group;
// both are read.
//
// Assignment is by layer name and, inside a layer, by weight name (`kernel`, `depthwise_kernel`,
// `gamma`, `beta`, `moving_mean`, `moving_variance`, `bias`): every weight of the model must be
// found with the same shape, every weight of the file must be used. All problems are reported at
// once, each naming the layer and the weight.

import { promises as fs } from 'node:fs';
import type { LayersModel } from '@tensorflow/tfjs-node';
import type { Tf } from './tf.ts';
import { InputError, messageOf } from '../core/errors.ts';

/** One weight as a file stores it. */
export interface NamedWeight {
  /** The weight's short name: `kernel`, `depthwise_kernel`, `gamma`, `moving_variance`, … */
  name: string;
  /** Its name in the source, e.g. `bn_Conv1/gamma:0`, for messages. */
  fullName: string;
  shape: number[];
  values: Float32Array;
}

/** Weights by layer name, in the source's layer order. */
export type LayerWeights = Map<string, NamedWeight[]>;

export interface KerasH5Weights {
  file: string;
  /** The root `layer_names` attribute: all layers, also weightless ones. */
  layerNames: string[];
  weights: LayerWeights;
  kerasVersion?: string;
  backend?: string;
}

export interface AssignReport {
  /** Layers that received weights. */
  layers: number;
  /** Weight tensors assigned. */
  weights: number;
  /** Scalars assigned. */
  params: number;
}

const KNOWN_WEIGHTS = /^(kernel|depthwise_kernel|bias|gamma|beta|moving_mean|moving_variance)(_\d+)?$/;

/** `bn_Conv1/gamma:0` -> `gamma`; tfjs's uniquified `Conv1/kernel_1` -> `kernel`. */
export function shortWeightName(fullName: string): string {
  const name = fullName.slice(fullName.lastIndexOf('/') + 1).replace(/:\d+$/, '');
  const known = KNOWN_WEIGHTS.exec(name);
  return known ? known[1]! : name;
}

type H5Module = typeof import('h5wasm/node');
let h5: Promise<H5Module> | undefined;

/** h5wasm's Node build, initialised once. Node ≥ 21 defines `navigator`, which misleads its
 * environment detection (see the h5wasm README): hide it while the module loads. */
export function loadH5wasm(): Promise<H5Module> {
  h5 ??= (async () => {
    const navigatorProperty = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
    if (navigatorProperty?.configurable) {
      Object.defineProperty(globalThis, 'navigator', { value: undefined, configurable: true });
    }
    try {
      const module = await import('h5wasm/node');
      await module.ready;
      return module;
    } finally {
      if (navigatorProperty?.configurable) Object.defineProperty(globalThis, 'navigator', navigatorProperty);
    }
  })();
  return h5;
}

function stringList(value: unknown): string[] {
  if (Array.isArray(value)) return value.map((item) => String(item));
  if (typeof value === 'string') return value === '' ? [] : [value];
  if (value == null) return [];
  // An empty attribute can come back as an empty typed array.
  if (ArrayBuffer.isView(value)) return [];
  return [String(value)];
}

const HDF5_SIGNATURE = Buffer.from([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]);

/** What the superblock says about a file: its size now and the size HDF5 recorded when writing it. */
interface Superblock {
  size: number;
  /** Base address + end-of-file address (infinite when the superblock itself is cut short); undefined for a superblock version this does not know. */
  recordedSize?: number;
}

/**
 * The HDF5 superblock of `file`, found at one of the offsets the format allows (0, 512, 1024, 2048,
 * …), or undefined when there is none. Checked before h5wasm opens a file, because HDF5 prints a
 * diagnostic stack to stderr when it opens something else, and h5wasm then throws only
 * "name not defined!".
 */
async function readSuperblock(file: string): Promise<Superblock | undefined> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.alloc(HDF5_SIGNATURE.length);
    for (let offset = 0; offset + buffer.length <= size; offset = offset === 0 ? 512 : offset * 2) {
      await handle.read(buffer, 0, buffer.length, offset);
      if (!buffer.equals(HDF5_SIGNATURE)) continue;
      const head = Buffer.alloc(64);
      const { bytesRead } = await handle.read(head, 0, head.length, offset);
      // No HDF5 file is shorter than its superblock plus the root group's header (> 64 bytes).
      if (bytesRead < head.length) return { size, recordedSize: Number.POSITIVE_INFINITY };
      return { size, recordedSize: recordedSize(head) };
    }
    return undefined;
  } finally {
    await handle.close();
  }
}

/**
 * The file size a superblock records (HDF5 file format spec, "Superblock"): versions 0 and 1 keep
 * the size of offsets at byte 13 and the base and end-of-file addresses from byte 24 (28 in
 * version 1); versions 2 and 3 keep the size of offsets at byte 9 and the addresses from byte 12.
 */
function recordedSize(head: Buffer): number | undefined {
  const version = head[8];
  const layout = version === 0 ? { sizeAt: 13, baseAt: 24 } : version === 1 ? { sizeAt: 13, baseAt: 28 } : version === 2 || version === 3 ? { sizeAt: 9, baseAt: 12 } : undefined;
  if (!layout) return undefined;
  const width = head[layout.sizeAt];
  if (width !== 2 && width !== 4 && width !== 8) return undefined;
  const address = (at: number) => (at + width <= head.length ? Number(head.readUIntLE(at, Math.min(width, 6))) : undefined);
  const base = address(layout.baseAt);
  // The end-of-file address follows the base and one other address (free space or extension).
  const end = address(layout.baseAt + 2 * width);
  return base === undefined || end === undefined ? undefined : base + end;
}

/** Reads every weight of a Keras HDF5 weights file into memory (float32). */
export async function readKerasH5(file: string): Promise<KerasH5Weights> {
  let superblock: Superblock | undefined;
  try {
    superblock = await readSuperblock(file);
  } catch (cause) {
    throw new InputError(`cannot read weights file ${file}: ${(cause as Error).message}`, { cause, file });
  }
  if (!superblock) throw new InputError(`${file} is not an HDF5 file (no HDF5 signature)`, { file });
  const incomplete = (why: string, cause?: unknown) => new InputError(`${file}: not a complete Keras HDF5 weights file (${why})`, { cause, file });
  if (superblock.recordedSize !== undefined && superblock.size < superblock.recordedSize) {
    const of = Number.isFinite(superblock.recordedSize) ? `of its ${superblock.recordedSize} bytes` : 'bytes, shorter than an HDF5 header';
    throw incomplete(`truncated: ${superblock.size} ${of}`);
  }
  const h5wasm = await loadH5wasm();
  let h5file: InstanceType<H5Module['File']> | undefined;
  try {
    h5file = new h5wasm.File(file, 'r');
    return readWeights(h5wasm, h5file, file);
  } catch (error) {
    if (error instanceof InputError) throw error;
    // h5wasm reports a damaged file only as "name not defined!" or the like.
    throw incomplete(`truncated or corrupt: the HDF5 reader says "${messageOf(error)}"`, error);
  } finally {
    h5file?.close();
  }
}

function readWeights(h5wasm: H5Module, h5file: InstanceType<H5Module['File']>, file: string): KerasH5Weights {
  const notKeras = (why: string) => new InputError(`${file}: ${why}`, { file });
  let root: InstanceType<H5Module['Group']> = h5file;
  const nested = h5file.keys().includes('model_weights') ? h5file.get('model_weights') : undefined;
  if (nested instanceof h5wasm.Group) root = nested;
  const layerNamesAttr = root.attrs['layer_names'];
  if (!layerNamesAttr) {
    throw new InputError(`${file} is not a Keras weights file: no layer_names attribute`, { file });
  }
  const layerNames = stringList(layerNamesAttr.value);
  const weights: LayerWeights = new Map();
  for (const layerName of layerNames) {
    const group = root.get(layerName);
    if (!(group instanceof h5wasm.Group)) throw notKeras(`layer ${layerName} has no group`);
    const weightNames = stringList(group.attrs['weight_names']?.value);
    if (weightNames.length === 0) continue;
    const layerWeights = weightNames.map((fullName): NamedWeight => {
      const dataset = group.get(fullName);
      if (!(dataset instanceof h5wasm.Dataset)) {
        throw notKeras(`layer ${layerName}: weight ${fullName} has no dataset`);
      }
      const raw = dataset.value;
      const shape = (dataset.shape ?? []).map(Number);
      let values: Float32Array;
      if (raw instanceof Float32Array) values = raw;
      else if (raw instanceof Float64Array) values = Float32Array.from(raw);
      else throw notKeras(`layer ${layerName}: weight ${fullName} is not a float array (${dataset.dtype})`);
      return { name: shortWeightName(fullName), fullName, shape, values };
    });
    weights.set(layerName, layerWeights);
  }
  const attr = (name: string) => {
    const value = h5file.attrs[name]?.value ?? root.attrs[name]?.value;
    return value == null ? undefined : String(value);
  };
  return { file, layerNames, weights, kerasVersion: attr('keras_version'), backend: attr('backend') };
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/**
 * Sets every weight of `model` from `weights` (by layer name and weight name). Checks first, assigns
 * only when everything matches: a missing layer or weight, an extra one, or a shape mismatch throws
 * one error listing every problem, each as `layer <name>: weight <name>: …`.
 */
export function assignLayerWeights(tf: Tf, model: LayersModel, weights: LayerWeights, source: string): AssignReport {
  const problems: string[] = [];
  const assignments: Array<{ layer: LayersModel['layers'][number]; values: NamedWeight[] }> = [];
  const modelLayers = new Set<string>();
  for (const layer of model.layers) {
    modelLayers.add(layer.name);
    const variables = layer.weights;
    const given = weights.get(layer.name) ?? [];
    if (variables.length === 0) {
      if (given.length > 0) problems.push(`layer ${layer.name}: the model has no weights, the file has ${given.map((w) => w.fullName).join(', ')}`);
      continue;
    }
    if (given.length === 0) {
      problems.push(`layer ${layer.name}: missing in the file (the model expects ${variables.map((v) => shortWeightName(v.originalName)).join(', ')})`);
      continue;
    }
    const byName = new Map(given.map((weight) => [weight.name, weight]));
    const ordered: NamedWeight[] = [];
    for (const variable of variables) {
      const name = shortWeightName(variable.originalName);
      const shape = variable.shape.map((d) => d ?? -1);
      const weight = byName.get(name);
      if (!weight) {
        problems.push(`layer ${layer.name}: weight ${name}: missing in the file`);
        continue;
      }
      byName.delete(name);
      if (!sameShape(weight.shape, shape)) {
        problems.push(`layer ${layer.name}: weight ${name}: shape ${fmt(weight.shape)} in the file, the model expects ${fmt(shape)}`);
        continue;
      }
      const size = shape.reduce((a, b) => a * b, 1);
      if (weight.values.length !== size) {
        problems.push(`layer ${layer.name}: weight ${name}: ${weight.values.length} values for shape ${fmt(weight.shape)}`);
        continue;
      }
      ordered.push(weight);
    }
    for (const extra of byName.values()) problems.push(`layer ${layer.name}: weight ${extra.fullName}: not a weight of the model`);
    if (ordered.length === variables.length) assignments.push({ layer, values: ordered });
  }
  for (const [layerName, given] of weights) {
    if (!modelLayers.has(layerName) && given.length > 0) {
      problems.push(`layer ${layerName}: in the file (${given.map((w) => w.fullName).join(', ')}) but not in the model`);
    }
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 20);
    if (problems.length > shown.length) shown.push(`… and ${problems.length - shown.length} more`);
    throw new InputError(`weights ${source} do not fit ${model.name}:\n  ${shown.join('\n  ')}`);
  }
  let params = 0;
  let count = 0;
  for (const { layer, values } of assignments) {
    const tensors = values.map((weight) => tf.tensor(weight.values, weight.shape, 'float32'));
    layer.setWeights(tensors);
    tf.dispose(tensors);
    count += values.length;
    params += values.reduce((sum, weight) => sum + weight.values.length, 0);
  }
  return { layers: assignments.length, weights: count, params };
}

/** Reads a Keras HDF5 weights file and assigns it to `model` (see `assignLayerWeights`). */
export async function loadKerasH5Weights(tf: Tf, model: LayersModel, file: string): Promise<AssignReport> {
  const { weights } = await readKerasH5(file);
  return assignLayerWeights(tf, model, weights, file);
}
