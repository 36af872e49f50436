// Image files to pixels exactly as Keras `image_dataset_from_directory` makes them.
//
// Keras decodes with `tf.io.decode_image(bytes, channels=3, expand_animations=False)` (grayscale
// becomes RGB, an alpha channel is dropped, a GIF keeps its first frame), then resizes with
// `tf.image.resize(img, size, 'bilinear')`: bilinear, half-pixel centres, no antialiasing, no
// aspect-preserving crop; values are float32 in [0, 255]. We do the same with the same TensorFlow
// kernels and round to uint8 for storage (see dataset.ts).

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Tf } from './tf.ts';
import { InputError } from '../core/errors.ts';
import { entryKind } from '../util/files.ts';

/** The extensions Keras accepts (compared case-insensitively). */
export const IMAGE_EXTENSIONS = ['.bmp', '.gif', '.jpeg', '.jpg', '.png'] as const;

export function isImageFile(name: string): boolean {
  return (IMAGE_EXTENSIONS as readonly string[]).includes(path.extname(name).toLowerCase());
}

/**
 * Image files under `dir`, recursively, as sorted paths relative to `dir` with `/` separators (the
 * order Keras lists them in: it sorts the `os.walk` results of each class folder). Hidden files and
 * folders are skipped; symbolic links count as what they point to.
 */
export async function listImageFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  const visited = new Set<string>(); // real paths: a link to a folder above does not loop
  async function walk(relative: string): Promise<void> {
    const real = await fs.realpath(path.join(dir, relative));
    if (visited.has(real)) return;
    visited.add(real);
    const entries = await fs.readdir(path.join(dir, relative), { withFileTypes: true });
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue;
      const rel = relative ? `${relative}/${entry.name}` : entry.name;
      const kind = await entryKind(path.join(dir, relative), entry);
      if (kind === 'dir') await walk(rel);
      else if (kind === 'file' && isImageFile(entry.name)) found.push(rel);
    }
  }
  await walk('');
  return found.sort(comparePaths);
}

/** Code-point order, as Python sorts strings. */
export function comparePaths(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Decodes an encoded image (JPEG, PNG, GIF, BMP) and resizes it to `size` = [height, width] with
 * Keras's resize; returns height × width × 3 bytes, RGB, rounded from the float result. Throws an
 * Error with a short reason when the bytes are no image TensorFlow can decode.
 */
export function decodeAndResize(tf: Tf, bytes: Uint8Array, size: readonly [number, number]): Uint8Array {
  // Return the tensor from tidy, not its values: tidy walks a returned object element by element
  // looking for tensors, which costs tens of milliseconds on a 160×160×3 Float32Array.
  const resized = tf.tidy(() => {
    let decoded;
    try {
      decoded = tf.node.decodeImage(bytes, 3, 'int32', false);
    } catch (error) {
      throw new InputError(firstLine(error));
    }
    if (!decoded) throw new InputError('not a BMP, GIF, JPEG or PNG image');
    const image = decoded as import('@tensorflow/tfjs-node').Tensor3D;
    if (image.rank !== 3 || image.shape[2] !== 3) {
      throw new InputError(`decoded to an unexpected shape [${image.shape.join(', ')}]`);
    }
    if (image.shape[0] === 0 || image.shape[1] === 0) throw new InputError('the image is empty');
    return resizeKeras(tf, image, size);
  });
  try {
    return toUint8(resized.dataSync() as Float32Array);
  } finally {
    resized.dispose();
  }
}

/**
 * `tf.image.resize(image, size, method='bilinear', antialias=False)`: the ResizeBilinear kernel
 * with half-pixel centres. Accepts [h, w, c] or [n, h, w, c]; returns float32.
 */
export function resizeKeras<T extends import('@tensorflow/tfjs-node').Tensor3D | import('@tensorflow/tfjs-node').Tensor4D>(
  tf: Tf,
  image: T,
  size: readonly [number, number],
): T {
  return tf.image.resizeBilinear(image, [size[0], size[1]], false, true);
}

/** Rounds float pixel values in [0, 255] to bytes (clamped). */
export function toUint8(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = Math.round(values[i]!);
    out[i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
  return out;
}

export interface DecodedImages {
  /** Indexes (into the input list) of the files that decoded, in order. */
  kept: number[];
  /** Files that could not be read or decoded, with the reason. */
  skipped: Array<{ file: string; reason: string }>;
}

/**
 * Reads, decodes and resizes `files` (paths relative to `root`) one by one, handing each decoded
 * image (height × width × 3 bytes) to `onImage` in input order before the next is decoded: memory
 * does not grow with the number of files. Undecodable files are skipped and reported, never fatal.
 * `onProgress` is called every few images.
 */
export async function decodeImages(
  tf: Tf,
  root: string,
  files: readonly string[],
  size: readonly [number, number],
  onImage: (pixels: Uint8Array, index: number) => Promise<void>,
  onProgress?: (done: number, total: number) => void,
): Promise<DecodedImages> {
  const kept: number[] = [];
  const skipped: DecodedImages['skipped'] = [];
  // Read ahead a few files while TensorFlow decodes the current one.
  const readAhead = 8;
  const reads = new Map<number, Promise<Buffer>>();
  const startRead = (i: number) => {
    const file = files[i];
    if (file !== undefined && !reads.has(i)) {
      const read = fs.readFile(path.join(root, file));
      read.catch(() => undefined); // handled when awaited
      reads.set(i, read);
    }
  };
  for (let i = 0; i < Math.min(readAhead, files.length); i++) startRead(i);
  for (let i = 0; i < files.length; i++) {
    startRead(i + readAhead);
    const file = files[i]!;
    let image: Uint8Array | undefined;
    try {
      image = decodeAndResize(tf, await reads.get(i)!, size);
    } catch (error) {
      skipped.push({ file, reason: firstLine(error) });
    }
    reads.delete(i);
    if (image) {
      await onImage(image, i);
      kept.push(i);
    }
    if (onProgress && ((i + 1) % 25 === 0 || i + 1 === files.length)) onProgress(i + 1, files.length);
  }
  return { kept, skipped };
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return (message.split('\n')[0] ?? message).trim();
}
