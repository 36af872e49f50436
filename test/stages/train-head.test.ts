import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import trainHead, { type TrainHeadMeta } from '../../src/stages/train-head.ts';
import { FEATURES_FORMAT, featureFileName, writeFeaturesMeta, type FeaturesMeta } from '../../src/ml/features.ts';
import { readHead } from '../../src/ml/head.ts';
import type { History } from '../../src/ml/train.ts';
import { rng } from '../../src/ml/train.ts';
import { runKind, tempDir } from '../helpers/run-kind.ts';

/** A features artifact of pooled features only: class c's features are centred on ±1 in dim c. */
async function syntheticFeatures(classes: string[], dim: number, count: number, views: number, validationCount: number): Promise<string> {
  const dir = tempDir('pipe-features-');
  const random = rng(11);
  const labelsOf = (n: number) => Array.from({ length: n }, (_, i) => i % classes.length);
  const rows = (labels: number[], repeats: number) => {
    const data = new Float32Array(labels.length * repeats * dim);
    for (let v = 0; v < repeats; v++) {
      labels.forEach((label, i) => {
        for (let d = 0; d < dim; d++) {
          const centre = d === label ? 1.5 : 0;
          data[(v * labels.length + i) * dim + d] = centre + (random() - 0.5);
        }
      });
    }
    return data;
  };
  const trainLabels = labelsOf(count);
  const validationLabels = labelsOf(validationCount);
  const set = (labels: number[], n: number, source: string, v = 1) => ({
    count: n,
    views: v,
    labels,
    files: labels.map((_, i) => `${classes[labels[i]!]}/${i}.jpg`),
    source,
    pooled: featureFileName('pooled', source === 'views/views' ? 'views' : (source.split('/')[1] as 'validation' | 'test')),
  });
  const meta: FeaturesMeta = {
    format: FEATURES_FORMAT,
    model: { architecture: 'mobilenet_v2', alpha: 0.35, inputShape: [96, 96, 3], preprocessing: 'x / 127.5 - 1', params: 0 },
    weights: { source: 'none', kind: 'none', seed: 0, weightTensors: 0, params: 0 },
    base: 'base',
    classNames: classes,
    pooled: { layer: 'out_relu', pooling: 'global-average', dim, dtype: 'float32' },
    boundary: null,
    sets: {
      views: set(trainLabels, count, 'views/views', views),
      validation: set(validationLabels, validationCount, 'data/validation'),
      test: set(validationLabels, validationCount, 'data/test'),
    },
  };
  await writeFeaturesMeta(dir, meta);
  const write = (name: string, data: Float32Array) => fs.writeFile(path.join(dir, name), new Uint8Array(data.buffer));
  await write(featureFileName('pooled', 'views'), rows(trainLabels, views));
  await write(featureFileName('pooled', 'validation'), rows(validationLabels, 1));
  await write(featureFileName('pooled', 'test'), rows(validationLabels, 1));
  return dir;
}

test('train-head learns separable features and writes a Keras-like history', async () => {
  const features = await syntheticFeatures(['cats', 'dogs'], 16, 64, 3, 40);
  const run = await runKind(trainHead, { epochs: 6, learning_rate: 0.1, seed: 3 }, { features });
  const history = JSON.parse(await fs.readFile(path.join(run.outDir, 'history.json'), 'utf8')) as History;
  assert.equal(history.epoch, [0, 1, 2, 3, 4, 5]);
  for (const key of ['loss', 'accuracy', 'val_loss', 'val_accuracy'] as const) assert.is(history[key].length, 6);
  assert.ok(history.val_accuracy[5]! > 0.9, `val accuracy ${history.val_accuracy}`);
  assert.ok(history.loss[5]! < history.loss[0]!);

  const keys = run.metrics.map((m) => `${m.key}@${m.step}`);
  assert.ok(keys.includes('initial_val_loss@0') && keys.includes('initial_val_accuracy@0'));
  assert.ok(keys.includes('val_accuracy@5') && keys.includes('loss@0'));
  assert.ok(run.logs.some((line) => /^Epoch 6\/6 - loss: [\d.]+ - accuracy: [\d.]+ - val_loss: [\d.]+ - val_accuracy: [\d.]+$/.test(line)));
  assert.ok(run.logs.some((line) => line.startsWith('initial loss: ')));

  const head = await readHead(run.outDir);
  assert.is(head.units, 1);
  assert.is(head.kernel.length, 16);
  assert.equal(head.classNames, ['cats', 'dogs']);
  const meta = JSON.parse(await fs.readFile(path.join(run.outDir, 'meta.json'), 'utf8')) as TrainHeadMeta;
  assert.is(meta.lastEpoch, 5);
  assert.is(meta.trainableParams, 17);

  // Same seed, same result.
  const again = await runKind(trainHead, { epochs: 6, learning_rate: 0.1, seed: 3 }, { features });
  const historyAgain = JSON.parse(await fs.readFile(path.join(again.outDir, 'history.json'), 'utf8')) as History;
  assert.equal(historyAgain.loss, history.loss);
});

test('train-head: 1,281 trainable parameters for 1280 features and two classes', async () => {
  const features = await syntheticFeatures(['cats', 'dogs'], 1280, 8, 1, 4);
  const run = await runKind(trainHead, { epochs: 1 }, { features });
  assert.is(run.summary['trainable_params'], 1281);
});

test('train-head: more than two classes → softmax head', async () => {
  const features = await syntheticFeatures(['a', 'b', 'c'], 8, 60, 2, 30);
  const run = await runKind(trainHead, { epochs: 8, learning_rate: 0.1 }, { features });
  const head = await readHead(run.outDir);
  assert.is(head.units, 3);
  assert.equal(head.task, { kind: 'multiclass', classes: 3 });
  const history = JSON.parse(await fs.readFile(path.join(run.outDir, 'history.json'), 'utf8')) as History;
  assert.ok(history.val_accuracy.at(-1)! > 0.8, `val accuracy ${history.val_accuracy}`);
});

test.run();
