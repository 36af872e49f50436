// The on-disk format of extracted features (written by extract-features; read by train-head,
// fine-tune and evaluate).
//
// A features artifact directory holds:
//
//   features.json               FeaturesMeta (below): model, weights, sets, shapes, dtypes
//   pooled-<set>.f32            rows × 1280 float32: GlobalAveragePooling2D of `out_relu`
//   boundary-<set>.f32 | .f16 | .u8
//                               rows × h × w × c: the activation entering the fine-tuned top
//                               (the output of `boundary.layerName`), float32, IEEE half, or 8-bit
//                               (per row: c float32 minima, c float32 steps, then h × w × c
//                               bytes; value = minimum + byte × step, per channel)
//   base/model.json + *.bin     the MobileNetV2 the features came from, as a tfjs layers model
//
// with <set> one of `views` (the training images, one block of rows per augmented view),
// `validation` and `test`. Rows are view-major like image sets (src/ml/dataset.ts): row
// `view * count + image`, so view v of a set is the contiguous rows [v·count, (v+1)·count).
// All numbers are little-endian. Without augmentation, `views` holds the split's training images
// as a single view.
//
// The base is stored in the artifact (about 9 MB at alpha 1.0) rather than referenced by path, so
// that fine-tune rebuilds exactly the network that produced the boundary activations
// (`loadFeatureBase`), whatever happens later to the weights file or the download cache.
// `weights` still records where the weights came from and their sha256.

import { promises as fs, readSync } from 'node:fs';
import * as path from 'node:path';
import type { LayersModel, Tensor } from '@tensorflow/tfjs-node';
import { boundaryFor, loadMobileNetV2, type Boundary, type Shape3, type WeightsInfo } from './mobilenet.ts';
import type { Tf } from './tf.ts';
import { InputError } from '../core/errors.ts';

export const FEATURES_FORMAT = 'pipe-features/1';
export const FEATURES_META_FILE = 'features.json';
export const BASE_DIR = 'base';
export const FEATURE_SETS = ['views', 'validation', 'test'] as const;

export type FeatureSetName = (typeof FEATURE_SETS)[number];
export type FeatureKind = 'pooled' | 'boundary';
export type FeatureDtype = 'float32' | 'float16' | 'uint8';

export interface FeatureSetMeta {
  /** Images in the set. */
  count: number;
  /** Views per image (epochs' augmentations for `views`; 1 otherwise). Rows = views × count. */
  views: number;
  /** Class index per image (length `count`; the same for every view). */
  labels: number[];
  /** Source file per image, relative to the data root (length `count`). */
  files: string[];
  /** Where the images came from: `<input slot>/<image set>`, e.g. `views/views` or `data/train`. */
  source: string;
  /** File names of the set's arrays, when extracted. */
  pooled?: string;
  boundary?: string;
}

export interface FeaturesMeta {
  format: typeof FEATURES_FORMAT;
  model: {
    architecture: 'mobilenet_v2';
    alpha: number;
    /** Input height, width, channels. */
    inputShape: Shape3;
    /** Applied to the uint8 pixels before the base: Keras's mobilenet_v2.preprocess_input. */
    preprocessing: 'x / 127.5 - 1';
    params: number;
  };
  weights: WeightsInfo;
  /** Directory (relative) of the tfjs layers model the features came from. */
  base: string;
  classNames: string[];
  /** Pooled features: one vector per row, always float32. Null when not extracted. */
  pooled: { layer: 'out_relu'; pooling: 'global-average'; dim: number; dtype: 'float32' } | null;
  /** Boundary activations for fine-tuning. Null when `fine_tune_at` was not set. */
  boundary: (Boundary & { dtype: FeatureDtype }) | null;
  sets: Record<FeatureSetName, FeatureSetMeta>;
}

/**
 * Bytes of one row of `rowShape` ([..., channels]) stored as `dtype`. An 8-bit row carries its own
 * scale: a float32 minimum and step per channel (8 bytes per channel) before its bytes.
 */
export function rowBytesOf(rowShape: readonly number[], dtype: FeatureDtype): number {
  const size = rowShape.reduce((a, b) => a * b, 1);
  if (dtype === 'uint8') return 8 * rowShape[rowShape.length - 1]! + size;
  return size * (dtype === 'float16' ? 2 : 4);
}

/** What the stored activations cost: bytes per row (one view of one image) and in all. */
export function activationBytes(rowShape: readonly number[], dtype: FeatureDtype, rows: number): Record<string, number> {
  const perView = rowBytesOf(rowShape, dtype);
  return { activation_bytes_per_view: perView, activation_bytes: perView * rows };
}

const EXTENSIONS: Record<FeatureDtype, string> = { float32: 'f32', float16: 'f16', uint8: 'u8' };

export function featureFileName(kind: FeatureKind, set: FeatureSetName, dtype: FeatureDtype = 'float32'): string {
  return `${kind}-${set}.${EXTENSIONS[dtype]}`;
}

export async function writeFeaturesMeta(dir: string, meta: FeaturesMeta): Promise<void> {
  await fs.writeFile(path.join(dir, FEATURES_META_FILE), JSON.stringify(meta, null, 1) + '\n');
}

export async function readFeaturesMeta(dir: string): Promise<FeaturesMeta> {
  let text: string;
  try {
    text = await fs.readFile(path.join(dir, FEATURES_META_FILE), 'utf8');
  } catch (cause) {
    throw new InputError(`no features in ${dir}: ${FEATURES_META_FILE} is missing`, { cause });
  }
  const meta = JSON.parse(text) as FeaturesMeta;
  if (meta.format !== FEATURES_FORMAT) {
    throw new InputError(`features in ${dir} have format ${String(meta.format)}, expected ${FEATURES_FORMAT}`);
  }
  return meta;
}

// ---------------------------------------------------------------------------------------------
// float16

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * IEEE 754 half-precision bits of `value`, rounded to nearest even (overflow -> ±Infinity; NaN -> a
 * quiet NaN of the same sign). The definition, value by value; float32ToFloat16 is its array form.
 */
export function toFloat16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // Inf, NaN
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow
  if (e <= 0) {
    if (e < -10) return sign; // underflows to ±0
    // Subnormal: shift the mantissa (with its implicit 1) into place, round to nearest even.
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mantissa & ((1 << shift) - 1);
    let result = mantissa >>> shift;
    if (rest > half || (rest === half && (result & 1))) result += 1;
    return sign | result;
  }
  let result = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (result & 1))) result += 1; // may carry into the exponent: still correct
  return sign | result;
}

/** The number whose half-precision bits are `bits`. */
export function fromFloat16Bits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/**
 * The half-precision bits of every value: toFloat16Bits over an array, bit for bit (test/ml/features.test.ts
 * checks it against toFloat16Bits on every special case and millions of random bit patterns), but
 * as one loop over the values' bits that reads no scratch array and calls nothing. On the write path of
 * extract-features and derive-activations, where activations are mostly normal numbers and zeros:
 * those take the first two branches.
 */
export function float32ToFloat16(values: Float32Array, out = new Uint16Array(values.length)): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const n = values.length;
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    const sign = (x >>> 16) & 0x8000;
    const abs = x & 0x7fffffff;
    if (abs >= 0x38800000 && abs < 0x47800000) {
      // A normal half (float32 exponent 113..142): rebias the exponent by 112, then round the 13
      // dropped bits to nearest even by adding 0xfff plus the kept lowest bit; a carry out of
      // the mantissa lands in the exponent, up to 0x7c00 (Infinity) as it should.
      out[i] = sign | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13);
    } else if (abs < 0x33000000) {
      out[i] = sign; // below 2^-25 (zeros included): ±0
    } else if (abs < 0x38800000) {
      // A subnormal half: the mantissa with its implicit 1, shifted by 126 − exponent (14..24 bits), rounded to nearest even.
      const shift = 126 - (abs >>> 23);
      const mantissa = (abs & 0x7fffff) | 0x800000;
      const half = 1 << (shift - 1);
      const rest = mantissa & ((1 << shift) - 1);
      const result = mantissa >>> shift;
      out[i] = sign | (rest > half || (rest === half && (result & 1)) ? result + 1 : result);
    } else {
      out[i] = sign | (abs > 0x7f800000 ? 0x7e00 : 0x7c00); // NaN (one quiet NaN), Infinity and overflow
    }
  }
  return out;
}

const halfTable = (() => {
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) table[bits] = fromFloat16Bits(bits);
  return table;
})();

export function float16ToFloat32(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  for (let i = 0; i < bits.length; i++) out[i] = halfTable[bits[i]!]!;
  return out;
}

// ---------------------------------------------------------------------------------------------
// 8-bit rows
//
// Each row (one view of one image, h × w × c, channels last) is scaled per channel: its minimum
// and a step of (maximum − minimum) / 255, both float32, and every value is the byte nearest to
// (value − minimum) / step. So every value is within half a step of what was computed: 1/510 of
// its channel's range in that image, whatever the activations' magnitude. A row depends on its
// own values only, so a sharded pass writes the same bytes as one job.

const BYTE_MAX = 255;

/** `values` (whole rows of `rowSize` values, `channels` last) as 8-bit rows (rowBytesOf). */
export function quantizeRows(values: Float32Array, rowSize: number, channels: number): Uint8Array {
  if (rowSize % channels !== 0 || values.length % rowSize !== 0) {
    throw new Error(`bug: quantizeRows: ${values.length} values are not rows of ${rowSize} with ${channels} channels`);
  }
  const rows = values.length / rowSize;
  const rowBytes = 8 * channels + rowSize;
  const out = new Uint8Array(rows * rowBytes);
  // The row's header (minima, then steps) is built aligned here and copied: rows of an odd size
  // put the next header at any byte offset.
  const header = new Float32Array(2 * channels);
  const headerBytes = new Uint8Array(header.buffer);
  const lo = header.subarray(0, channels);
  const step = header.subarray(channels);
  const hi = new Float32Array(channels);
  const inverse = new Float32Array(channels);
  for (let r = 0; r < rows; r++) {
    const base = r * rowSize;
    const o = r * rowBytes;
    lo.fill(Infinity);
    hi.fill(-Infinity);
    for (let i = 0; i < rowSize; i += channels) {
      for (let c = 0; c < channels; c++) {
        const v = values[base + i + c]!;
        if (v < lo[c]!) lo[c] = v;
        if (v > hi[c]!) hi[c] = v;
        if (v !== v) hi[c] = NaN; // a NaN compares with nothing: marked, refused below
      }
    }
    for (let c = 0; c < channels; c++) {
      const range = hi[c]! - lo[c]!;
      if (!Number.isFinite(range)) {
        throw new InputError(`activations that are not finite numbers (channel ${c} of row ${r}: ${lo[c]} … ${hi[c]}): 8-bit storage cannot hold them`);
      }
      step[c] = range / BYTE_MAX;
      inverse[c] = step[c]! > 0 ? 1 / step[c]! : 0;
    }
    out.set(headerBytes, o);
    const q = o + 8 * channels;
    for (let i = 0; i < rowSize; i += channels) {
      for (let c = 0; c < channels; c++) {
        // Rounded half up (the value is ≥ lo, so the truncation is a floor); Uint8Array's own
        // conversion would wrap 256 to 0, hence the clamp (a range rounded in float32).
        const byte = ((values[base + i + c]! - lo[c]!) * inverse[c]! + 0.5) | 0;
        out[q + i + c] = byte > BYTE_MAX ? BYTE_MAX : byte;
      }
    }
  }
  return out;
}

/** 8-bit rows (quantizeRows) back as float32: minimum + byte × step, per channel. */
export function dequantizeRows(bytes: Uint8Array, rowSize: number, channels: number, out?: Float32Array): Float32Array {
  const rowBytes = 8 * channels + rowSize;
  if (rowSize % channels !== 0 || bytes.length % rowBytes !== 0) {
    throw new Error(`bug: dequantizeRows: ${bytes.length} bytes are not rows of ${rowBytes}`);
  }
  const rows = bytes.length / rowBytes;
  const result = out ?? new Float32Array(rows * rowSize);
  const header = new Float32Array(2 * channels);
  const headerBytes = new Uint8Array(header.buffer);
  const minimum = header.subarray(0, channels);
  const step = header.subarray(channels);
  for (let r = 0; r < rows; r++) {
    const o = r * rowBytes;
    headerBytes.set(bytes.subarray(o, o + 8 * channels));
    const q = o + 8 * channels;
    const base = r * rowSize;
    for (let i = 0; i < rowSize; i += channels) {
      for (let c = 0; c < channels; c++) result[base + i + c] = minimum[c]! + bytes[q + i + c]! * step[c]!;
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Writing and reading arrays

/** Appends rows of float32 values to a feature file, converting to the file's dtype. */
export class FeatureWriter {
  private rowsWritten = 0;

  readonly rowSize: number;
  private readonly channels: number;

  private constructor(
    readonly file: string,
    private readonly handle: fs.FileHandle,
    rowShape: readonly number[],
    readonly dtype: FeatureDtype,
  ) {
    this.rowSize = rowShape.reduce((a, b) => a * b, 1);
    this.channels = rowShape[rowShape.length - 1]!;
  }

  /** A new file of rows shaped `rowShape` ([dim] or [h, w, c]) stored as `dtype`. */
  static async create(file: string, rowShape: readonly number[], dtype: FeatureDtype): Promise<FeatureWriter> {
    return new FeatureWriter(file, await fs.open(file, 'w'), rowShape, dtype);
  }

  get rows(): number {
    return this.rowsWritten;
  }

  /** Appends `values.length / rowSize` rows. */
  async append(values: Float32Array): Promise<void> {
    if (values.length % this.rowSize !== 0) {
      throw new Error(`bug: ${this.file}: ${values.length} values are not whole rows of ${this.rowSize}`);
    }
    const data =
      this.dtype === 'uint8'
        ? quantizeRows(values, this.rowSize, this.channels)
        : this.dtype === 'float16'
          ? float32ToFloat16(values)
          : values;
    await this.handle.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    this.rowsWritten += values.length / this.rowSize;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

export interface FeatureArray {
  /** float32 values (float16 and 8-bit files are converted). */
  data: Float32Array;
  /** [rows, ...row shape]: [rows, 1280] or [rows, h, w, c]. */
  shape: number[];
}

/**
 * Reads rows of one set's pooled features or boundary activations through one open file, as
 * float32 (float16 and 8-bit files are converted): positioned reads, so a batch loop opens the file once and
 * files past 2 GiB read like any other.
 */
export class FeatureReader {
  readonly rowShape: number[];
  readonly rowSize: number;
  /** Bytes of one row in the file. */
  readonly rowBytes: number;

  private constructor(
    readonly file: string,
    readonly setMeta: FeatureSetMeta,
    readonly dtype: FeatureDtype,
    rowShape: number[],
    private readonly handle: fs.FileHandle,
  ) {
    this.rowShape = rowShape;
    this.rowSize = rowShape.reduce((a, b) => a * b, 1);
    this.rowBytes = rowBytesOf(rowShape, dtype);
  }

  static async open(dir: string, meta: FeaturesMeta, set: FeatureSetName, kind: FeatureKind): Promise<FeatureReader> {
    const setMeta = meta.sets[set];
    const file = kind === 'pooled' ? setMeta.pooled : setMeta.boundary;
    const rowShape = kind === 'pooled' ? (meta.pooled ? [meta.pooled.dim] : undefined) : meta.boundary?.shape;
    const dtype: FeatureDtype = kind === 'pooled' ? 'float32' : (meta.boundary?.dtype ?? 'float32');
    if (!file || !rowShape) throw new InputError(`features in ${dir} have no ${kind} values for ${set}`);
    const full = path.join(dir, file);
    const handle = await fs.open(full, 'r');
    const reader = new FeatureReader(full, setMeta, dtype, [...rowShape], handle);
    try {
      const { size } = await handle.stat();
      const expected = reader.rows * reader.rowBytes;
      if (size !== expected) throw new InputError(`${full}: ${size} bytes, expected ${expected}`);
    } catch (error) {
      await handle.close();
      throw error;
    }
    return reader;
  }

  /** Rows in the file: count × views. */
  get rows(): number {
    return this.setMeta.count * this.setMeta.views;
  }

  /** Rows [start, start + count) as float32, shaped [count, ...row shape]. */
  async read(start: number, count: number): Promise<FeatureArray> {
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > this.rows) {
      throw new Error(`bug: ${this.file}: rows ${start}…${start + count - 1} out of range (0…${this.rows - 1})`);
    }
    const { rowBytes } = this;
    const bytes = count * rowBytes;
    const buffer = new ArrayBuffer(bytes);
    const view = new Uint8Array(buffer);
    const position = start * rowBytes;
    if (!Number.isSafeInteger(position + bytes)) throw new Error(`bug: ${this.file}: row ${start} has no exact offset`);
    let done = 0;
    while (done < bytes) {
      const { bytesRead } = await this.handle.read(view, done, bytes - done, position + done);
      if (bytesRead === 0) throw this.endOfFile();
      done += bytesRead;
    }
    return { data: this.toFloat32(buffer), shape: [count, ...this.rowShape] };
  }

  /**
   * The rows `rows` (any order, repeats allowed) as float32, back to back: a training batch of a
   * shuffled epoch, read where it lies in the file (runs of consecutive rows in one read each).
   * Synchronous, for the batch callbacks of a training loop; the page cache serves a file read
   * every epoch, and memory is the batch whatever the number of rows.
   */
  readRowsSync(rows: readonly number[]): Float32Array {
    const { rowBytes } = this;
    const buffer = new ArrayBuffer(rows.length * rowBytes);
    const view = new Uint8Array(buffer);
    let i = 0;
    while (i < rows.length) {
      const first = rows[i]!;
      if (!Number.isInteger(first) || first < 0 || first >= this.rows) throw new Error(`bug: ${this.file}: row ${first} out of range (0…${this.rows - 1})`);
      let run = 1;
      while (i + run < rows.length && rows[i + run] === first + run && first + run < this.rows) run++;
      const bytes = run * rowBytes;
      let done = 0;
      while (done < bytes) {
        const read = readSync(this.handle.fd, view, i * rowBytes + done, bytes - done, first * rowBytes + done);
        if (read === 0) throw this.endOfFile();
        done += read;
      }
      i += run;
    }
    return this.toFloat32(buffer);
  }

  /**
   * The rows `rows` as a tensor [rows.length, ...row shape] (readRowsSync): a training batch of
   * train-head (pooled features) or fine-tune (boundary activations), read where it lies.
   */
  tensorOfRows(tf: Tf, rows: readonly number[]): Tensor {
    return tf.tensor(this.readRowsSync(rows), [rows.length, ...this.rowShape]);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  // `read` and `readRowsSync` share everything but their loop of reads: one awaits the file
  // handle's positioned reads (for batch loops that go on with other work meanwhile), the other
  // makes them synchronously (for a training loop's batch callbacks).

  /** The bytes of whole rows as float32 values (float16 and 8-bit files are converted). */
  private toFloat32(buffer: ArrayBuffer): Float32Array {
    if (this.dtype === 'uint8') return dequantizeRows(new Uint8Array(buffer), this.rowSize, this.rowShape[this.rowShape.length - 1]!);
    return this.dtype === 'float16' ? float16ToFloat32(new Uint16Array(buffer)) : new Float32Array(buffer);
  }

  private endOfFile(): InputError {
    return new InputError(`${this.file}: unexpected end of file`);
  }
}

/**
 * Reads the pooled features or boundary activations of a set, all rows or only those of one view
 * (`view`: rows view·count … (view+1)·count − 1), as float32; `rows` narrows that to `count` rows
 * from `start`. Opens the file for this one read: a loop over batches should hold a FeatureReader.
 */
export async function readFeatures(
  dir: string,
  meta: FeaturesMeta,
  set: FeatureSetName,
  kind: FeatureKind,
  options: { view?: number; rows?: { start: number; count: number } } = {},
): Promise<FeatureArray> {
  const setMeta = meta.sets[set];
  let firstRow = 0;
  let rows = setMeta.count * setMeta.views;
  if (options.view !== undefined) {
    if (!Number.isInteger(options.view) || options.view < 0 || options.view >= setMeta.views) {
      throw new Error(`bug: features ${set}: view ${options.view} out of range (0…${setMeta.views - 1})`);
    }
    firstRow = options.view * setMeta.count;
    rows = setMeta.count;
  }
  if (options.rows !== undefined) {
    const { start, count } = options.rows;
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > rows) {
      throw new Error(`bug: features ${set}: rows ${start}…${start + count - 1} out of range (0…${rows - 1})`);
    }
    firstRow += start;
    rows = count;
  }
  const reader = await FeatureReader.open(dir, meta, set, kind);
  try {
    return await reader.read(firstRow, rows);
  } finally {
    await reader.close();
  }
}

/**
 * Rebuilds the MobileNetV2 the features came from (same alpha, input size and weights), and the
 * boundary when boundary activations were extracted. With `fineTuneAt`, the boundary is
 * recomputed for it and must be the stored one (fine_tune_at 100 and 101 share a boundary).
 */
export async function loadFeatureBase(
  tf: Tf,
  dir: string,
  options: { fineTuneAt?: number } = {},
): Promise<{ model: LayersModel; meta: FeaturesMeta; boundary: Boundary | null }> {
  const meta = await readFeaturesMeta(dir);
  const { model } = await loadMobileNetV2(tf, {
    alpha: meta.model.alpha,
    inputSize: [meta.model.inputShape[0], meta.model.inputShape[1]],
    weights: path.join(dir, meta.base),
  });
  let boundary: Boundary | null = meta.boundary;
  if (options.fineTuneAt !== undefined) {
    const wanted = boundaryFor(options.fineTuneAt, model.layers);
    if (!meta.boundary || wanted.layerName !== meta.boundary.layerName) {
      model.dispose();
      throw new InputError(
        `fine_tune_at ${options.fineTuneAt} cuts MobileNetV2 at ${wanted.layerName}, but the features in ${dir} ` +
          (meta.boundary ? `hold activations of ${meta.boundary.layerName}` : 'hold no boundary activations'),
      );
    }
    boundary = wanted;
  }
  return { model, meta, boundary };
}
