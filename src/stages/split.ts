// split: the fetched image sets into `train`, `validation` and `test`, seeded.
//
// With `train` + `validation` fetched (the recipe's data), the training set is kept whole and
// shuffled, and the validation set is shuffled and cut as the recipe does: it is a dataset of
// ceil(n / batch_size) batches; the first floor(batches · test_batch_fraction) batches become `test`
// (for 1000 images, batch_size 32 and test_batch_fraction 0.2: 32 batches, 6 of them = the
// tutorial's `val_batches // 5`, 192 test images)
// and the rest stay `validation` (808). A fetched `test` set is kept as it is (shuffled).
// The tutorial cuts a `tf.data` pipeline that reshuffles on every pass, so its test and validation
// images are not even disjoint; here the cut is made once, so the two sets are disjoint and fixed.
//
// With a single set (`all`, or `train` alone) the split is stratified: per class,
// round(n · test_fraction) images go to `test`, round(n · validation_fraction) to `validation`,
// the rest to `train`; each resulting set is then shuffled.
// The two cases have separate parameters so that one pipeline can serve both kinds of data.
//
// Artifacts: image sets `train`, `validation`, `test` and `split.json` (rule, seed, counts per class).
// The sets are indexed (src/ml/dataset.ts): each names, per image, its row in a fetched pixel file
// that split hard-links into its own directory as `fetched-<set>.u8` (copied when the file system
// cannot link). No pixel is read or stored twice, and the artifact stays complete on its own: a
// link keeps the pixels alive whatever happens to the fetch entry (pipe gc may remove it).

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createRng, shuffle } from '../ml/augment.ts';
import { pixelFileName, readImageSetMeta, writeImageSetMeta, type ImageSetMeta } from '../ml/dataset.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import { exists, linkOrCopy } from '../util/files.ts';
import { InputError } from '../core/errors.ts';

export interface SplitRecord {
  rule: 'recipe' | 'keep' | 'stratified';
  seed: number;
  /** Recipe rule: batch size and share of validation batches cut off as test. */
  batch_size?: number;
  test_batch_fraction?: number;
  /** Stratified rule: shares per class. */
  test_fraction?: number;
  validation_fraction?: number;
  /** The fetched image sets the split read. */
  from: string[];
  classNames: string[];
  /** Set name -> class name -> images. */
  counts: Record<'train' | 'validation' | 'test', Record<string, number>>;
}

const SETS = ['train', 'validation', 'test'] as const;
type SetName = (typeof SETS)[number];

const paramsSchema = {
  type: 'object',
  properties: {
    seed: { type: 'integer', default: 42, description: 'seed of the shuffles' },
    batch_size: { type: 'integer', minimum: 1, default: 32, description: 'batch size of the recipe\'s test cut' },
    test_batch_fraction: {
      type: 'number',
      minimum: 0,
      exclusiveMaximum: 1,
      default: 0.2,
      description: 'train + validation data: share of the validation batches (rounded down) that become test',
    },
    test_fraction: {
      type: 'number',
      minimum: 0,
      exclusiveMaximum: 1,
      default: 0.1,
      description: 'single-set data: share of each class for test',
    },
    validation_fraction: {
      type: 'number',
      minimum: 0,
      exclusiveMaximum: 1,
      default: 0.2,
      description: 'single-set data: share of each class for validation',
    },
  },
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type SplitParams = ParamsOf<typeof paramsSchema>;

const splitKind: StageKind<SplitParams> = {
  name: 'split',
  // 2: indexed sets over hard links of the fetched pixels instead of copies of them.
  version: 2,
  description:
    'Shuffles the fetched images (seeded) and splits them into train, validation and test: the recipe\'s batch-wise cut of the validation set, or a stratified split of a single set.',
  params: paramsSchema,
  inputs: { data: ['fetch'] },
  usesTensorflow: false,
  resources: { cpu: 1 },
  run: runSplit,
};

export default splitKind;

async function runSplit(ctx: StageContext<SplitParams>): Promise<void> {
  const dataDir = ctx.inputs['data'];
  if (!dataDir) throw new Error('bug: split needs the artifacts of a fetch stage (input `data`)');
  const seed = ctx.params.seed;
  const batchSize = ctx.params.batch_size;
  const present: string[] = [];
  for (const name of ['train', 'validation', 'test', 'all']) {
    if (await exists(path.join(dataDir, `${name}.json`))) present.push(name);
  }

  let record: SplitRecord;
  let sets: Record<SetName, { source: FetchedSet; order: number[] }>;
  if (present.includes('train') && present.includes('validation')) {
    const testFraction = ctx.params.test_batch_fraction;
    const train = await fetchedSet(dataDir, 'train');
    const validation = await fetchedSet(dataDir, 'validation');
    checkSameClasses(train, validation, 'validation');
    const trainOrder = shuffle(indexes(train.count), createRng(seed, 1));
    const validationOrder = shuffle(indexes(validation.count), createRng(seed, 2));
    if (present.includes('test')) {
      const test = await fetchedSet(dataDir, 'test');
      checkSameClasses(train, test, 'test');
      sets = {
        train: { source: train, order: trainOrder },
        validation: { source: validation, order: validationOrder },
        test: { source: test, order: shuffle(indexes(test.count), createRng(seed, 3)) },
      };
      record = baseRecord('keep', seed, ['train', 'validation', 'test'], train.classNames);
    } else {
      const testCount = recipeTestCount(validation.count, batchSize, testFraction);
      if (testCount === 0 && testFraction > 0) {
        throw new InputError(
          `the test set would be empty: ${validation.count} validation images make ` +
            `${Math.ceil(validation.count / batchSize)} batches of ${batchSize}, and test_batch_fraction ${testFraction} of them is less than one batch`,
        );
      }
      if (testCount >= validation.count) {
        throw new InputError(`the validation set would be empty: test takes all ${validation.count} validation images`);
      }
      sets = {
        train: { source: train, order: trainOrder },
        validation: { source: validation, order: validationOrder.slice(testCount) },
        test: { source: validation, order: validationOrder.slice(0, testCount) },
      };
      record = { ...baseRecord('recipe', seed, ['train', 'validation'], train.classNames), batch_size: batchSize, test_batch_fraction: testFraction };
      const batches = Math.ceil(validation.count / batchSize);
      ctx.log(
        `validation: ${batches} batches of ${batchSize}; the first ${Math.floor(batches * testFraction + 1e-9)} ` +
          `(${testCount} images) become test`,
      );
    }
  } else if (present.length === 1 && (present[0] === 'all' || present[0] === 'train')) {
    const name = present[0];
    const testFraction = ctx.params.test_fraction;
    const validationFraction = ctx.params.validation_fraction;
    const all = await fetchedSet(dataDir, name);
    const parts = stratify(all, validationFraction, testFraction, createRng(seed, 4));
    sets = {
      train: { source: all, order: shuffle(parts.train, createRng(seed, 1)) },
      validation: { source: all, order: shuffle(parts.validation, createRng(seed, 2)) },
      test: { source: all, order: shuffle(parts.test, createRng(seed, 3)) },
    };
    record = {
      ...baseRecord('stratified', seed, [name], all.classNames),
      test_fraction: testFraction,
      validation_fraction: validationFraction,
    };
  } else {
    throw new InputError(
      `cannot split the fetched sets ${present.join(', ') || '(none)'} in ${dataDir}: ` +
        'expected train and validation, or a single set (all or train)',
    );
  }

  const linked = new Map<string, string>();
  for (const name of SETS) {
    const { source, order } = sets[name];
    const target = source.meta.indexed?.file ?? pixelFileName(source.name);
    let file = linked.get(target);
    if (file === undefined) {
      file = `fetched-${target}`;
      await linkOrCopy(path.join(dataDir, target), path.join(ctx.outDir, file));
      linked.set(target, file);
    }
    const subset = pick(source, order, file);
    await writeImageSetMeta(ctx.outDir, name, subset);
    record.counts[name] = countPerClass(subset);
  }
  await fs.writeFile(path.join(ctx.outDir, 'split.json'), JSON.stringify(record, null, 2) + '\n');
  for (const name of SETS) {
    const counts = record.counts[name];
    ctx.log(`${name}: ${sets[name].order.length} images (${Object.entries(counts).map(([c, n]) => `${c} ${n}`).join(', ')})`);
  }
  ctx.summary({
    train_images: sets.train.order.length,
    validation_images: sets.validation.order.length,
    test_images: sets.test.order.length,
    split_rule: record.rule,
  });
}

/** The recipe's cut: the first floor(batches · fraction) batches of the (shuffled) validation set. */
export function recipeTestCount(count: number, batchSize: number, fraction: number): number {
  const batches = Math.ceil(count / batchSize);
  const testBatches = Math.floor(batches * fraction + 1e-9);
  return Math.min(count, testBatches * batchSize);
}

/** Per class: shuffled, then the first round(n·test) to test, the next round(n·validation) to validation. */
export function stratify(
  set: Pick<ImageSetMeta, 'labels' | 'classNames'>,
  validationFraction: number,
  testFraction: number,
  rng: () => number,
): { train: number[]; validation: number[]; test: number[] } {
  const parts = { train: [] as number[], validation: [] as number[], test: [] as number[] };
  for (const [label, className] of set.classNames.entries()) {
    const members = shuffle(
      set.labels.flatMap((l, i) => (l === label ? [i] : [])),
      rng,
    );
    const testCount = Math.round(members.length * testFraction);
    const validationCount = Math.round(members.length * validationFraction);
    if (members.length - testCount - validationCount < 1) {
      throw new InputError(
        `class ${className} has ${members.length} images: too few to keep any for training after ` +
          `validation_fraction ${validationFraction} and test_fraction ${testFraction}`,
      );
    }
    parts.test.push(...members.slice(0, testCount));
    parts.validation.push(...members.slice(testCount, testCount + validationCount));
    parts.train.push(...members.slice(testCount + validationCount));
  }
  for (const name of ['validation', 'test'] as const) {
    const fraction = name === 'test' ? testFraction : validationFraction;
    if (parts[name].length === 0 && fraction > 0) {
      throw new InputError(`the ${name} set would be empty: ${set.labels.length} images are too few for ${name}_fraction ${fraction}`);
    }
  }
  return parts;
}

function baseRecord(rule: SplitRecord['rule'], seed: number, from: string[], classNames: string[]): SplitRecord {
  return {
    rule,
    seed,
    from,
    classNames,
    counts: { train: {}, validation: {}, test: {} },
  };
}

function indexes(count: number): number[] {
  return Array.from({ length: count }, (_, i) => i);
}

function checkSameClasses(a: FetchedSet, b: FetchedSet, name: string): void {
  if (a.classNames.join('\n') !== b.classNames.join('\n')) {
    throw new InputError(`${name} has classes ${b.classNames.join(', ')} but train has ${a.classNames.join(', ')}`);
  }
  if (a.height !== b.height || a.width !== b.width || a.channels !== b.channels) {
    throw new InputError(`${name} images are ${b.height}×${b.width}×${b.channels}, train images ${a.height}×${a.width}×${a.channels}`);
  }
}

/** A fetched image set's metadata (the pixels stay where they are). */
interface FetchedSet {
  name: string;
  meta: ImageSetMeta;
  count: number;
  height: number;
  width: number;
  channels: number;
  classNames: string[];
  labels: number[];
}

async function fetchedSet(dir: string, name: string): Promise<FetchedSet> {
  const meta = await readImageSetMeta(dir, name);
  if (meta.views !== 1) throw new InputError(`image set ${name} in ${dir} has ${meta.views} views: split takes fetched images`);
  return { name, meta, count: meta.count, height: meta.height, width: meta.width, channels: meta.channels, classNames: meta.classNames, labels: meta.labels };
}

/** The images of `set` at `order`, as an indexed set over the pixel file `file` (a link of the set's own). */
function pick(set: FetchedSet, order: readonly number[], file: string): ImageSetMeta {
  const { meta } = set;
  const sourceRows = meta.indexed?.rows;
  return {
    count: order.length,
    height: meta.height,
    width: meta.width,
    channels: meta.channels,
    views: 1,
    classNames: meta.classNames,
    labels: order.map((i) => meta.labels[i]!),
    files: order.map((i) => meta.files[i]!),
    indexed: {
      file,
      rows: order.map((i) => (sourceRows ? sourceRows[i]! : i)),
      fileRows: meta.indexed?.fileRows ?? meta.count,
    },
  };
}

function countPerClass(set: Pick<ImageSetMeta, 'classNames' | 'labels'>): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of set.classNames) counts[name] = 0;
  for (const label of set.labels) {
    const name = set.classNames[label]!;
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}
