// Augmented training views made on demand, instead of read from a stored pixel file.
//
// The augment stage records how each view is drawn (augment.json: the seed, the settings, the
// number of views and images); view v of image i is augmentImage(image i, viewTransforms(seed, v)[i])
// (src/ml/augment.ts), a deterministic function of the image, the seed and the view index. So a
// reader of the views does not need them stored: `AugmentedViews` reads the source images (the
// split's `train` set) and transforms them on an AugmentPool's threads, row by row in the order a
// stored views set has (view-major: row = view · count + image). The bytes are those of the stored
// set (test/ml/augmented-views.test.ts), so a base pass over either gives the same features.
//
// Storing them cost 77 KB per view of a 160×160 image (1.5 GB for the tutorial's 2,000 training
// images × 10 views); making them costs about 1.3 ms of CPU per view, on threads that run while
// TensorFlow computes the previous batch (`begin` returns once the source images are read, the
// transforms go on in the background).

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { viewTransforms, type AugmentSettings, type ViewTransform } from './augment.ts';
import { AugmentPool } from './augment-pool.ts';
import { ImageSetReader, type ImageSetMeta } from './dataset.ts';
import { InputError, messageOf } from '../core/errors.ts';

export const AUGMENT_RECORD_FILE = 'augment.json';

/** augment.json: how the views were drawn, and (in `draws`) every draw, for people to read. */
export interface AugmentRecord {
  seed: number;
  views: number;
  flip: 'horizontal' | 'none';
  rotation: number;
  count: number;
  /** Per view: '0'/'1' per image (flipped or not) and the angle of each image in degrees (rounded). */
  draws: Array<{ flips: string; angles: number[] }>;
  /** 'stored': the views are views.u8 beside it; 'generated': made from the source images on demand. */
  pixels?: 'stored' | 'generated';
  /** The source set's files, in order: a reader checks that it is given the same images. */
  sourceFiles?: string[];
}

/**
 * The augment.json of the augment artifact in `dir`, or undefined when it has none. Without a
 * record, or with one that has no `pixels` (both from augment's version 1), the views are stored as
 * pixels (views.json + views.u8). A record that is there but cannot be read, is not JSON or lacks
 * what views are made from is an InputError naming the file: taken for stored views it would
 * fail later, on a views.json that is not there, and say nothing of the record.
 */
export async function readAugmentRecord(dir: string): Promise<AugmentRecord | undefined> {
  const file = path.join(dir, AUGMENT_RECORD_FILE);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`cannot read the augmentation record ${file}: ${messageOf(cause)}`, { cause, file });
  }
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch (cause) {
    throw new InputError(`the augmentation record ${file} is not JSON: ${messageOf(cause)}`, { cause, file });
  }
  const problems = recordProblems(record);
  if (problems.length > 0) throw new InputError(`the augmentation record ${file} is not valid: ${problems.join('; ')}`, { file });
  return record as AugmentRecord;
}

/** What is wrong with a parsed augment.json, all of it: the fields views are made from. */
function recordProblems(record: unknown): string[] {
  if (typeof record !== 'object' || record === null || Array.isArray(record)) return [`expected an object, got ${JSON.stringify(record)}`];
  const r = record as Record<string, unknown>;
  const show = (value: unknown) => (value === undefined ? 'missing' : JSON.stringify(value));
  if (r['pixels'] !== undefined && r['pixels'] !== 'stored' && r['pixels'] !== 'generated') {
    return [`pixels is ${show(r['pixels'])}, expected "stored" or "generated"`];
  }
  // Stored views are read from views.json; only generated ones are made from the record's fields.
  if (r['pixels'] !== 'generated') return [];
  const problems: string[] = [];
  const integer = (key: string, minimum: number) => {
    const value = r[key];
    if (!Number.isInteger(value) || (value as number) < minimum) problems.push(`${key} is ${show(value)}, expected an integer >= ${minimum}`);
  };
  if (!Number.isSafeInteger(r['seed'])) problems.push(`seed is ${show(r['seed'])}, expected an integer`);
  integer('views', 1);
  integer('count', 0);
  if (r['flip'] !== 'horizontal' && r['flip'] !== 'none') problems.push(`flip is ${show(r['flip'])}, expected "horizontal" or "none"`);
  if (typeof r['rotation'] !== 'number' || !Number.isFinite(r['rotation'])) problems.push(`rotation is ${show(r['rotation'])}, expected a number`);
  const files = r['sourceFiles'];
  if (files !== undefined && !(Array.isArray(files) && files.every((f) => typeof f === 'string'))) {
    problems.push('sourceFiles is not a list of file names');
  }
  return problems;
}

/** A batch being produced: `loaded` once its source images are read, `done` once `out` holds its rows. */
export interface RowFetch {
  loaded: Promise<void>;
  done: Promise<Uint8Array>;
}

export class AugmentedViews {
  readonly rowBytes: number;
  /** The views as an image set (count images × `views`), like the stored views.json. */
  readonly meta: ImageSetMeta;
  private readonly settings: AugmentSettings;
  /** The transforms of the views last used (a batch spans at most two views, unless the set is tiny). */
  private readonly transforms = new Map<number, ViewTransform[]>();
  private slot: 0 | 1 = 0;
  /** The previous batch's work: batches run one after another on the pool. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly source: ImageSetReader,
    private readonly pool: AugmentPool,
    readonly record: AugmentRecord,
  ) {
    this.rowBytes = source.rowBytes;
    this.settings = { flip: record.flip, rotation: record.rotation };
    this.meta = { ...source.meta, views: record.views };
  }

  /**
   * The views of `record` over the images of set `name` in `dir`, made on `threads` threads in
   * batches of up to `batch` rows. Fails (InputError) when the set is not the one the record was
   * drawn for.
   */
  static async open(dir: string, name: string, record: AugmentRecord, threads: number, batch: number): Promise<AugmentedViews> {
    const source = await ImageSetReader.open(dir, name);
    try {
      const { meta } = source;
      if (meta.views !== 1) throw new InputError(`image set ${name} in ${dir} already has ${meta.views} views`);
      const sameFiles = record.sourceFiles === undefined || (record.sourceFiles.length === meta.count && record.sourceFiles.every((f, i) => f === meta.files[i]));
      if (record.count !== meta.count || !sameFiles) {
        throw new InputError(
          `the augmentation was drawn for ${record.count} other images than the ${meta.count} of image set ${name} in ${dir}: ` +
            'give extract-features the split stage its augment stage reads',
        );
      }
    } catch (error) {
      await source.close();
      throw error;
    }
    const capacity = Math.max(1, Math.min(batch, source.meta.count * record.views));
    const pool = AugmentPool.create(Math.min(threads, capacity), source.meta, capacity);
    return new AugmentedViews(source, pool, record);
  }

  /** Rows in the set: count × views. */
  get rows(): number {
    return this.meta.count * this.meta.views;
  }

  get threadCount(): number {
    return this.pool.threadCount;
  }

  /** Rows [start, start + n) into `out`; returns the filled part of `out`. */
  read(start: number, n: number, out: Uint8Array): Promise<Uint8Array> {
    return this.begin(start, n, out).done;
  }

  /**
   * Starts making rows [start, start + n) into `out`. `loaded` resolves once the source images are
   * read: the transforms then run on the pool's threads while the caller computes. One batch at a
   * time is made; a second `begin` waits for the first.
   */
  begin(start: number, n: number, out: Uint8Array): RowFetch {
    if (!Number.isInteger(start) || !Number.isInteger(n) || start < 0 || n < 1 || start + n > this.rows || n > this.pool.capacity) {
      throw new Error(`bug: views rows ${start}…${start + n - 1} (a pool of ${this.pool.capacity}, ${this.rows} rows)`);
    }
    const bytes = n * this.rowBytes;
    if (out.length < bytes) throw new Error(`bug: a buffer of ${out.length} bytes for ${n} rows`);
    const slot = this.slot;
    this.slot = slot === 0 ? 1 : 0;
    const loading = this.queue.then(() => this.load(start, n, slot));
    const done = loading.then(async (transforms) => {
      await this.pool.augment(n, transforms, slot);
      const filled = out.subarray(0, bytes);
      filled.set(this.pool.outputs[slot].subarray(0, bytes));
      return filled;
    });
    this.queue = done.catch(() => undefined);
    // Whoever awaits `done` sees a failure; `loaded` alone never rejects unhandled.
    const loaded = loading.then(
      () => undefined,
      () => undefined,
    );
    return { loaded, done };
  }

  async close(): Promise<void> {
    await this.queue;
    await Promise.all([this.pool.close(), this.source.close()]);
  }

  /** Reads the source images of rows [start, start + n) into the slot's input; their transforms. */
  private async load(start: number, n: number, slot: 0 | 1): Promise<ViewTransform[]> {
    const count = this.meta.count;
    const input = this.pool.inputs[slot];
    const transforms: ViewTransform[] = [];
    for (let row = start; row < start + n; ) {
      const view = Math.floor(row / count);
      const image = row - view * count;
      const run = Math.min(count - image, start + n - row);
      await this.source.read(image, run, input.subarray((row - start) * this.rowBytes));
      const all = this.viewTransforms(view);
      for (let i = image; i < image + run; i++) transforms.push(all[i]!);
      row += run;
    }
    return transforms;
  }

  private viewTransforms(view: number): ViewTransform[] {
    let transforms = this.transforms.get(view);
    if (transforms === undefined) {
      if (this.transforms.size >= 2) this.transforms.delete(this.transforms.keys().next().value!);
      transforms = viewTransforms(this.record.seed, view, this.meta.count, this.settings);
      this.transforms.set(view, transforms);
    }
    return transforms;
  }
}
