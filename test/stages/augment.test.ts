import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { augmented, viewTransforms } from '../../src/ml/augment.ts';
import { imageAt, readImageSet, writeImageSet, type ImageSet } from '../helpers/image-sets.ts';
import augmentKind, { augmentChunks, augmentThreads, chunksOf, type AugmentRecord } from '../../src/stages/augment.ts';
import { AugmentPool } from '../../src/ml/augment-pool.ts';
import type { ImageSetReader, ImageSetWriter } from '../../src/ml/dataset.ts';
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

test('store: true writes `views` view-major augmented copies: view v of image i is transform (seed, v)[i]', async () => {
  const { dir, train } = await splitOutput(5);
  const run = await runKind(augmentKind, { views: 3, seed: 11, store: true }, { data: dir });
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
  assert.equal(run.summary, { views: 3, augmented_images: 15, stored: true });
  assert.equal([record.pixels, record.sourceFiles], ['stored', train.files]);
  assert.equal(run.progress.at(-1), { done: 15, total: 15, label: 'augment' });
});

test('seeded: the same seed gives the same bytes; more views keep the first ones', async () => {
  const { dir } = await splitOutput(300, 8); // more than one write chunk
  const a = await runKind(augmentKind, { views: 2, seed: 5, store: true }, { data: dir });
  const b = await runKind(augmentKind, { views: 2, seed: 5, store: true }, { data: dir });
  const c = await runKind(augmentKind, { views: 3, seed: 5, store: true }, { data: dir });
  const d = await runKind(augmentKind, { views: 2, seed: 6, store: true }, { data: dir });
  const bytes = (run: { outDir: string }) => readFileSync(path.join(run.outDir, 'views.u8'));
  assert.equal(bytes(a), bytes(b));
  assert.equal(bytes(c).subarray(0, bytes(a).length), bytes(a));
  assert.not.equal(bytes(d), bytes(a));
});

test('on several threads the stage writes the bytes it writes on one, over several chunks', async () => {
  // 301 images: a chunk of 256 and one of 45, neither a multiple of 2 or 3 threads
  const { dir } = await splitOutput(301, 10);
  const one = await runKind(augmentKind, { views: 2, seed: 3, rotation: 0.4, store: true }, { data: dir }, { cpus: 1 });
  const several = await runKind(augmentKind, { views: 2, seed: 3, rotation: 0.4, store: true }, { data: dir }, { cpus: 3 });
  const threads = augmentThreads(3, 256);
  assert.ok(one.logs.some((line) => / on 1 thread in /.test(line)), one.logs.join('\n'));
  assert.ok(several.logs.some((line) => line.includes(` on ${threads === 1 ? '1 thread' : `${threads} threads`} in `)), several.logs.join('\n'));
  for (const file of ['views.u8', 'views.json', 'augment.json', 'plots/augmentation.png']) {
    assert.ok(readFileSync(path.join(several.outDir, file)).equals(readFileSync(path.join(one.outDir, file))), `${file} differs`);
  }
  assert.equal(several.progress.at(-1), { done: 602, total: 602, label: 'augment' });
});

/** A reader of `rows` images of 4×4×3 whose bytes say which row they are, slow, failing at read `failAt` if given. */
function slowReader(failAt?: number): { reader: ImageSetReader; reads: number } {
  const state = { reads: 0 };
  const reader = {
    rowBytes: 48,
    async read(start: number, count: number, out: Uint8Array) {
      state.reads++;
      await new Promise((r) => setTimeout(r, 5));
      if (state.reads === failAt) throw new Error(`read ${failAt} failed`);
      for (let i = 0; i < count * 48; i++) out[i] = (start + Math.floor(i / 48)) & 255;
      return out.subarray(0, count * 48);
    },
  };
  return { reader: reader as unknown as ImageSetReader, get reads() { return state.reads; } };
}

/** A writer that keeps what it is given only after a delay: a buffer reused before then shows up. */
function slowWriter(): { writer: ImageSetWriter; chunks: Uint8Array[]; inFlight: () => number } {
  const chunks: Uint8Array[] = [];
  let inFlight = 0;
  const writer = {
    async append(pixels: Uint8Array) {
      inFlight++;
      await new Promise((r) => setTimeout(r, 15));
      chunks.push(Uint8Array.from(pixels));
      inFlight--;
    },
  };
  return { writer: writer as unknown as ImageSetWriter, chunks, inFlight: () => inFlight };
}

test('the chunk pipeline: slow writes keep each chunk intact and in order; a failed read fails it once every write has settled', async () => {
  // identity transforms: each output image is its input image
  const identity = () => Array.from({ length: 7 }, () => ({ flip: false, angle: 0 }));
  const pool = AugmentPool.create(2, { height: 4, width: 4, channels: 3 }, 3);
  try {
    // 2 views of 7 images, chunks of 3 (CHUNK is larger: the pool's capacity decides nothing here,
    // so the test uses a chunk list of its own)
    const chunks = [...chunksOf(2, 7, identity)].flatMap((c) => [
      { ...c, end: Math.min(c.start + 3, c.end) },
      { ...c, start: c.start + 3, end: Math.min(c.start + 6, c.end) },
      { ...c, start: c.start + 6, end: c.end },
    ]).filter((c) => c.start < c.end);
    assert.is(chunks.length, 6);
    const { writer, chunks: written } = slowWriter();
    const done: number[] = [];
    await augmentChunks(chunks.values(), slowReader().reader, pool, writer, (c) => done.push(c.view * 7 + c.end));
    assert.equal(done, [3, 6, 7, 10, 13, 14]);
    assert.equal(written.map((bytes) => [...new Set(bytes)]), [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2], [3, 4, 5], [6]]);

    const failing = slowWriter();
    let error: Error | undefined;
    await augmentChunks(chunks.values(), slowReader(3).reader, pool, failing.writer, () => undefined).catch((e: Error) => (error = e));
    assert.is(error?.message, 'read 3 failed');
    assert.is(failing.inFlight(), 0, 'no write still running when the error leaves');
    assert.is(failing.chunks.length, 2, 'the two chunks read before it were written');
  } finally {
    await pool.close();
  }
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
  const run = await runKind(augmentKind, { views: 2, flip: 'none', rotation: 0, store: true }, { data: dir });
  const views = await readImageSet(run.outDir, 'views');
  assert.equal(views.pixels.subarray(0, train.pixels.length), train.pixels);
  assert.equal(views.pixels.subarray(train.pixels.length), train.pixels);
});

test.run();
