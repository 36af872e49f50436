import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { augmented, viewTransforms } from '../../src/ml/augment.ts';
import { AugmentedViews, readAugmentRecord, type AugmentRecord } from '../../src/ml/augmented-views.ts';
import { InputError } from '../../src/core/errors.ts';
import { imageAt, shapesImageSet, writeImageSet } from '../helpers/image-sets.ts';
import { tempDir } from '../helpers/run-kind.ts';

const SIZE = 10;
const record = (count: number, views: number, seed = 4): AugmentRecord => ({ seed, views, flip: 'horizontal', rotation: 0.3, count, draws: [], pixels: 'generated' });

test('rows made on demand are view v of image i, for any range, across views, on one thread or several', async () => {
  const dir = tempDir();
  const train = shapesImageSet(SIZE, 7, 1, 0);
  await writeImageSet(dir, 'train', train);
  const transforms = [0, 1, 2].map((v) => viewTransforms(4, v, 7, { flip: 'horizontal', rotation: 0.3 }));
  const rowBytes = SIZE * SIZE * 3;
  for (const threads of [1, 2]) {
    const views = await AugmentedViews.open(dir, 'train', record(7, 3), threads, 5);
    try {
      assert.equal([views.rows, views.meta.views, views.meta.count, views.threadCount], [21, 3, 7, threads]);
      // 0..4, 5..9 (crosses view 0 → 1), 10..14, 15..19, 20 (the last row alone)
      const out = [new Uint8Array(5 * rowBytes), new Uint8Array(5 * rowBytes)];
      const fetches = [0, 5, 10, 15, 20].map((start, k) => ({ start, n: Math.min(5, 21 - start), fetch: views.begin(start, Math.min(5, 21 - start), out[k % 2]!) }));
      for (const { start, n, fetch } of fetches.slice(0, 2)) {
        const rows = await fetch.done;
        for (let r = 0; r < n; r++) {
          const row = start + r;
          const view = Math.floor(row / 7);
          const want = augmented(imageAt(train, row % 7), SIZE, SIZE, 3, transforms[view]![row % 7]!);
          assert.equal(rows.subarray(r * rowBytes, (r + 1) * rowBytes), want, `row ${row} on ${threads} thread(s)`);
        }
      }
      await Promise.all(fetches.slice(2).map((f) => f.fetch.done));
      const last = await views.read(20, 1, new Uint8Array(rowBytes));
      assert.equal(last, augmented(imageAt(train, 6), SIZE, SIZE, 3, transforms[2]![6]!));
    } finally {
      await views.close();
    }
  }
});

test('draws made for other images are refused', async () => {
  const dir = tempDir();
  await writeImageSet(dir, 'train', shapesImageSet(SIZE, 4, 1, 0));
  try {
    await AugmentedViews.open(dir, 'train', record(5, 2), 1, 4);
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /drawn for 5 other images than the 4 of image set train/);
  }
  const files = shapesImageSet(SIZE, 4, 1, 0).files;
  try {
    await AugmentedViews.open(dir, 'train', { ...record(4, 2), sourceFiles: files.map((f) => `other/${f}`) }, 1, 4);
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /drawn for 4 other images than the 4 of image set train/);
  }
});

test('augment.json: none (or one without pixels) means stored views; one that cannot be read, is not JSON or lacks a field is an InputError naming the file', async () => {
  assert.is(await readAugmentRecord(tempDir()), undefined);
  const write = (content: string) => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'augment.json'), content);
    return dir;
  };
  const good = record(7, 3);
  assert.equal(await readAugmentRecord(write(JSON.stringify(good))), good);
  // augment version 1 wrote no `pixels`: its views are stored.
  const { pixels: _pixels, ...v1 } = good;
  assert.equal(await readAugmentRecord(write(JSON.stringify(v1))), v1);

  const unreadable = tempDir();
  mkdirSync(path.join(unreadable, 'augment.json'));
  const refused: Array<[string, RegExp]> = [
    [unreadable, /^cannot read the augmentation record .*\/augment\.json: EISDIR/],
    [write('{"seed": 4, "views": 3,'), /^the augmentation record .*\/augment\.json is not JSON: /],
    [write(''), /^the augmentation record .*\/augment\.json is not JSON: /],
    [write('[1, 2]'), /^the augmentation record .*\/augment\.json is not valid: expected an object, got \[1,2\]$/],
    [write(JSON.stringify({ ...good, pixels: 'made' })), /is not valid: pixels is "made", expected "stored" or "generated"$/],
    [
      write(JSON.stringify({ ...good, views: '3', flip: undefined, sourceFiles: [1] })),
      /is not valid: views is "3", expected an integer >= 1; flip is missing, expected "horizontal" or "none"; sourceFiles is not a list of file names$/,
    ],
  ];
  for (const [dir, message] of refused) {
    try {
      await readAugmentRecord(dir);
      assert.unreachable(`${dir}: expected an InputError`);
    } catch (error) {
      assert.ok(error instanceof InputError, `${String(error)}`);
      assert.match(error.message, message);
      assert.is(error.file, path.join(dir, 'augment.json'));
    }
  }
});

test.run();
