// Image-set artifacts (as split and augment write them) of generated shapes, for the tests of the
// stages that read them.

import { ImageSetReader, ImageSetWriter, imageBytes, withImageSet, type ImageSetMeta } from '../../src/ml/dataset.ts';
import { shapeImage } from './images.ts';
import { tempDir } from './run-kind.ts';

/** An image set with all its pixels in memory: for tests, on sets of a few images. */
export interface ImageSet extends ImageSetMeta {
  pixels: Uint8Array;
}

/** Writes a whole in-memory set through ImageSetWriter, in batches of a few images. */
export async function writeImageSet(dir: string, name: string, set: ImageSet): Promise<void> {
  const writer = await ImageSetWriter.create(dir, name, { height: set.height, width: set.width, channels: set.channels });
  const batch = 5 * writer.rowBytes;
  for (let offset = 0; offset < set.pixels.length; offset += batch) await writer.append(set.pixels.subarray(offset, offset + batch));
  await writer.finish({ count: set.count, views: set.views, classNames: set.classNames, labels: set.labels, files: set.files });
}

/** Reads a whole set into memory through ImageSetReader (an indexed set in its own order). */
export async function readImageSet(dir: string, name: string): Promise<ImageSet> {
  return withImageSet(dir, name, async (reader: ImageSetReader) => ({ ...reader.meta, pixels: await reader.read(0, reader.rows) }));
}

/** Pixels of image `index` in view `view` (a view into the buffer, not a copy). */
export function imageAt(set: ImageSet, index: number, view = 0): Uint8Array {
  const size = imageBytes(set);
  const offset = (view * set.count + index) * size;
  return set.pixels.subarray(offset, offset + size);
}

/** `count` images of circles and squares (alternating), `views` variants each, `size`×`size`. */
export function shapesImageSet(size: number, count: number, views: number, offset: number): ImageSet {
  const labels = Array.from({ length: count }, (_, i) => i % 2);
  const pixels = new Uint8Array(count * views * size * size * 3);
  for (let v = 0; v < views; v++) {
    for (let i = 0; i < count; i++) {
      const image = shapeImage(labels[i]!, offset + i + 7 * v, size, size);
      pixels.set(image.data, (v * count + i) * image.data.length);
    }
  }
  return {
    count, views, height: size, width: size, channels: 3,
    classNames: ['circles', 'squares'],
    labels,
    files: labels.map((label, i) => `${label ? 'squares' : 'circles'}/${offset + i}.png`),
    pixels,
  };
}

/** A split artifact (train, validation, test of the given counts) and an augment artifact (train × 2 views). */
export async function splitAndViews(size: number, counts: { train: number; validation: number; test: number }): Promise<{ split: string; augment: string }> {
  const split = tempDir('pipe-split-');
  await writeImageSet(split, 'train', shapesImageSet(size, counts.train, 1, 0));
  await writeImageSet(split, 'validation', shapesImageSet(size, counts.validation, 1, 100));
  await writeImageSet(split, 'test', shapesImageSet(size, counts.test, 1, 200));
  const augment = tempDir('pipe-augment-');
  await writeImageSet(augment, 'views', shapesImageSet(size, counts.train, 2, 0));
  return { split, augment };
}
