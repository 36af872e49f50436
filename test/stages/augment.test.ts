import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { augmented, viewTransforms } from '../../src/ml/augment.ts';
import { imageAt, readImageSet, writeImageSet, type ImageSet } from '../helpers/image-sets.ts';
import augmentKind, { augmentThreads, type AugmentRecord } from '../../src/stages/augment.ts';
import { shapeImage } from '../helpers/images.ts';
import { runKind, tempDir } from '../helpers/run-kind.ts';

/** A split stage's output with a small training set of shape pictures. */
async function splitOutput(count: number, size = 12): Promise<{ dir: string; train: ImageSet }> {
  const pixels = new Uint8Array(count * size * size * 3);
  for (let i = 0; i < count; i++) pixels.set(shapeImage(i % 2, i, size, size).data, i * size * size * 3);
  const train: ImageSet = {
    count,
    height: size,
    width: size,
    channels: 3,
    views: 1,
    classNames: ['a', 'b'],
    labels: Array.from({ length: count }, (_, i) => i % 2),
    files: Array.from({ length: count }, (_, i) => `train/${i % 2 ? 'b' : 'a'}/${i}.jpg`),
    pixels,
  };
  const dir = tempDir();
  await writeImageSet(dir, 'train', train);
  return { dir, train };
}

test('writes `views` view-major augmented copies: view v of image i is transform (seed, v)[i]', async () => {
  const { dir, train } = await splitOutput(5);
  const run = await runKind(augmentKind, { views: 3, seed: 11 }, { data: dir });
  const views = await readImageSet(run.outDir, 'views');
  assert.equal([views.count, views.views, views.height, views.width], [5, 3, 12, 12]);
  assert.equal(views.labels, train.labels);
  assert.equal(views.files, train.files);
  assert.is(views.pixels.length, 3 * 5 * 12 * 12 * 3);
  for (let v = 0; v < 3; v++) {
    const transforms = viewTransforms(11, v, 5, { flip: 'horizontal', rotation: 0.2 });
    for (let i = 0; i < 5; i++) {
      assert.equal(imageAt(views, i, v), augmented(imageAt(train, i), 12, 12, 3, transforms[i]!));
    }
  }
  // views differ from one another
  assert.not.equal(imageAt(views, 0, 0), imageAt(views, 0, 1));

  const record = JSON.parse(readFileSync(path.join(run.outDir, 'augment.json'), 'utf8')) as AugmentRecord;
  assert.is(record.draws.length, 3);
  assert.is(record.draws[0]!.flips.length, 5);
  assert.ok(record.draws.flatMap((d) => d.angles).every((a) => Math.abs(a) <= 72));
  assert.equal(run.artifacts, ['plots/augmentation.png']);
  assert.equal(run.summary, { views: 3, augmented_images: 15 });
  assert.equal(run.progress.at(-1), { done: 15, total: 15, label: 'augment' });
});

test('seeded: the same seed gives the same bytes; more views keep the first ones', async () => {
  const { dir } = await splitOutput(300, 8); // more than one write chunk
  const a = await runKind(augmentKind, { views: 2, seed: 5 }, { data: dir });
  const b = await runKind(augmentKind, { views: 2, seed: 5 }, { data: dir });
  const c = await runKind(augmentKind, { views: 3, seed: 5 }, { data: dir });
  const d = await runKind(augmentKind, { views: 2, seed: 6 }, { data: dir });
  const bytes = (run: { outDir: string }) => readFileSync(path.join(run.outDir, 'views.u8'));
  assert.equal(bytes(a), bytes(b));
  assert.equal(bytes(c).subarray(0, bytes(a).length), bytes(a));
  assert.not.equal(bytes(d), bytes(a));
});

test('on several threads the stage writes the bytes it writes on one, over several chunks', async () => {
  // 301 images: a chunk of 256 and one of 45, neither a multiple of 2 or 3 threads
  const { dir } = await splitOutput(301, 10);
  const one = await runKind(augmentKind, { views: 2, seed: 3, rotation: 0.4 }, { data: dir }, { cpus: 1 });
  const several = await runKind(augmentKind, { views: 2, seed: 3, rotation: 0.4 }, { data: dir }, { cpus: 3 });
  const threads = augmentThreads(3, 256);
  assert.ok(one.logs.some((line) => / on 1 thread in /.test(line)), one.logs.join('\n'));
  assert.ok(several.logs.some((line) => line.includes(` on ${threads === 1 ? '1 thread' : `${threads} threads`} in `)), several.logs.join('\n'));
  for (const file of ['views.u8', 'views.json', 'augment.json', 'plots/augmentation.png']) {
    assert.ok(readFileSync(path.join(several.outDir, file)).equals(readFileSync(path.join(one.outDir, file))), `${file} differs`);
  }
  assert.equal(several.progress.at(-1), { done: 602, total: 602, label: 'augment' });
});

test('threads: one per CPU slot held, at most one per core and per image of a chunk', () => {
  assert.is(augmentThreads(1, 256, 8), 1);
  assert.is(augmentThreads(4, 256, 8), 4);
  assert.is(augmentThreads(16, 256, 8), 8);
  assert.is(augmentThreads(4, 3, 8), 3);
  assert.is(augmentThreads(4, 256, 1), 1);
  assert.equal(augmentKind.resources, { cpu: 'all' });
});

test('no flip and no rotation reproduce the training images', async () => {
  const { dir, train } = await splitOutput(4);
  const run = await runKind(augmentKind, { views: 2, flip: 'none', rotation: 0 }, { data: dir });
  const views = await readImageSet(run.outDir, 'views');
  assert.equal(views.pixels.subarray(0, train.pixels.length), train.pixels);
  assert.equal(views.pixels.subarray(train.pixels.length), train.pixels);
});

test.run();
