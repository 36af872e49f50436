import { promises as fs, statSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import extract from '../../src/stages/extract-features.ts';
import kind from '../../src/stages/derive-activations.ts';
import { loadFeatureBase, readFeatures, readFeaturesMeta } from '../../src/ml/features.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { runKind } from '../helpers/run-kind.ts';
import { splitAndViews } from '../helpers/image-sets.ts';

const tf = loadTf('cpu');
const SIZE = 64;

function fixtures(): Promise<{ split: string; augment: string }> {
  return splitAndViews(SIZE, { train: 5, validation: 3, test: 2 });
}

const base = { weights: 'none', seed: 3, alpha: 0.35, batch_size: 4 } as const;

test('derive-activations: block_10_project_BN from cached block_5_add equals extracting it from the pixels', async () => {
  const { split, augment } = await fixtures();
  const low = await runKind(extract, { ...base, fine_tune_at: 60 }, { data: split, views: augment });
  const direct = await runKind(extract, { ...base, pooled: false, fine_tune_at: 100 }, { data: split, views: augment });
  const derived = await runKind(kind, { fine_tune_at: 101, batch_size: 3 }, { features: low.outDir });

  const meta = await readFeaturesMeta(derived.outDir);
  assert.equal(meta.boundary, { layerName: 'block_10_project_BN', index: 97, shape: [4, 4, 32], topStart: 98, fineTuneAt: 101, dtype: 'float32' });
  assert.is(meta.pooled, null);
  assert.equal((await fs.readdir(derived.outDir)).sort(), ['base', 'boundary-test.f32', 'boundary-validation.f32', 'boundary-views.f32', 'features.json']);
  const directMeta = await readFeaturesMeta(direct.outDir);
  for (const set of ['views', 'validation', 'test'] as const) {
    assert.equal({ ...meta.sets[set], boundary: undefined }, { ...directMeta.sets[set], boundary: undefined }, set);
    const want = await readFeatures(direct.outDir, directMeta, set, 'boundary');
    const got = await readFeatures(derived.outDir, meta, set, 'boundary');
    assert.equal(got.shape, want.shape, set);
    let worst = 0;
    for (let i = 0; i < want.data.length; i++) worst = Math.max(worst, Math.abs(got.data[i]! - want.data[i]!) / (1 + Math.abs(want.data[i]!)));
    assert.ok(worst < 1e-4, `${set}: largest relative difference ${worst}`);
  }
  assert.equal(derived.progress[derived.progress.length - 1], { done: 15, total: 15, label: 'test' });
  assert.is(derived.summary['from'], 'block_5_add');
  assert.is(derived.summary['boundary'], 'block_10_project_BN');

  // fine-tune and evaluate load it as they load extract-features' activations.
  const loaded = await loadFeatureBase(tf, derived.outDir, { fineTuneAt: 100 });
  assert.is(loaded.boundary?.layerName, 'block_10_project_BN');
  loaded.model.dispose();
});

test('derive-activations: the cached boundary itself is linked, not recomputed; float16 on request', async () => {
  const { split, augment } = await fixtures();
  const low = await runKind(extract, { ...base, fine_tune_at: 60 }, { data: split, views: augment });
  const same = await runKind(kind, { fine_tune_at: 54 }, { features: low.outDir });
  const meta = await readFeaturesMeta(same.outDir);
  assert.is(meta.boundary?.layerName, 'block_5_add');
  assert.is(statSync(path.join(same.outDir, 'boundary-views.f32')).ino, statSync(path.join(low.outDir, 'boundary-views.f32')).ino);
  assert.not.ok(same.metrics.some((m) => m.key === 'derive_rows_per_second'));

  const half = await runKind(kind, { fine_tune_at: 54, dtype: 'float16' }, { features: low.outDir });
  const halfMeta = await readFeaturesMeta(half.outDir);
  assert.is(halfMeta.boundary?.dtype, 'float16');
  const want = await readFeatures(low.outDir, await readFeaturesMeta(low.outDir), 'test', 'boundary');
  const got = await readFeatures(half.outDir, halfMeta, 'test', 'boundary');
  for (let i = 0; i < want.data.length; i++) {
    assert.ok(Math.abs(got.data[i]! - want.data[i]!) <= 1e-3 * (1 + Math.abs(want.data[i]!)), `value ${i}`);
  }
});

test('derive-activations: 8-bit activations from 8-bit cached ones stay within a few steps of the exact values', async () => {
  const { split, augment } = await fixtures();
  const exact = await runKind(extract, { ...base, pooled: false, fine_tune_at: 100 }, { data: split, views: augment });
  const low = await runKind(extract, { ...base, fine_tune_at: 60, dtype: 'uint8' }, { data: split, views: augment });
  const derived = await runKind(kind, { fine_tune_at: 100, dtype: 'uint8' }, { features: low.outDir });
  const meta = await readFeaturesMeta(derived.outDir);
  assert.equal(meta.boundary?.dtype, 'uint8');
  // 4 × 4 × 32 bytes per row, plus a float32 minimum and step per channel.
  assert.is(statSync(path.join(derived.outDir, 'boundary-views.u8')).size, 10 * (4 * 4 * 32 + 8 * 32)); // 5 images × 2 views
  assert.is(derived.summary['activation_bytes_per_view'], 4 * 4 * 32 + 8 * 32);
  const exactMeta = await readFeaturesMeta(exact.outDir);
  for (const set of ['views', 'validation', 'test'] as const) {
    const want = await readFeatures(exact.outDir, exactMeta, set, 'boundary');
    const got = await readFeatures(derived.outDir, meta, set, 'boundary');
    const scale = want.data.reduce((max, v) => Math.max(max, Math.abs(v)), 0);
    let worst = 0;
    for (let i = 0; i < want.data.length; i++) worst = Math.max(worst, Math.abs(got.data[i]! - want.data[i]!));
    // Two roundings (block_5_add, then block_10_project_BN) of 1/510 of a channel's range each, carried
    // through blocks 6–10: a few percent of the largest value at most, and not exact either.
    assert.ok(worst < 0.03 * scale, `${set}: largest difference ${worst} of ${scale}`);
    assert.ok(worst > 0, `${set}: 8-bit values equal to the exact ones?`);
  }
});

test('derive-activations: a fine_tune_at below the cached boundary is refused, naming both', async () => {
  const { split, augment } = await fixtures();
  const high = await runKind(extract, { ...base, pooled: false, fine_tune_at: 100 }, { data: split, views: augment });
  try {
    await runKind(kind, { fine_tune_at: 60 }, { features: high.outDir });
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /fine_tune_at 60 needs the activations of block_5_add \(layer 53\), below the cached block_10_project_BN \(layer 97, for fine_tune_at ≥ 98\)/);
  }
  const pooledOnly = await runKind(extract, { ...base }, { data: split });
  try {
    await runKind(kind, { fine_tune_at: 100 }, { features: pooledOnly.outDir });
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, /hold no boundary activations/);
  }
});

test('derive-activations: fine_tune_at enters the fingerprint as its boundary', () => {
  const fp = (p: { fine_tune_at: number; dtype?: 'float32' | 'float16' }) => kind.fingerprintParams!({ batch_size: 64, dtype: 'float32', ...p });
  assert.equal(fp({ fine_tune_at: 100 }), fp({ fine_tune_at: 101 }));
  assert.equal(fp({ fine_tune_at: 100 }), { boundary: 'block_10_project_BN', dtype: 'float32' });
  assert.not.equal(fp({ fine_tune_at: 100 }), fp({ fine_tune_at: 120 }));
});

test.run();
