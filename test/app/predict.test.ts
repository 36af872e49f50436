import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-node';
import { buildClassifier, initHead } from '../../src/ml/head.ts';
import { decodeAndResize } from '../../src/ml/images.ts';
import { buildMobileNetV2, saveLayersModel } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { taskFor } from '../../src/ml/train.ts';
import { predict } from '../../src/app/predict.ts';
import { tempDir } from '../helpers/run-kind.ts';

const tf = loadTf('cpu');
const SIZE = 96;

/** An evaluate-like artifact dir: model/ holds a classifier over a small random base. */
async function savedClassifier(classNames: string[]): Promise<{ dir: string; logitsOf: (pixels: Uint8Array) => Float32Array }> {
  const dir = tempDir('pipe-evaluate-');
  const base = buildMobileNetV2(tf, { alpha: 0.35, inputSize: SIZE, seed: 2 });
  const head = initHead({ inputDim: 1280, task: taskFor(classNames.length), dropout: 0.2, classNames, seed: 4 });
  // A bias, so that the probabilities are not all 0.5 with this untrained base.
  head.bias.forEach((_, i) => (head.bias[i] = 0.7 + 0.5 * i));
  const classifier = buildClassifier(tf, base, head);
  await saveLayersModel(classifier, path.join(dir, 'model'));
  return {
    dir,
    logitsOf: (pixels) =>
      tf.tidy(() => (classifier.predict(tf.tensor4d(pixels, [1, SIZE, SIZE, 3], 'float32')) as Tensor).dataSync() as Float32Array),
  };
}

async function writePng(dir: string, name: string, height: number, width: number, seed: number): Promise<string> {
  const file = path.join(dir, name);
  const pixels = tf.randomUniform([height, width, 3], 0, 255, 'int32', seed);
  await fs.writeFile(file, await tf.node.encodePng(pixels as never));
  return file;
}

test('predict prints class and probability per image; bad images are reported, the rest still run', async () => {
  const { dir, logitsOf } = await savedClassifier(['cats', 'dogs']);
  const images = tempDir('pipe-images-');
  const big = await writePng(images, 'big.png', 150, 120, 1); // resized as the data stages do
  const small = await writePng(images, 'small.png', SIZE, SIZE, 2);
  const broken = path.join(images, 'broken.jpg');
  await fs.writeFile(broken, 'not an image');
  const missing = path.join(images, 'missing.png');

  const lines: string[] = [];
  const errors: string[] = [];
  const status = await predict(dir, [big, broken, small, missing], (line) => lines.push(line), { err: (line) => errors.push(line) });
  assert.is(status, 'failed');
  assert.is(lines.length, 2);
  assert.is(errors.length, 2);
  assert.match(errors[0]!, new RegExp(`^${broken}\terror: `));
  assert.is(errors[1], `${missing}\terror: no such file`);

  for (const [line, file] of [[lines[0]!, big], [lines[1]!, small]] as const) {
    const [name, cls, probability] = line.split('\t');
    assert.is(name, file);
    const logit = logitsOf(decodeAndResize(tf, await fs.readFile(file), [SIZE, SIZE]))[0]!;
    const p1 = 1 / (1 + Math.exp(-logit));
    assert.is(cls, p1 >= 0.5 ? 'dogs' : 'cats');
    assert.is(probability, (p1 >= 0.5 ? p1 : 1 - p1).toFixed(4));
  }

  // MODEL may also be the model/ directory or its model.json.
  const again: string[] = [];
  assert.is(await predict(path.join(dir, 'model'), [small], (line) => again.push(line)), 'ok');
  assert.is(await predict(path.join(dir, 'model', 'model.json'), [small], (line) => again.push(line)), 'ok');
  assert.equal(again, [lines[1], lines[1]]);
});

test('predict: more than two classes use softmax', async () => {
  const { dir } = await savedClassifier(['a', 'b', 'c']);
  const image = await writePng(tempDir('pipe-images-'), 'x.png', SIZE, SIZE, 3);
  const lines: string[] = [];
  assert.is(await predict(dir, [image], (line) => lines.push(line)), 'ok');
  const [, cls, probability] = lines[0]!.split('\t');
  assert.is(cls, 'c'); // the largest bias, on an untrained base whose features are nearly 0
  assert.ok(Number(probability) > 1 / 3 && Number(probability) <= 1);
});

test('predict: a directory without a saved model is an error naming what was expected', async () => {
  const dir = tempDir('pipe-empty-');
  try {
    await predict(dir, ['x.png'], () => {});
    assert.unreachable('should have failed');
  } catch (error) {
    assert.match((error as Error).message, /^no saved model at .*: expected .*model\.json or .*model\/model\.json/);
  }
});

test.run();
