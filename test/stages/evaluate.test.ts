import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import evaluate, { type TestPrediction } from '../../src/stages/evaluate.ts';
import extractFeatures from '../../src/stages/extract-features.ts';
import fineTune from '../../src/stages/fine-tune.ts';
import trainHead from '../../src/stages/train-head.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { predict } from '../../src/app/predict.ts';
import { runKind, tempDir } from '../helpers/run-kind.ts';

const tf = loadTf('cpu');
import { calibratedBase, generatedSplit, SIZE } from '../helpers/model.ts';


const expectedFiles = [
  'metrics.json',
  'predictions.json',
  'confusion_matrix.json',
  'plots/confusion_matrix.png',
  'plots/predictions.png',
  'plots/learning_curves.png',
  'model/model.json',
];

test('evaluate after fine-tune and after train-head alone; predict reads the saved model', async () => {
  const split = await generatedSplit({ train: 10, validation: 6, test: 11 });
  const features = await runKind(extractFeatures, { weights: await calibratedBase(), alpha: 0.35, fine_tune_at: 100 }, { data: split });
  const head = await runKind(trainHead, { epochs: 2, learning_rate: 0.01 }, { features: features.outDir });
  const tuned = await runKind(fineTune, { fine_tune_at: 100, epochs: 1 }, { activations: features.outDir, head: head.outDir });

  const run = await runKind(evaluate, {}, { model: tuned.outDir, data: split, head: head.outDir });
  for (const file of expectedFiles) {
    assert.ok(existsSync(path.join(run.outDir, file)), `missing ${file}`);
    assert.ok(run.artifacts.includes(file), `${file} not declared`);
  }
  assert.ok(run.artifacts.some((file) => /^model\/.*\.bin$/.test(file)));
  const metricKeys = run.metrics.map((m) => m.key);
  assert.ok(metricKeys.includes('test_loss') && metricKeys.includes('test_accuracy'));
  const matrix = JSON.parse(await fs.readFile(path.join(run.outDir, 'confusion_matrix.json'), 'utf8')) as { matrix: number[][] };
  assert.is(matrix.matrix.flat().reduce((a, b) => a + b, 0), 11);
  const predictions = JSON.parse(await fs.readFile(path.join(run.outDir, 'predictions.json'), 'utf8')) as TestPrediction[];
  assert.is(predictions.length, 11);
  const accuracy = predictions.filter((p) => p.label === p.predicted).length / 11;
  const reported = run.metrics.find((m) => m.key === 'test_accuracy')!.value;
  assert.ok(Math.abs(accuracy - reported) < 1e-9, `${accuracy} vs ${reported}`);
  assert.ok(run.logs.some((line) => /reloaded, it agrees with the test predictions/.test(line)));

  // The saved model through pipe predict, on image files (PNG keeps the pixels exact).
  const images = tempDir('pipe-images-');
  const testSet = JSON.parse(await fs.readFile(path.join(split, 'test.json'), 'utf8')) as { files: string[] };
  const testPixels = await fs.readFile(path.join(split, 'test.u8'));
  const files: string[] = [];
  for (let i = 0; i < 3; i++) {
    const png = await tf.node.encodePng(tf.tensor3d(testPixels.subarray(i * SIZE * SIZE * 3, (i + 1) * SIZE * SIZE * 3), [SIZE, SIZE, 3], 'int32'));
    const file = path.join(images, `test-${i}.png`);
    await fs.writeFile(file, png);
    files.push(file);
  }
  const lines: string[] = [];
  const status = await predict(run.outDir, files, (line) => lines.push(line));
  assert.is(status, 'ok');
  assert.is(lines.length, 3);
  lines.forEach((line, i) => {
    const [file, cls, probability] = line.split('\t');
    assert.is(file, files[i]);
    assert.is(cls, predictions[i]!.predicted, `${testSet.files[i]}`);
    assert.ok(Math.abs(Number(probability) - predictions[i]!.probability) < 1e-3, `${probability} vs ${predictions[i]!.probability}`);
  });

  // Without fine-tuning: the head on the frozen base (the base comes from the features input).
  const headOnly = await runKind(evaluate, {}, { model: head.outDir, data: split, features: features.outDir });
  for (const file of expectedFiles) assert.ok(existsSync(path.join(headOnly.outDir, file)), `missing ${file}`);
  try {
    await runKind(evaluate, {}, { model: head.outDir, data: split });
    assert.unreachable('should have failed');
  } catch (error) {
    assert.match((error as Error).message, /needs its features input/);
  }
});

test('the test set is read in chunks of batches: several chunks give the metrics and predictions of one', async () => {
  const split = await generatedSplit({ train: 6, validation: 4, test: 40 });
  const features = await runKind(extractFeatures, { weights: await calibratedBase(), alpha: 0.35 }, { data: split });
  const head = await runKind(trainHead, { epochs: 1, learning_rate: 0.01 }, { features: features.outDir });
  const inputs = { model: head.outDir, data: split, features: features.outDir };
  const whole = await runKind(evaluate, { batch_size: 40 }, inputs); // one chunk of one batch
  const chunked = await runKind(evaluate, { batch_size: 1 }, inputs); // chunks of 32 batches of 1: rows 0-31, 32-39
  const metric = (run: typeof whole, key: string) => run.metrics.find((m) => m.key === key)!.value;
  assert.is(metric(chunked, 'test_accuracy'), metric(whole, 'test_accuracy'));
  assert.ok(Math.abs(metric(chunked, 'test_loss') - metric(whole, 'test_loss')) < 1e-5);
  const predictions = async (run: typeof whole) =>
    (JSON.parse(await fs.readFile(path.join(run.outDir, 'predictions.json'), 'utf8')) as TestPrediction[]).map((p) => [p.file, p.predicted]);
  assert.equal(await predictions(chunked), await predictions(whole));
  assert.is((await predictions(whole)).length, 40);
});

test.run();
