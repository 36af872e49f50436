import { closeSync, ftruncateSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  ImageSetReader,
  ImageSetWriter,
  rowOffset,
  withImageSet,
  writeImageSetMeta,
  type ImageSetMeta,
} from '../../src/ml/dataset.ts';
import { FeatureReader, FEATURES_FORMAT, readFeatures, type FeaturesMeta } from '../../src/ml/features.ts';
import { tempDir } from '../helpers/run-kind.ts';

/** Image i of a tiny set: its bytes spell i, so any misplaced row shows. */
function tinyImage(i: number, bytes = 12): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let k = 0; k < bytes; k++) out[k] = (i * 7 + k) & 0xff;
  out[0] = i & 0xff;
  out[1] = i >> 8;
  return out;
}

const shape = { height: 2, width: 2, channels: 3 };

function metaOf(count: number, views = 1): Omit<ImageSetMeta, 'height' | 'width' | 'channels'> {
  return {
    count,
    views,
    classNames: ['a', 'b'],
    labels: Array.from({ length: count }, (_, i) => i % 2),
    files: Array.from({ length: count }, (_, i) => `x/${i}.png`),
  };
}

test('written image by image and in batches, read back in any row range', async () => {
  const dir = tempDir();
  const writer = await ImageSetWriter.create(dir, 'set', shape);
  await writer.append(tinyImage(0));
  const batch = new Uint8Array(9 * 12);
  for (let i = 1; i < 10; i++) batch.set(tinyImage(i), (i - 1) * 12);
  await writer.append(batch);
  for (let i = 10; i < 14; i++) await writer.append(tinyImage(i));
  assert.is(writer.rows, 14);
  const meta = await writer.finish(metaOf(7, 2));
  assert.equal(Object.keys(meta), ['count', 'height', 'width', 'channels', 'views', 'classNames', 'labels', 'files']);
  assert.is(statSync(path.join(dir, 'set.u8')).size, 14 * 12);

  await withImageSet(dir, 'set', async (reader) => {
    assert.is(reader.rows, 14);
    const buffer = new Uint8Array(4 * 12);
    for (const [start, count] of [[0, 14], [3, 4], [13, 1], [5, 0]] as const) {
      const rows = await reader.read(start, count, count <= 4 ? buffer : undefined);
      assert.is(rows.length, count * 12);
      for (let r = 0; r < count; r++) assert.equal(rows.subarray(r * 12, (r + 1) * 12), tinyImage(start + r));
    }
    assert.equal(await reader.image(2, 1), tinyImage(9)); // view 1 of image 2: row 1·7 + 2
    try {
      await reader.read(10, 5);
      assert.unreachable();
    } catch (error) {
      assert.is((error as Error).message, 'bug: image set set: rows 10…14 out of range (0…13)');
    }
  });
});

test('the metadata must account for every row written; a short pixel file is named', async () => {
  const dir = tempDir();
  const writer = await ImageSetWriter.create(dir, 'set', shape);
  await writer.append(tinyImage(0));
  try {
    await writer.finish(metaOf(2));
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, 'bug: image set set: 1 images written, metadata says 2 × 1 views');
  }
  await writeImageSetMeta(dir, 'set', { ...shape, ...metaOf(2) });
  try {
    await ImageSetReader.open(dir, 'set');
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, `image set set in ${dir}: 12 bytes of pixels, expected 24`);
  }
});

test('an indexed set reads the rows it names, in its order, runs of consecutive rows at once', async () => {
  const dir = tempDir();
  const writer = await ImageSetWriter.create(dir, 'all', shape);
  for (let i = 0; i < 20; i++) await writer.append(tinyImage(i));
  await writer.finish(metaOf(20));
  const rows = [5, 6, 7, 0, 19, 18, 2, 3];
  await writeImageSetMeta(dir, 'part', { ...shape, ...metaOf(rows.length), indexed: { file: 'all.u8', rows, fileRows: 20 } });
  await withImageSet(dir, 'part', async (reader) => {
    const all = await reader.read(0, rows.length);
    rows.forEach((row, i) => assert.equal(all.subarray(i * 12, (i + 1) * 12), tinyImage(row)));
    const middle = await reader.read(2, 4);
    [7, 0, 19, 18].forEach((row, i) => assert.equal(middle.subarray(i * 12, (i + 1) * 12), tinyImage(row)));
  });
});

// 48,000 images of 160×160×3 are 3,686,400,000 bytes: the file that one readFile could not read.
const BIG = { count: 48_000, height: 160, width: 160, channels: 3 };
const BIG_ROW = 160 * 160 * 3;

test('offsets stay exact far past 2 GiB', () => {
  assert.is(rowOffset(47_999, BIG_ROW), 3_686_323_200);
  assert.is(rowOffset(2 ** 30, BIG_ROW), 82_463_372_083_200); // 82 TB
  assert.throws(() => rowOffset(2 ** 46, BIG_ROW), /no exact offset/); // past 2^53 bytes
});

test('a 3.7 GB pixel file (sparse: nothing written but two images) reads past the 2 GiB and 4 GiB marks', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'fetched.u8');
  const fd = openSync(file, 'w');
  const far = new Uint8Array(BIG_ROW).fill(7);
  far[0] = 1;
  far[BIG_ROW - 1] = 2;
  const beyond = new Uint8Array(BIG_ROW).fill(9);
  try {
    ftruncateSync(fd, BIG.count * BIG_ROW);
    writeSync(fd, far, 0, BIG_ROW, 40_000 * BIG_ROW); // 3.07 GB in
    writeSync(fd, beyond, 0, BIG_ROW, 47_999 * BIG_ROW); // the last image
  } finally {
    closeSync(fd);
  }
  assert.is(statSync(file).size, 3_686_400_000);
  assert.ok(statSync(file).blocks * 512 < 50e6, 'the test file is sparse');
  const meta = { ...BIG, views: 1, classNames: ['a', 'b'], labels: Array<number>(BIG.count).fill(0), files: Array<string>(BIG.count).fill('x') };
  writeFileSync(path.join(dir, 'fetched.json'), JSON.stringify(meta));
  await withImageSet(dir, 'fetched', async (reader) => {
    assert.equal(await reader.image(40_000), far);
    assert.equal(await reader.image(47_999), beyond);
    const two = await reader.read(39_999, 2);
    assert.equal(two.subarray(0, BIG_ROW), new Uint8Array(BIG_ROW));
    assert.equal(two.subarray(BIG_ROW), far);
  });
  // split's indexed set over it: rows past the 2 GiB mark, out of order
  await writeImageSetMeta(dir, 'test', {
    ...BIG, count: 3, views: 1, classNames: ['a', 'b'], labels: [0, 0, 0], files: ['p', 'q', 'r'],
    indexed: { file: 'fetched.u8', rows: [47_999, 10, 40_000], fileRows: BIG.count },
  });
  await withImageSet(dir, 'test', async (reader) => {
    const all = await reader.read(0, 3);
    assert.equal(all.subarray(0, BIG_ROW), beyond);
    assert.equal(all.subarray(BIG_ROW, 2 * BIG_ROW), new Uint8Array(BIG_ROW));
    assert.equal(all.subarray(2 * BIG_ROW), far);
  });
});

test('feature files past 2 GiB: one reader serves row ranges anywhere in them', async () => {
  const dir = tempDir();
  // 60,000 rows of 20×20×32 float32 activations (block_5_add): 3,072,000,000 bytes, sparse
  const rows = 60_000;
  const rowSize = 20 * 20 * 32;
  const fd = openSync(path.join(dir, 'boundary-views.f32'), 'w');
  const row = new Float32Array(rowSize).map((_, k) => k / 8);
  try {
    ftruncateSync(fd, rows * rowSize * 4);
    writeSync(fd, new Uint8Array(row.buffer), 0, rowSize * 4, 55_555 * rowSize * 4);
  } finally {
    closeSync(fd);
  }
  const set = { count: rows / 2, views: 2, labels: [], files: [], source: 'views/views', boundary: 'boundary-views.f32' };
  const meta = {
    format: FEATURES_FORMAT,
    boundary: { shape: [20, 20, 32], dtype: 'float32' },
    pooled: null,
    sets: { views: set, validation: set, test: set },
  } as unknown as FeaturesMeta;
  const reader = await FeatureReader.open(dir, meta, 'views', 'boundary');
  try {
    const batch = await reader.read(55_554, 3);
    assert.equal(batch.shape, [3, 20, 20, 32]);
    assert.equal(batch.data.subarray(rowSize, 2 * rowSize), row);
    assert.ok(batch.data.subarray(0, rowSize).every((v) => v === 0));
  } finally {
    await reader.close();
  }
  // view 1, row 25,555 of it: the same row through readFeatures
  const one = await readFeatures(dir, meta, 'views', 'boundary', { view: 1, rows: { start: 25_555, count: 1 } });
  assert.equal(one.data, row);
});

test.run();
