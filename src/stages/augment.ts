// augment: the recipe's random augmentation, sampled up front. For each training image it draws
// `views` independent augmentations — RandomFlip('horizontal') then RandomRotation(rotation), as
// Keras 3 computes them (src/ml/augment.ts) — so that epoch e of training can read view e of every
// image: the same distribution the tutorial's per-epoch augmentation has, but cacheable.
//
// Draws come from a seeded stream per (seed, view): view v is the same whatever `views` is, so
// raising `views` from 10 to 20 keeps the first 10.
//
// By default the stage stores the draws, not the pixels: view v of image i is a deterministic
// function of the image, the seed and v, and extract-features makes each view as it reads it
// (src/ml/augmented-views.ts), on threads that run while TensorFlow computes. Stored, the views were
// 77 KB each (1 GB of the tutorial's 1.5 GB cache per run); made, they cost about 1.3 ms of CPU.
// `store: true` writes them (views.u8), for a stage that reads pixels; extract-features reads either
// and gives the same bytes.
//
// Storing, the pixels are plain JS arithmetic, so the stage takes every CPU slot
// (`resources: {cpu: 'all'}`) and splits each chunk of images across one worker thread per
// slot it holds (src/ml/augment-pool.ts), up to the machine's cores, while the next chunk is read
// and the previous one written (augmentChunks): on 2 cores the 14,000 views of the flagship pipeline
// went from 18 s to 10 s (2026-12-06, real photos). The bytes do not depend on the number of
// threads (each image is computed alone), so neither does the cache key.
//
// Artifacts:
//   augment.json            the settings and every draw: per view a string of flips ('1' = flipped)
//                           and the angles in degrees; `pixels`: 'generated' or 'stored'
//   views.json + views.u8   (store: true) image set `views` (views = `views`, view-major: all images
//                           of view 0, then view 1, …; labels, files and classes of the split's `train`)
//   plots/augmentation.png  9 augmentations of the first training image (the recipe's picture)

import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  augmented,
  createRng,
  sampleTransform,
  viewTransforms,
  type AugmentSettings,
  type ViewTransform,
} from '../ml/augment.ts';
import { AugmentPool } from '../ml/augment-pool.ts';
import { AUGMENT_RECORD_FILE, type AugmentRecord } from '../ml/augmented-views.ts';
import { ImageSetReader, ImageSetWriter, type ImageSetMeta } from '../ml/dataset.ts';
import { imageGrid } from '../ml/plots.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import { InputError } from '../core/errors.ts';

export type { AugmentRecord };

/** Images transformed per write (a chunk of the output, split across the threads; keeps memory small). */
const CHUNK = 256;

/** Threads for chunks of `chunk` images: one per CPU slot the stage holds, at most one per core and per image. */
export function augmentThreads(cpus: number, chunk: number, cores = os.availableParallelism()): number {
  return Math.max(1, Math.min(cpus, cores, chunk));
}

const paramsSchema = {
  type: 'object',
  properties: {
    views: { type: 'integer', minimum: 1, maximum: 1000, default: 10, description: 'augmented views per training image (one per epoch)' },
    flip: { type: 'string', enum: ['horizontal', 'none'], default: 'horizontal', description: 'RandomFlip mode' },
    rotation: {
      type: 'number',
      minimum: 0,
      maximum: 1,
      default: 0.2,
      description: 'RandomRotation factor: angles uniform in ±rotation·2π',
    },
    seed: { type: 'integer', default: 42, description: 'seed of the draws' },
    store: {
      type: 'boolean',
      default: false,
      description: 'write the augmented pixels (views.u8, 77 KB per 160×160 view); by default only the draws are stored and extract-features makes the views as it reads them',
    },
  },
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type AugmentParams = ParamsOf<typeof paramsSchema>;

const augmentKind: StageKind<AugmentParams> = {
  name: 'augment',
  // 2: the draws only by default (`store`), not the pixels
  version: 2,
  description:
    "Samples the recipe's augmentation (horizontal flip, rotation with reflect fill) up front: `views` augmentations of each training image, " +
    'recorded as draws that extract-features applies as it reads (or, with store: true, written as pixels on one thread per CPU slot it holds).',
  params: paramsSchema,
  inputs: { data: ['split'] },
  usesTensorflow: false,
  // Its threads keep every slot it holds busy (see above).
  resources: { cpu: 'all' },
  run: runAugment,
};

export default augmentKind;

async function runAugment(ctx: StageContext<AugmentParams>): Promise<void> {
  const dataDir = ctx.inputs['data'];
  if (!dataDir) throw new Error('bug: augment needs the artifacts of a split stage (input `data`)');
  const views = ctx.params.views;
  const seed = ctx.params.seed;
  const settings: AugmentSettings = { flip: ctx.params.flip, rotation: ctx.params.rotation };

  const train = await ImageSetReader.open(dataDir, 'train');
  try {
    const { meta } = train;
    if (meta.views !== 1) throw new InputError(`the training set in ${dataDir} already has ${meta.views} views`);
    const { count, height, width, channels } = meta;

    const record: AugmentRecord = { seed, views, ...settings, count, draws: [], pixels: ctx.params.store ? 'stored' : 'generated', sourceFiles: meta.files };
    const draw = (view: number) => {
      const transforms = viewTransforms(seed, view, count, settings);
      record.draws.push({
        flips: transforms.map((t) => (t.flip ? '1' : '0')).join(''),
        angles: transforms.map((t) => Math.round(((t.angle * 180) / Math.PI) * 1e4) / 1e4),
      });
      return transforms;
    };
    if (!ctx.params.store) {
      for (let view = 0; view < views; view++) draw(view);
      await fs.writeFile(path.join(ctx.outDir, AUGMENT_RECORD_FILE), JSON.stringify(record) + '\n');
      ctx.log(`${views} views of ${count} images (${height}×${width}) drawn; extract-features makes them as it reads them`);
      if (count > 0) await writePicture(ctx, await train.image(0), { ...meta, views }, seed, settings);
      ctx.summary({ views, augmented_images: views * count, stored: false });
      return;
    }
    const started = Date.now();
    // Chunks of the training images in, their augmentations out: memory is four chunks (two in, two
    // out), whatever the count. The pool's threads share each chunk's images, and stop in `finally`
    // whatever happens.
    const chunkImages = Math.min(CHUNK, Math.max(1, count));
    const pool = AugmentPool.create(augmentThreads(ctx.cpus, chunkImages), { height, width, channels }, chunkImages);
    let written: ImageSetMeta;
    try {
      const writer = await ImageSetWriter.create(ctx.outDir, 'views', { height, width, channels });
      try {
        const drawn = chunksOf(views, count, draw);
        await augmentChunks(drawn, train, pool, writer, (chunk) => ctx.progress(chunk.view * count + chunk.end, views * count, 'augment'));
        if (record.draws.length !== views) throw new Error(`bug: ${record.draws.length} of ${views} views drawn`);
        written = await writer.finish({ count, views, classNames: meta.classNames, labels: meta.labels, files: meta.files });
      } catch (error) {
        await writer.abort();
        throw error;
      }
    } finally {
      await pool.close();
    }
    await fs.writeFile(path.join(ctx.outDir, AUGMENT_RECORD_FILE), JSON.stringify(record) + '\n');
    const seconds = (Date.now() - started) / 1000;
    const threads = pool.threadCount === 1 ? '1 thread' : `${pool.threadCount} threads`;
    ctx.log(`${views} views of ${count} images (${height}×${width}) on ${threads} in ${seconds.toFixed(1)} s`);

    if (count > 0) await writePicture(ctx, await train.image(0), written, seed, settings);
    ctx.summary({ views, augmented_images: views * count, stored: true });
  } finally {
    await train.close();
  }
}

/** Images [start, end) of view `view`: a chunk of the output, with the view's transforms. */
export interface Chunk {
  view: number;
  start: number;
  end: number;
  /** The transforms of every image of the view (image i's is `viewTransforms[i]`). */
  viewTransforms: ViewTransform[];
}

/** The output's chunks in order (view-major), `CHUNK` images at a time; each view's transforms drawn once. */
export function* chunksOf(views: number, count: number, transformsOf: (view: number) => ViewTransform[]): Generator<Chunk> {
  for (let view = 0; view < views; view++) {
    const transforms = transformsOf(view);
    for (let start = 0; start < count; start += CHUNK) yield { view, start, end: Math.min(count, start + CHUNK), viewTransforms: transforms };
  }
}

/**
 * Reads, augments and appends the chunks in order, as a pipeline over the pool's two slots: while
 * chunk k is computed in slot k mod 2, chunk k + 1 is read into the other slot's input and chunk
 * k − 1 written out from the other slot's output (file I/O runs on libuv's threads, so it costs the
 * computing threads little). Each read and write is awaited before its slot is used again, and,
 * when something fails, before the error leaves (never an unhandled rejection).
 */
export async function augmentChunks(
  chunks: Iterator<Chunk>,
  train: ImageSetReader,
  pool: AugmentPool,
  writer: ImageSetWriter,
  done: (chunk: Chunk) => void,
): Promise<void> {
  const size = train.rowBytes;
  // A failed read or write is seen where it is awaited, not as an unhandled rejection meanwhile.
  const quiet = <T>(promise: Promise<T>): Promise<T> => {
    promise.catch(() => undefined);
    return promise;
  };
  const read = (chunk: Chunk, slot: 0 | 1) => quiet(train.read(chunk.start, chunk.end - chunk.start, pool.inputs[slot]).then(() => chunk));
  let slot: 0 | 1 = 0;
  let next = chunks.next();
  let reading: Promise<Chunk | undefined> = next.done ? Promise.resolve(undefined) : read(next.value, slot);
  let writing: Promise<void> = Promise.resolve();
  try {
    for (let chunk = await reading; chunk; chunk = await reading) {
      const computing = pool.augment(chunk.end - chunk.start, chunk.viewTransforms.slice(chunk.start, chunk.end), slot);
      const other: 0 | 1 = slot === 0 ? 1 : 0;
      next = chunks.next();
      reading = next.done ? Promise.resolve(undefined) : read(next.value, other);
      await computing;
      await writing;
      writing = quiet(writer.append(pool.outputs[slot].subarray(0, (chunk.end - chunk.start) * size)));
      done(chunk);
      slot = other;
    }
    await writing;
  } finally {
    // Settled, whatever happened, before the caller closes the files and the pool.
    await Promise.allSettled([reading, writing]);
  }
}

/** 9 augmentations of the first training image, drawn from their own stream (not the views'). */
async function writePicture(
  ctx: StageContext<AugmentParams>,
  first: Uint8Array,
  meta: ImageSetMeta,
  seed: number,
  settings: AugmentSettings,
): Promise<void> {
  const rng = createRng(seed, -1);
  const samples = Array.from({ length: 9 }, () => sampleTransform(rng, settings));
  const images = samples.map((t) => ({
    data: augmented(first, meta.height, meta.width, meta.channels, t),
    height: meta.height,
    width: meta.width,
    channels: meta.channels,
  }));
  const titles = samples.map((t) => {
    const degrees = (t.angle * 180) / Math.PI;
    return `${t.flip ? 'flipped, ' : ''}${degrees >= 0 ? '+' : '−'}${Math.abs(degrees).toFixed(1)}°`;
  });
  const png = await imageGrid(images, titles, { cols: 3, title: meta.files[0] });
  await fs.mkdir(path.join(ctx.outDir, 'plots'), { recursive: true });
  await fs.writeFile(path.join(ctx.outDir, 'plots', 'augmentation.png'), png);
  ctx.artifact('plots/augmentation.png');
}
