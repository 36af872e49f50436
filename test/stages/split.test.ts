import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readImageSet, writeImageSet, type ImageSet } from '../helpers/image-sets.ts';
import type { ImageSetMeta } from '../../src/ml/dataset.ts';
import splitKind, { recipeTestCount, type SplitParams, type SplitRecord } from '../../src/stages/split.ts';
import { runKind, tempDir } from '../helpers/run-kind.ts';

/** A tiny image set whose pixels spell out each image's file index, so moves can be checked. */
function syntheticSet(prefix: string, perClass: number[], classNames = perClass.map((_, i) => `class${i}`)): ImageSet {
  const labels = perClass.flatMap((n, label) => Array<number>(n).fill(label));
  const count = labels.length;
  const pixels = new Uint8Array(count * 12);
  for (let i = 0; i < count; i++) {
    pixels[i * 12] = i & 0xff;
    pixels[i * 12 + 1] = i >> 8;
    pixels[i * 12 + 2] = labels[i]!;
  }
  return {
    count,
    height: 2,
    width: 2,
    channels: 3,
    views: 1,
    classNames,
    labels,
    files: labels.map((label, i) => `${prefix}/${classNames[label]}/${i}.jpg`),
    pixels,
  };
}

async function fetched(sets: Record<string, ImageSet>): Promise<string> {
  const dir = tempDir();
  for (const [name, set] of Object.entries(sets)) await writeImageSet(dir, name, set);
  return dir;
}

/** Every image of a split set still carries its own pixels, label and file. */
function assertConsistent(set: ImageSet): void {
  for (let i = 0; i < set.count; i++) {
    const index = set.pixels[i * 12]! + 256 * set.pixels[i * 12 + 1]!;
    assert.ok(set.files[i]!.endsWith(`/${index}.jpg`), `image ${i} is ${set.files[i]} but holds pixels of ${index}`);
    assert.is(set.pixels[i * 12 + 2], set.labels[i]);
  }
}

async function split(dataDir: string, params: Partial<SplitParams> = {}) {
  const run = await runKind(splitKind, params, { data: dataDir });
  const sets = {
    train: await readImageSet(run.outDir, 'train'),
    validation: await readImageSet(run.outDir, 'validation'),
    test: await readImageSet(run.outDir, 'test'),
  };
  const record = JSON.parse(readFileSync(path.join(run.outDir, 'split.json'), 'utf8')) as SplitRecord;
  return { run, sets, record };
}

test('the recipe rule: 1000 validation images → 32 batches, the first 6 (192 images) are test', async () => {
  assert.is(recipeTestCount(1000, 32, 0.2), 192);
  assert.is(recipeTestCount(100, 8, 0.2), 16); // 13 batches → 2
  assert.is(recipeTestCount(10, 32, 0.2), 0);

  const data = await fetched({
    train: syntheticSet('train', [30, 20], ['cats', 'dogs']),
    validation: syntheticSet('validation', [500, 500], ['cats', 'dogs']),
  });
  // test_fraction belongs to the stratified rule and does not change the recipe's cut
  const { sets, record, run } = await split(data, { seed: 3, test_fraction: 0.1 });
  assert.equal([sets.train.count, sets.validation.count, sets.test.count], [50, 808, 192]);
  assert.is(record.rule, 'recipe');
  assert.equal(record.counts.train, { cats: 30, dogs: 20 });
  assert.is(record.counts.test['cats']! + record.counts.test['dogs']!, 192);
  assert.ok(record.counts.test['cats']! > 60 && record.counts.test['cats']! < 132, 'test is a random draw of both classes');
  for (const set of Object.values(sets)) assertConsistent(set);

  // test and validation are disjoint and together the whole validation set
  const files = [...sets.validation.files, ...sets.test.files];
  assert.is(new Set(files).size, 1000);
  assert.ok(files.every((f) => f.startsWith('validation/')));
  // the training set is shuffled, and complete
  assert.not.equal(sets.train.files, syntheticSet('train', [30, 20], ['cats', 'dogs']).files);
  assert.is(new Set(sets.train.files).size, 50);
  assert.equal(run.summary, { train_images: 50, validation_images: 808, test_images: 192, split_rule: 'recipe' });
});

test('deterministic for a seed, different for another seed', async () => {
  const data = await fetched({
    train: syntheticSet('train', [40, 40]),
    validation: syntheticSet('validation', [50, 50]),
  });
  const a = await split(data, { seed: 7, batch_size: 8 });
  const b = await split(data, { seed: 7, batch_size: 8 });
  const c = await split(data, { seed: 8, batch_size: 8 });
  for (const name of ['train', 'validation', 'test'] as const) {
    assert.equal(a.sets[name].pixels, b.sets[name].pixels);
    assert.equal(a.sets[name].files, b.sets[name].files);
    assert.not.equal(a.sets[name].files, c.sets[name].files);
  }
  assert.is(a.sets.test.count, 16);
  const fewer = await split(data, { seed: 7, batch_size: 8, test_batch_fraction: 0.1 });
  assert.is(fewer.sets.test.count, 8); // 13 batches → 1
});

test('a single set is split stratified by class', async () => {
  const data = await fetched({ all: syntheticSet('all', [50, 30, 21]) });
  const { sets, record } = await split(data, { seed: 1, validation_fraction: 0.2, test_fraction: 0.1 });
  assert.is(record.rule, 'stratified');
  assert.equal(record.counts, {
    train: { class0: 35, class1: 21, class2: 15 },
    validation: { class0: 10, class1: 6, class2: 4 },
    test: { class0: 5, class1: 3, class2: 2 },
  });
  for (const set of Object.values(sets)) assertConsistent(set);
  const all = [...sets.train.files, ...sets.validation.files, ...sets.test.files];
  assert.is(new Set(all).size, 101);
  // defaults: validation 0.2, test 0.1
  const defaults = await split(data);
  assert.equal([defaults.sets.train.count, defaults.sets.validation.count, defaults.sets.test.count], [71, 20, 10]);
});

test('a fetched test set is kept; too few images is a clear error', async () => {
  const data = await fetched({
    train: syntheticSet('train', [4, 4]),
    validation: syntheticSet('validation', [3, 3]),
    test: syntheticSet('test', [2, 2]),
  });
  const { sets, record } = await split(data);
  assert.is(record.rule, 'keep');
  assert.equal([sets.train.count, sets.validation.count, sets.test.count], [8, 6, 4]);

  const small = await fetched({ train: syntheticSet('train', [4, 4]), validation: syntheticSet('validation', [5, 5]) });
  try {
    await runKind(splitKind, {}, { data: small });
    assert.unreachable();
  } catch (error) {
    assert.is(
      (error as Error).message,
      'the test set would be empty: 10 validation images make 1 batches of 32, and test_batch_fraction 0.2 of them is less than one batch',
    );
  }
  const tiny = await fetched({ all: syntheticSet('all', [10, 2]) });
  try {
    await runKind(splitKind, { validation_fraction: 0.5, test_fraction: 0.4 }, { data: tiny });
    assert.unreachable();
  } catch (error) {
    assert.is(
      (error as Error).message,
      'class class1 has 2 images: too few to keep any for training after validation_fraction 0.5 and test_fraction 0.4',
    );
  }
});

test('the sets index the fetched pixels through hard links: nothing is copied, and they outlive the fetch artifact', async () => {
  const data = await fetched({
    train: syntheticSet('train', [30, 20]),
    validation: syntheticSet('validation', [40, 40]),
  });
  const { run, sets } = await split(data, { seed: 5, batch_size: 8 });
  // no pixel file of its own: train reads fetched-train.u8, validation and test both fetched-validation.u8
  for (const name of ['train', 'validation', 'test']) assert.not.ok(existsSync(path.join(run.outDir, `${name}.u8`)), name);
  const meta = (name: string) => JSON.parse(readFileSync(path.join(run.outDir, `${name}.json`), 'utf8')) as ImageSetMeta;
  assert.equal(meta('train').indexed?.file, 'fetched-train.u8');
  assert.equal(meta('validation').indexed?.file, 'fetched-validation.u8');
  assert.equal(meta('test').indexed?.file, 'fetched-validation.u8');
  assert.is(meta('validation').indexed?.fileRows, 80);
  for (const name of ['train', 'validation']) {
    const linked = statSync(path.join(run.outDir, `fetched-${name}.u8`));
    assert.is(linked.ino, statSync(path.join(data, `${name}.u8`)).ino, `${name}: a hard link, not a copy`);
    assert.is(linked.nlink, 2);
  }
  // image i of a split set is row rows[i] of the fetched set: the pixels that go with its file and label
  const rows = meta('test').indexed!.rows;
  const fetchedValidation = await readImageSet(data, 'validation');
  rows.forEach((row, i) => assert.is(sets.test.files[i], fetchedValidation.files[row]));
  // the fetch artifact goes (pipe gc); the split still reads the same pixels
  rmSync(data, { recursive: true });
  for (const name of ['train', 'validation', 'test'] as const) {
    const again = await readImageSet(run.outDir, name);
    assert.equal(again.pixels, sets[name].pixels, name);
    assertConsistent(again);
  }
});

test('a damaged index is an error that names the set, not a wrong image', async () => {
  const data = await fetched({ all: syntheticSet('all', [20, 20]) });
  const { run } = await split(data);
  const file = path.join(run.outDir, 'train.json');
  const meta = JSON.parse(readFileSync(file, 'utf8')) as ImageSetMeta;
  meta.indexed!.rows[3] = 40;
  writeFileSync(file, JSON.stringify(meta));
  try {
    await readImageSet(run.outDir, 'train');
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, `image set train in ${run.outDir}: image 3 is row 40 of a file of 40`);
  }
});

test.run();
