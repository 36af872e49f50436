// The on-disk image-set format shared by the data stages (fetch, split, augment) and the model
// stages (extract-features, train-head, fine-tune, evaluate).
//
// An image set `<name>` in a stage's artifact directory is two files:
//   <name>.json    {count, height, width, channels, classNames, labels, files}
//   <name>.u8      count × height × width × channels bytes, NHWC, RGB, values 0..255
// Pixels are the Keras `image_dataset_from_directory` values (bilinear resize, no antialias),
// rounded to uint8: a 160×160 view is 77 KB instead of 307 KB as float32.
// For augmented views, `<name>.u8` holds `views` consecutive blocks of `count` images (view-major):
// view v of image i starts at ((v * count) + i) * height * width * channels.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../core/errors.ts';

export interface ImageSetMeta {
  count: number;
  height: number;
  width: number;
  channels: number;
  /** Number of views per image (1 for plain images; one per epoch for augmented training views). */
  views: number;
  classNames: string[];
  /** Class index per image (length `count`). */
  labels: number[];
  /** Source file per image, relative to the data root (length `count`). */
  files: string[];
}

export interface ImageSet extends ImageSetMeta {
  pixels: Uint8Array;
}

export function imageBytes(meta: Pick<ImageSetMeta, 'height' | 'width' | 'channels'>): number {
  return meta.height * meta.width * meta.channels;
}

/** Pixels of image `index` in view `view` (a view into the buffer, not a copy). */
export function imageAt(set: ImageSet, index: number, view = 0): Uint8Array {
  const size = imageBytes(set);
  const offset = (view * set.count + index) * size;
  return set.pixels.subarray(offset, offset + size);
}

export async function writeImageSet(dir: string, name: string, set: ImageSet): Promise<void> {
  const expected = set.count * set.views * imageBytes(set);
  if (set.pixels.length !== expected) {
    throw new Error(`bug: image set ${name}: ${set.pixels.length} bytes of pixels, expected ${expected}`);
  }
  if (set.labels.length !== set.count || set.files.length !== set.count) {
    throw new Error(`bug: image set ${name}: labels/files do not match count ${set.count}`);
  }
  const { pixels, ...meta } = set;
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, `${name}.u8`), pixels);
  await fs.writeFile(path.join(dir, `${name}.json`), JSON.stringify(meta));
}

export async function readImageSetMeta(dir: string, name: string): Promise<ImageSetMeta> {
  const file = path.join(dir, `${name}.json`);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (cause) {
    throw new InputError(`missing image set ${name} in ${dir}`, { cause });
  }
  return JSON.parse(text) as ImageSetMeta;
}

export async function readImageSet(dir: string, name: string): Promise<ImageSet> {
  const meta = await readImageSetMeta(dir, name);
  const buffer = await fs.readFile(path.join(dir, `${name}.u8`));
  const pixels = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  const expected = meta.count * meta.views * imageBytes(meta);
  if (pixels.length !== expected) {
    throw new InputError(`image set ${name} in ${dir}: ${pixels.length} bytes, expected ${expected}`);
  }
  return { ...meta, pixels };
}
