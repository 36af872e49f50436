// Image-set artifacts (as split and augment write them) of generated shapes, for the tests of the
// stages that read them.

import { writeImageSet, type ImageSet } from '../../src/ml/dataset.ts';
import { shapeImage } from './images.ts';
import { tempDir } from './run-kind.ts';

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
