import { existsSync, promises as fs, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import * as path from 'node:path';
import type { Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import kind, { type ExtractFeaturesParams } from '../../src/stages/extract-features.ts';
import augmentKind from '../../src/stages/augment.ts';
import { imageAt, readImageSet, type ImageSet } from '../helpers/image-sets.ts';
import { fromFloat16Bits, loadFeatureBase, readFeatures, readFeaturesMeta, toFloat16Bits } from '../../src/ml/features.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { InputError } from '../../src/core/errors.ts';
import { listFiles } from '../../src/util/hash.ts';
import { runKind, tempDir, withDefaults } from '../helpers/run-kind.ts';
import { splitAndViews } from '../helpers/image-sets.ts';

const tf = loadTf('cpu');
const SIZE = 96;

/** A split artifact (train 5, validation 4, test 3) and an augment artifact (train × 2 views). */
function fixtures(): Promise<{ split: string; augment: string }> {
  return splitAndViews(SIZE, { train: 5, validation: 4, test: 3 });
}

function preprocessed(set: ImageSet, rows: number[]): Tensor4D {
  const size = SIZE * SIZE * 3;
  const values = new Float32Array(rows.length * size);
  rows.forEach((row, n) => {
    const pixels = imageAt(set, row % set.count, Math.floor(row / set.count));
    for (let i = 0; i < size; i++) values[n * size + i] = pixels[i]! / 127.5 - 1;
  });
  return tf.tensor4d(values, [rows.length, SIZE, SIZE, 3]);
}

test('extract-features: pooled and float16 boundary activations of every view, validation and test', async () => {
  const { split, augment } = await fixtures();
  const run = await runKind(
    kind,
    { weights: 'none', seed: 5, alpha: 0.35, batch_size: 4, fine_tune_at: 101, dtype: 'float16' },
    { data: split, views: augment },
  );
  const out = run.outDir;
  const files = (await fs.readdir(out)).sort();
  assert.equal(files, [
    'base', 'boundary-test.f16', 'boundary-validation.f16', 'boundary-views.f16', 'features.json',
    'pooled-test.f32', 'pooled-validation.f32', 'pooled-views.f32',
  ]);
  // Rows × 1280 float32; rows × 6 × 6 × 32 float16 (block_10_project_BN at 96 px, alpha 0.35).
  const sizes: Record<string, number> = {
    'pooled-views.f32': 10 * 1280 * 4, 'pooled-validation.f32': 4 * 1280 * 4, 'pooled-test.f32': 3 * 1280 * 4,
    'boundary-views.f16': 10 * 6 * 6 * 32 * 2, 'boundary-validation.f16': 4 * 6 * 6 * 32 * 2, 'boundary-test.f16': 3 * 6 * 6 * 32 * 2,
  };
  for (const [file, bytes] of Object.entries(sizes)) assert.is((await fs.stat(path.join(out, file))).size, bytes, file);

  const meta = await readFeaturesMeta(out);
  assert.equal(meta.model, { architecture: 'mobilenet_v2', alpha: 0.35, inputShape: [96, 96, 3], preprocessing: 'x / 127.5 - 1', params: 410_208 });
  assert.equal(meta.boundary, { layerName: 'block_10_project_BN', index: 97, shape: [6, 6, 32], topStart: 98, fineTuneAt: 101, dtype: 'float16' });
  assert.equal(meta.pooled, { layer: 'out_relu', pooling: 'global-average', dim: 1280, dtype: 'float32' });
  assert.equal(meta.classNames, ['circles', 'squares']);
  assert.equal(meta.sets.views, {
    count: 5, views: 2, labels: [0, 1, 0, 1, 0], files: ['circles/0.png', 'squares/1.png', 'circles/2.png', 'squares/3.png', 'circles/4.png'],
    source: 'views/views', pooled: 'pooled-views.f32', boundary: 'boundary-views.f16',
  });
  assert.is(meta.sets.validation.source, 'data/validation');
  assert.is(meta.sets.test.count, 3);
  assert.equal([meta.weights.kind, meta.weights.seed, meta.weights.params], ['none', 5, 410_208]);

  assert.ok(run.metrics.some((m) => m.key === 'extract_images_per_second' && m.value > 0));
  assert.equal(run.progress[run.progress.length - 1], { done: 17, total: 17, label: 'test' });
  assert.is(run.summary['images'], 17);
  assert.is(run.summary['boundary'], 'block_10_project_BN');

  // The values are the stored base's: pooled = mean of out_relu, boundary ≈ the layer's output.
  const { model, boundary } = await loadFeatureBase(tf, out, { fineTuneAt: 100 });
  assert.is(boundary?.layerName, 'block_10_project_BN');
  const views = await readImageSet(augment, 'views');
  const rows = [0, 4, 5, 9]; // first and last image of each view
  const x = preprocessed(views, rows);
  const expectedPooled = tf.tidy(() => tf.mean(model.predict(x) as Tensor, [1, 2]).arraySync() as number[][]);
  const inner = tf.model({ inputs: model.inputs, outputs: model.getLayer('block_10_project_BN').output as never });
  const expectedBoundary = tf.tidy(() => (inner.predict(x) as Tensor).arraySync() as number[][][][]);
  const pooled = await readFeatures(out, meta, 'views', 'pooled');
  const view1 = await readFeatures(out, meta, 'views', 'boundary', { view: 1 });
  const all = await readFeatures(out, meta, 'views', 'boundary');
  assert.equal(pooled.shape, [10, 1280]);
  assert.equal(view1.shape, [5, 6, 6, 32]);
  assert.equal(all.shape, [10, 6, 6, 32]);
  rows.forEach((row, n) => {
    for (let d = 0; d < 1280; d += 37) {
      const want = expectedPooled[n]![d]!;
      assert.ok(Math.abs(pooled.data[row * 1280 + d]! - want) <= 1e-4 * (1 + Math.abs(want)), `pooled row ${row} dim ${d}`);
    }
    const flat = expectedBoundary[n]!.flat(2);
    for (let k = 0; k < flat.length; k += 11) {
      const want = flat[k]!;
      const got = all.data[row * 1152 + k]!;
      assert.ok(Math.abs(got - want) <= 2e-3 * (1 + Math.abs(want)), `boundary row ${row} value ${k}: ${got} vs ${want}`);
      if (row >= 5) assert.is(view1.data[(row - 5) * 1152 + k], got);
    }
  });
  // fine_tune_at 120 cuts elsewhere: the stored activations cannot serve it.
  try {
    await loadFeatureBase(tf, out, { fineTuneAt: 120 });
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /fine_tune_at 120 cuts MobileNetV2 at block_12_add, but the features in .* hold activations of block_10_project_BN/);
  }
  tf.dispose(x);
  model.dispose();
});

test('extract-features without augmentation: the split’s train images are the single view; pooled only', async () => {
  const { split } = await fixtures();
  const run = await runKind(kind, { weights: 'none', alpha: 0.35, batch_size: 32 }, { data: split });
  const meta = await readFeaturesMeta(run.outDir);
  assert.equal([meta.sets.views.count, meta.sets.views.views, meta.sets.views.source], [5, 1, 'data/train']);
  assert.is(meta.boundary, null);
  assert.not.ok(existsSync(path.join(run.outDir, 'boundary-views.f32')));
  assert.is((await fs.stat(path.join(run.outDir, 'pooled-views.f32'))).size, 5 * 1280 * 4);
  const pooled = await readFeatures(run.outDir, meta, 'views', 'pooled');
  assert.ok(pooled.data.some((v) => v > 0), 'features are not all zero');
});

test('extract-features: boundary only, float32; and nothing to do is an error', async () => {
  const { split } = await fixtures();
  const run = await runKind(kind, { weights: 'none', alpha: 0.35, pooled: false, fine_tune_at: 4 }, { data: split });
  const meta = await readFeaturesMeta(run.outDir);
  assert.is(meta.pooled, null);
  assert.equal(meta.boundary?.shape, [48, 48, 16]); // Conv1_relu at 96 px, alpha 0.35
  assert.is((await fs.stat(path.join(run.outDir, 'boundary-test.f32'))).size, 3 * 48 * 48 * 16 * 4);
  assert.not.ok(existsSync(path.join(run.outDir, 'pooled-test.f32')));
  try {
    await runKind(kind, { weights: 'none', pooled: false }, { data: split });
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, 'extract-features has nothing to do: pooled is false and fine_tune_at is null');
  }
});

test('fingerprint: fine_tune_at enters as its boundary; batch_size and an unused seed do not enter', () => {
  const fp = (given: Partial<ExtractFeaturesParams>) => kind.fingerprintParams!(withDefaults(kind, given));
  const base = { weights: '/w/mobilenet.h5' };
  assert.equal(fp({ ...base, fine_tune_at: 100 }), fp({ ...base, fine_tune_at: 101 }));
  assert.equal(fp({ ...base, fine_tune_at: 100 }), fp({ ...base, fine_tune_at: 98, batch_size: 8, seed: 3 }));
  assert.not.equal(fp({ ...base, fine_tune_at: 100 }), fp({ ...base, fine_tune_at: 97 }));
  assert.not.equal(fp({ ...base, fine_tune_at: 100 }), fp(base));
  assert.equal(fp({ ...base, fine_tune_at: 100 }), {
    weights: '/w/mobilenet.h5', alpha: 1, pooled: true, dtype: 'float32', boundary: 'block_10_project_BN',
  });
  assert.not.equal(fp({ weights: 'none', seed: 1 }), fp({ weights: 'none', seed: 2 }));
  assert.equal(fp({}), fp({ weights: 'imagenet', alpha: 1.0, pooled: true, fine_tune_at: null, dtype: 'float32' }));
});

test('inputPaths: local weights only', () => {
  assert.equal(kind.inputPaths!(withDefaults(kind, { weights: '/w/mobilenet.h5' })), ['/w/mobilenet.h5']);
  assert.equal(kind.inputPaths!(withDefaults(kind, { weights: 'models/base' })), ['models/base']);
  assert.equal(kind.inputPaths!(withDefaults(kind, { weights: 'imagenet' })), []);
  assert.equal(kind.inputPaths!(withDefaults(kind, { weights: 'none' })), []);
  assert.equal(kind.inputPaths!(withDefaults(kind, { weights: 'https://example.com/w.h5' })), []);
  assert.equal(kind.inputPaths!(withDefaults(kind, {})), []);
  assert.equal(kind.inputs, { data: ['split'], 'views?': ['augment'] });
  assert.is(kind.usesTensorflow, true);
});

test('float16 conversion rounds to nearest even and keeps specials', () => {
  const cases: Array<[number, number]> = [
    [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00],
    [Infinity, 0x7c00], [-Infinity, 0xfc00], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -25, 0x0002],
    [2 ** -14, 0x0400], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [0.1, 0x2e66], [6, 0x4600],
  ];
  for (const [value, bits] of cases) assert.is(toFloat16Bits(value), bits, `${value}`);
  assert.ok(Number.isNaN(fromFloat16Bits(toFloat16Bits(NaN))));
  for (let bits = 0; bits < 0x7c00; bits += 7) assert.is(toFloat16Bits(fromFloat16Bits(bits)), bits);
});


test('augment draws only by default; extract-features makes those views as it reads them: the artifact of the stored views, byte for byte', async () => {
  const { split } = await fixtures();
  const drawn = await runKind(augmentKind, { views: 3, seed: 9 }, { data: split });
  const stored = await runKind(augmentKind, { views: 3, seed: 9, store: true }, { data: split });
  assert.equal((await fs.readdir(drawn.outDir)).sort(), ['augment.json', 'plots']);
  assert.equal((await fs.readdir(stored.outDir)).sort(), ['augment.json', 'plots', 'views.json', 'views.u8']);
  assert.is(drawn.summary['stored'], false);

  // batch 4 over 5 images × 3 views: batches cross from one view into the next
  const params = { weights: 'none', seed: 5, alpha: 0.35, batch_size: 4, fine_tune_at: 101, dtype: 'float16' } as const;
  const fromStored = await runKind(kind, params, { data: split, views: stored.outDir });
  const fromDrawn = await runKind(kind, params, { data: split, views: drawn.outDir }, { cpus: 2 });
  assert.ok(fromDrawn.logs.some((l) => /views: 15 images \(5 × 3 views\) views: made from data\/train as they are read/.test(l)), fromDrawn.logs.join('\n'));
  for (const file of ['features.json', 'pooled-views.f32', 'boundary-views.f16', 'pooled-validation.f32', 'boundary-test.f16']) {
    const a = await fs.readFile(path.join(fromStored.outDir, file));
    const b = await fs.readFile(path.join(fromDrawn.outDir, file));
    assert.ok(a.equals(b), `${file} differs`);
  }

  // The draws belong to one training set: another one is refused, naming both.
  const other = await fixturesWith(6);
  try {
    await runKind(kind, params, { data: other, views: drawn.outDir });
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /the augmentation was drawn for 5 other images than the 6 of image set train/);
  }
});

test('extract-features in shards: cut by cost (a made view weighs 1.2 read rows), merged into the one job\'s artifact, byte for byte; parts cut otherwise are refused', async () => {
  const { split } = await fixtures();
  const drawn = await runKind(augmentKind, { views: 3, seed: 9 }, { data: split });
  // 8 batches: 5 of 3 made views (3.6 each), then validation 3 + 1 and test 3 read rows.
  const params = { weights: 'none', seed: 5, alpha: 0.35, batch_size: 3, fine_tune_at: 101, dtype: 'float16' } as const;
  const inputs = { data: split, views: drawn.outDir };
  const one = await runKind(kind, params, inputs);
  const files = await listFiles(one.outDir);
  const sharded = async (count: number) => {
    const parts = await Promise.all(Array.from({ length: count }, async (_, index) => (await runKind(kind, params, inputs, { shard: { index, count } }))));
    return { parts, merged: await runKind(kind, params, inputs, { parts: parts.map((p) => p.outDir) }) };
  };
  // 2 shards: the first ends at the boundary nearest half the cost, 10.8 of 25 (equal counts: 4 batches, 14.4).
  // 3: as equal counts. 9, more shards than batches: as shardRange, one batch a shard, the first none.
  const cuts: Record<number, string[]> = {
    2: ['batches 0–2 of 8, 9 rows, 43.2%', 'batches 3–7 of 8, 13 rows, 56.8%'],
    3: ['batches 0–1 of 8, 6 rows, 28.8%', 'batches 2–4 of 8, 9 rows, 43.2%', 'batches 5–7 of 8, 7 rows, 28.0%'],
    9: ['batches none of 8, 0 rows, 0.0%', ...Array.from({ length: 8 }, (_, b) => `batches ${b}–${b} of 8`)],
  };
  for (const [count, expected] of Object.entries(cuts)) {
    const { parts, merged } = await sharded(Number(count));
    parts.forEach((part, i) => assert.ok(part.logs.some((l) => l.startsWith(`shard ${i + 1} of ${count}: ${expected[i]}`)), part.logs.join('\n')));
    assert.equal(await listFiles(merged.outDir), files);
    for (const file of files) assert.ok((await fs.readFile(path.join(one.outDir, file))).equals(await fs.readFile(path.join(merged.outDir, file))), `${count} shards: ${file} differs`);
    assert.is(merged.summary['images'], 22);
  }

  // Parts cut by another rule (another pipe's) do not tile the pass: no artifact from them.
  const { parts } = await sharded(2);
  const info = path.join(parts[1]!.outDir, 'part.json');
  const part = JSON.parse(await fs.readFile(info, 'utf8'));
  for (const batches of [{ start: 4, end: 8, of: 8 }, undefined]) {
    await fs.writeFile(info, JSON.stringify({ ...part, batches }));
    try {
      await runKind(kind, params, inputs, { parts: parts.map((p) => p.outDir) });
      assert.unreachable();
    } catch (error) {
      assert.match((error as Error).message, batches ? /^bug: part 1 of 2 holds batches 4–8 of 8, not from 3: the parts were cut differently/ : /^bug: part 1 of 2 holds no range of batches/);
    }
  }
});

test('extract-features: an augment.json it cannot read is an error that names it, not stored views', async () => {
  const { split } = await fixtures();
  const drawn = await runKind(augmentKind, { views: 2, seed: 9 }, { data: split });
  await fs.writeFile(path.join(drawn.outDir, 'augment.json'), '{"seed": 9, "views": 2, "pixe');
  try {
    await runKind(kind, { weights: 'none', alpha: 0.35 }, { data: split, views: drawn.outDir });
    assert.unreachable();
  } catch (error) {
    assert.ok(error instanceof InputError, String(error));
    assert.match(error.message, /^the augmentation record .*\/augment\.json is not JSON: /);
  }
});

test('extract-features: when a set’s rows cannot be opened, the feature files it opened for them are closed', async () => {
  const { split } = await fixtures();
  const drawn = await runKind(augmentKind, { views: 2, seed: 9 }, { data: split });
  const outDir = realpathSync(tempDir('pipe-out-'));
  try {
    await runKind(kind, { weights: 'none', alpha: 0.35, fine_tune_at: 101 }, { data: await fixturesWith(6), views: drawn.outDir }, { outDir });
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /the augmentation was drawn for 5 other images than the 6 of image set train/);
  }
  // Both files of `views` were open when its rows were refused; no descriptor of this process is left on them.
  assert.equal((await fs.readdir(outDir)).sort(), ['boundary-views.f32', 'pooled-views.f32']);
  const target = (fd: string) => {
    try {
      return readlinkSync(path.join('/proc/self/fd', fd));
    } catch {
      return ''; // the descriptor readdir itself used, closed since
    }
  };
  const left = readdirSync('/proc/self/fd').map(target).filter((file) => file.startsWith(outDir + path.sep));
  assert.equal(left, []);
});

async function fixturesWith(train: number): Promise<string> {
  return (await splitAndViews(SIZE, { train, validation: 4, test: 3 })).split;
}

test.run();
