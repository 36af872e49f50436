import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { InputError } from '../../src/core/errors.ts';
import { assignLayerWeights, loadH5wasm, readKerasH5, shortWeightName, type LayerWeights } from '../../src/ml/keras-h5.ts';
import { buildMobileNetV2, describeMobileNetV2 } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { missingShared, sharedWeights } from '../../bench/shared.ts';

const tf = loadTf('cpu');
const SHARED_WEIGHTS = sharedWeights;
const noWeights = missingShared(SHARED_WEIGHTS);
if (noWeights) console.log(`test/ml/keras-h5: skipping the tests on the real weights: ${noWeights}`);
const withWeights = noWeights ? test.skip : test;

async function failure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error('expected a failure');
}

function copy(weights: LayerWeights): LayerWeights {
  return new Map([...weights].map(([layer, list]) => [layer, list.map((w) => ({ ...w }))]));
}

test('shortWeightName', () => {
  assert.is(shortWeightName('bn_Conv1/gamma:0'), 'gamma');
  assert.is(shortWeightName('block_1_depthwise/depthwise_kernel:0'), 'depthwise_kernel');
  assert.is(shortWeightName('Conv1/kernel_3'), 'kernel');
  assert.is(shortWeightName('moving_variance'), 'moving_variance');
});

withWeights('the shared weights file: Keras layout read completely, every weight assigned and shape-checked', async () => {
  const file = await readKerasH5(SHARED_WEIGHTS);
  assert.equal(file.layerNames, describeMobileNetV2().map((l) => l.name));
  assert.is(file.backend, 'tensorflow');
  assert.is(file.weights.size, 104); // 52 convolutions + 52 BatchNormalizations
  assert.equal(
    file.weights.get('bn_Conv1')!.map((w) => [w.fullName, w.name, w.shape]),
    [
      ['bn_Conv1/gamma:0', 'gamma', [32]],
      ['bn_Conv1/beta:0', 'beta', [32]],
      ['bn_Conv1/moving_mean:0', 'moving_mean', [32]],
      ['bn_Conv1/moving_variance:0', 'moving_variance', [32]],
    ],
  );
  assert.equal(file.weights.get('block_1_depthwise')!.map((w) => w.shape), [[3, 3, 96, 1]]);

  // Input size does not matter to the weights: 96 px is cheaper to build.
  const model = buildMobileNetV2(tf, { alpha: 1.0, inputSize: 96, seed: 1 });
  const report = assignLayerWeights(tf, model, file.weights, SHARED_WEIGHTS);
  assert.equal(report, { layers: 104, weights: 260, params: 2_257_984 });
  // Every value landed where the file says.
  for (const [layerName, list] of file.weights) {
    const actual = model.getLayer(layerName).getWeights();
    list.forEach((weight, i) => {
      const values = actual[i]!.dataSync();
      assert.is(values.length, weight.values.length);
      for (let k = 0; k < values.length; k += 97) assert.is(values[k], weight.values[k], `${layerName}/${weight.name}[${k}]`);
    });
  }
  model.dispose();
});

withWeights('missing, extra and mis-shaped weights are all reported at once, naming layer and weight', async () => {
  const file = await readKerasH5(SHARED_WEIGHTS);
  const model = buildMobileNetV2(tf, { alpha: 1.0, inputSize: 96, seed: 1 });
  const before = model.getLayer('Conv1').getWeights()[0]!.dataSync().slice(0, 4);

  const broken = copy(file.weights);
  broken.delete('block_3_project'); // a layer missing
  broken.set('bn_Conv1', broken.get('bn_Conv1')!.filter((w) => w.name !== 'moving_mean')); // a weight missing
  const depthwise = broken.get('block_2_depthwise')!;
  depthwise[0] = { ...depthwise[0]!, shape: [3, 3, 144, 2] }; // wrong shape
  broken.get('Conv_1')!.push({ name: 'bias', fullName: 'Conv_1/bias:0', shape: [1280], values: new Float32Array(1280) }); // extra weight
  broken.set('predictions', [{ name: 'kernel', fullName: 'predictions/kernel:0', shape: [1280, 1000], values: new Float32Array(1280_000) }]); // extra layer

  let message = '';
  try {
    assignLayerWeights(tf, model, broken, 'w.h5');
  } catch (error) {
    message = (error as Error).message;
  }
  assert.is(
    message,
    [
      'weights w.h5 do not fit mobilenetv2_1.00_96:',
      '  layer bn_Conv1: weight moving_mean: missing in the file',
      '  layer block_2_depthwise: weight depthwise_kernel: shape [3, 3, 144, 2] in the file, the model expects [3, 3, 144, 1]',
      '  layer block_3_project: missing in the file (the model expects kernel)',
      '  layer Conv_1: weight Conv_1/bias:0: not a weight of the model',
      '  layer predictions: in the file (predictions/kernel:0) but not in the model',
    ].join('\n'),
  );
  // Nothing was assigned.
  assert.equal(model.getLayer('Conv1').getWeights()[0]!.dataSync().slice(0, 4), before);
  model.dispose();

  // Another alpha: the file does not fit, and the first problem is the first conv whose width differs.
  const small = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 1 });
  assert.throws(
    () => assignLayerWeights(tf, small, file.weights, 'w.h5'),
    (error: Error) => error.message.split('\n')[1] === '  layer Conv1: weight kernel: shape [3, 3, 3, 32] in the file, the model expects [3, 3, 3, 16]',
  );
  small.dispose();
});

test('a file that is not HDF5, or no file, gives a clear error', async () => {
  const self = new URL(import.meta.url).pathname;
  assert.is(await failure(readKerasH5(self)), `${self} is not an HDF5 file (no HDF5 signature)`);
  assert.match(await failure(readKerasH5('/nonexistent/w.h5')), /^cannot read weights file \/nonexistent\/w\.h5: ENOENT/);
});

/** A small Keras-layout weights file (`save_weights` of one Dense layer and a weightless layer). */
async function smallWeightsFile(dir: string): Promise<string> {
  const h5wasm = await loadH5wasm();
  const file = path.join(dir, 'small.h5');
  const h5 = new h5wasm.File(file, 'w');
  h5.create_attribute('layer_names', ['dense', 'flatten']);
  const dense = h5.create_group('dense');
  dense.create_attribute('weight_names', ['dense/kernel:0', 'dense/bias:0']);
  const inner = dense.create_group('dense');
  inner.create_dataset({ name: 'kernel:0', data: new Float32Array(4000).fill(0.5), shape: [1000, 4] });
  inner.create_dataset({ name: 'bias:0', data: new Float32Array([1, 2, 3, 4]), shape: [4] });
  h5.create_group('flatten').create_attribute('weight_names', []);
  h5.close();
  return file;
}

async function inputFailure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    assert.instance(error, InputError);
    return (error as Error).message;
  }
  throw new Error('expected a failure');
}

test('a truncated or corrupt weights file is named, with what is wrong with it', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-h5-'));
  const file = await smallWeightsFile(dir);
  const whole = await readKerasH5(file);
  assert.equal(whole.weights.get('dense')?.map((w) => [w.name, w.shape]), [['kernel', [1000, 4]], ['bias', [4]]]);
  const bytes = readFileSync(file);
  const cut = path.join(dir, 'cut.h5');
  for (const length of [bytes.length - 1, Math.floor(bytes.length / 2), 200]) {
    writeFileSync(cut, bytes.subarray(0, length));
    assert.is(await inputFailure(readKerasH5(cut)), `${cut}: not a complete Keras HDF5 weights file (truncated: ${length} of its ${bytes.length} bytes)`);
  }
  writeFileSync(cut, bytes.subarray(0, 12));
  assert.is(await inputFailure(readKerasH5(cut)), `${cut}: not a complete Keras HDF5 weights file (truncated: 12 bytes, shorter than an HDF5 header)`);
  // Bytes overwritten in the root group's header: HDF5 cannot read the file, whatever it says.
  const corrupt = Buffer.from(bytes);
  corrupt.fill(0xff, 100, 116);
  writeFileSync(cut, corrupt);
  assert.match(await inputFailure(readKerasH5(cut)), `${cut}: not a complete Keras HDF5 weights file (truncated or corrupt: the HDF5 reader says "`);
});

test.run();
