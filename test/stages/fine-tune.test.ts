import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import extractFeatures from '../../src/stages/extract-features.ts';
import fineTune, { fineTuneEpochs, type FineTuneMeta } from '../../src/stages/fine-tune.ts';
import trainHead from '../../src/stages/train-head.ts';
import { readHead } from '../../src/ml/head.ts';
import { boundaryFor, buildMobileNetV2, buildTop, loadMobileNetV2 } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import type { History } from '../../src/ml/train.ts';
import { runKind } from '../helpers/run-kind.ts';

const tf = loadTf('cpu');
import { calibratedBase, generatedSplit, SIZE } from '../helpers/model.ts';


test('fine-tune epochs continue from the head as the recipe does', () => {
  assert.equal(fineTuneEpochs(10, 9, 10, true), { initialEpoch: 9, epochs: 20 }); // 11 epochs: 9..19
  assert.equal(fineTuneEpochs(10, 9, 10, false), { initialEpoch: 10, epochs: 20 });
});

test('the recipe\'s trainable parameters at fine_tune_at 100 (alpha 1.0, 160 px): 1,861,440 in the base', () => {
  const base = buildMobileNetV2(tf, { alpha: 1.0, inputSize: 160 });
  const top = buildTop(tf, base, boundaryFor(100, base.layers));
  const trainable = top.trainableWeights.reduce((sum, w) => sum + w.shape.reduce((a, b) => a! * b!, 1)!, 0);
  assert.is(trainable, 1_861_440);
  assert.is(trainable + 1281, 1_862_721);
  base.dispose();
});

test('fine-tune trains the top from fine_tune_at, keeps BatchNormalization statistics and frozen layers', async () => {
  const split = await generatedSplit({ train: 12, validation: 6, test: 4 });
  const features = await runKind(extractFeatures, { weights: await calibratedBase(), alpha: 0.35, fine_tune_at: 100 }, { data: split });
  const head = await runKind(trainHead, { epochs: 2, learning_rate: 0.01 }, { features: features.outDir });
  const run = await runKind(
    fineTune,
    { fine_tune_at: 100, epochs: 2, learning_rate: 1e-3, batch_size: 5 },
    { activations: features.outDir, head: head.outDir },
  );

  const history = JSON.parse(await fs.readFile(path.join(run.outDir, 'history.json'), 'utf8')) as History;
  assert.equal(history.epoch, [1, 2, 3]); // head ran 0..1; fit(epochs=4, initial_epoch=1)
  assert.ok(history.val_loss.every(Number.isFinite));
  const meta = JSON.parse(await fs.readFile(path.join(run.outDir, 'meta.json'), 'utf8')) as FineTuneMeta;
  assert.is(meta.boundary.layerName, 'block_10_project_BN');
  assert.is(meta.initialEpoch, 1);
  assert.is(meta.headEpochs, 2);
  assert.ok(run.metrics.some((m) => m.key === 'val_accuracy' && m.step === 3));
  assert.ok(run.logs.some((line) => /^trainable parameters: [\d,]+ in the base \+ 1,281 in the head/.test(line)), run.logs.join('\n'));
  assert.ok(run.logs.some((line) => line.startsWith('Epoch 4/4 - loss: ')));
  assert.ok(run.logs.some((line) => line.startsWith('fine-tuning step: one TensorFlow graph')), run.logs.join('\n'));

  // The eager step (PIPE_GRAPH=0) trains to the same history, to float noise.
  process.env['PIPE_GRAPH'] = '0';
  const eager = await runKind(
    fineTune,
    { fine_tune_at: 100, epochs: 2, learning_rate: 1e-3, batch_size: 5 },
    { activations: features.outDir, head: head.outDir },
  ).finally(() => delete process.env['PIPE_GRAPH']);
  assert.ok(eager.logs.includes('fine-tuning step: eager ops (PIPE_GRAPH=0)'), eager.logs.join('\n'));
  const eagerHistory = JSON.parse(await fs.readFile(path.join(eager.outDir, 'history.json'), 'utf8')) as History;
  for (const key of ['loss', 'accuracy', 'val_loss', 'val_accuracy'] as const) {
    eagerHistory[key].forEach((value, i) => {
      assert.ok(Math.abs(value - history[key][i]!) <= 1e-3 * Math.max(1, Math.abs(value)), `${key}[${i}]: eager ${value}, graph ${history[key][i]}`);
    });
  }

  const before = (await loadMobileNetV2(tf, { alpha: 0.35, inputSize: SIZE, weights: path.join(features.outDir, 'base') })).model;
  const after = (await loadMobileNetV2(tf, { alpha: 0.35, inputSize: SIZE, weights: path.join(run.outDir, 'base') })).model;
  let trainableParams = 0;
  before.layers.forEach((layer, index) => {
    const other = after.getLayer(layer.name);
    const weightsBefore = layer.getWeights();
    const weightsAfter = other.getWeights();
    layer.weights.forEach((variable, i) => {
      const a = weightsBefore[i]!.dataSync();
      const b = weightsAfter[i]!.dataSync();
      const same = a.every((v, k) => v === b[k]);
      const name = variable.originalName.split('/').pop()!;
      const shouldChange = index >= 100 && !name.startsWith('moving_');
      if (shouldChange) trainableParams += a.length;
      assert.is(same, !shouldChange, `${variable.originalName} (layer ${index}) ${same ? 'unchanged' : 'changed'}`);
    });
  });
  assert.is(meta.trainableParams.base, trainableParams);
  const headAfter = await readHead(run.outDir);
  const headBefore = await readHead(head.outDir);
  assert.not.equal(Array.from(headAfter.kernel), Array.from(headBefore.kernel));
  before.dispose();
  after.dispose();

  // Without the quirk: exactly `epochs` epochs, numbered from the head's last + 1.
  const plain = await runKind(
    fineTune,
    { fine_tune_at: 101, epochs: 1, keras_initial_epoch_quirk: false },
    { activations: features.outDir, head: head.outDir },
  );
  const plainHistory = JSON.parse(await fs.readFile(path.join(plain.outDir, 'history.json'), 'utf8')) as History;
  assert.equal(plainHistory.epoch, [2]);

  // A fine_tune_at that implies another boundary than the cached activations is an error.
  try {
    await runKind(fineTune, { fine_tune_at: 120 }, { activations: features.outDir, head: head.outDir });
    assert.unreachable('should have failed');
  } catch (error) {
    assert.match((error as Error).message, /fine_tune_at 120 cuts MobileNetV2 at block_13_project_BN|block_1\d_/);
  }
});

test.run();
