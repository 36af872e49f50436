import { promises as fs, readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import type { LayersModel, Scalar, Tensor, Tensor4D, Variable } from '@tensorflow/tfjs-node';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { buildBetween, buildBottom, foldNetwork } from '../../src/ml/frozen.ts';
import { decodeAndResize } from '../../src/ml/images.ts';
import {
  boundaryFor,
  buildMobileNetV2,
  buildTop,
  correctPad,
  countParams,
  describeMobileNetV2,
  imagenetWeightsUrl,
  loadMobileNetV2,
  makeDivisible,
  parseWeightsSpec,
  saveLayersModel,
} from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { tempDir } from '../helpers/run-kind.ts';
import { randomizeBatchNorm } from '../helpers/model.ts';
import { missingShared, sharedPhotos, sharedWeights } from '../../bench/shared.ts';

const tf = loadTf('cpu');
const SHARED_WEIGHTS = sharedWeights;
const PHOTOS = sharedPhotos;
const noWeights = missingShared(SHARED_WEIGHTS);
const noPhotos = missingShared(SHARED_WEIGHTS, PHOTOS);
if (noPhotos) console.log(`test/ml/mobilenet: skipping the tests on the real weights and photos: ${noPhotos}`);
const withWeights = noWeights ? test.skip : test;
const withWeightsAndPhotos = noPhotos ? test.skip : test;

// Keras's `MobileNetV2(include_top=False).layers`, one line per block: the stem, the inverted
// residual blocks 0–16 (block 0 is `expanded_conv`, without an expansion conv; stride-2 blocks 1, 3,
// 6, 13 have a ZeroPadding2D `_pad` before the depthwise conv; stride-1 blocks whose input and output
// widths agree end with an Add `_add`), and the head.
const KERAS_LAYER_NAMES = [
  'input_1', 'Conv1', 'bn_Conv1', 'Conv1_relu',
  'expanded_conv_depthwise', 'expanded_conv_depthwise_BN', 'expanded_conv_depthwise_relu', 'expanded_conv_project', 'expanded_conv_project_BN',
  'block_1_expand', 'block_1_expand_BN', 'block_1_expand_relu', 'block_1_pad', 'block_1_depthwise', 'block_1_depthwise_BN', 'block_1_depthwise_relu', 'block_1_project', 'block_1_project_BN',
  'block_2_expand', 'block_2_expand_BN', 'block_2_expand_relu', 'block_2_depthwise', 'block_2_depthwise_BN', 'block_2_depthwise_relu', 'block_2_project', 'block_2_project_BN', 'block_2_add',
  'block_3_expand', 'block_3_expand_BN', 'block_3_expand_relu', 'block_3_pad', 'block_3_depthwise', 'block_3_depthwise_BN', 'block_3_depthwise_relu', 'block_3_project', 'block_3_project_BN',
  'block_4_expand', 'block_4_expand_BN', 'block_4_expand_relu', 'block_4_depthwise', 'block_4_depthwise_BN', 'block_4_depthwise_relu', 'block_4_project', 'block_4_project_BN', 'block_4_add',
  'block_5_expand', 'block_5_expand_BN', 'block_5_expand_relu', 'block_5_depthwise', 'block_5_depthwise_BN', 'block_5_depthwise_relu', 'block_5_project', 'block_5_project_BN', 'block_5_add',
  'block_6_expand', 'block_6_expand_BN', 'block_6_expand_relu', 'block_6_pad', 'block_6_depthwise', 'block_6_depthwise_BN', 'block_6_depthwise_relu', 'block_6_project', 'block_6_project_BN',
  'block_7_expand', 'block_7_expand_BN', 'block_7_expand_relu', 'block_7_depthwise', 'block_7_depthwise_BN', 'block_7_depthwise_relu', 'block_7_project', 'block_7_project_BN', 'block_7_add',
  'block_8_expand', 'block_8_expand_BN', 'block_8_expand_relu', 'block_8_depthwise', 'block_8_depthwise_BN', 'block_8_depthwise_relu', 'block_8_project', 'block_8_project_BN', 'block_8_add',
  'block_9_expand', 'block_9_expand_BN', 'block_9_expand_relu', 'block_9_depthwise', 'block_9_depthwise_BN', 'block_9_depthwise_relu', 'block_9_project', 'block_9_project_BN', 'block_9_add',
  'block_10_expand', 'block_10_expand_BN', 'block_10_expand_relu', 'block_10_depthwise', 'block_10_depthwise_BN', 'block_10_depthwise_relu', 'block_10_project', 'block_10_project_BN',
  'block_11_expand', 'block_11_expand_BN', 'block_11_expand_relu', 'block_11_depthwise', 'block_11_depthwise_BN', 'block_11_depthwise_relu', 'block_11_project', 'block_11_project_BN', 'block_11_add',
  'block_12_expand', 'block_12_expand_BN', 'block_12_expand_relu', 'block_12_depthwise', 'block_12_depthwise_BN', 'block_12_depthwise_relu', 'block_12_project', 'block_12_project_BN', 'block_12_add',
  'block_13_expand', 'block_13_expand_BN', 'block_13_expand_relu', 'block_13_pad', 'block_13_depthwise', 'block_13_depthwise_BN', 'block_13_depthwise_relu', 'block_13_project', 'block_13_project_BN',
  'block_14_expand', 'block_14_expand_BN', 'block_14_expand_relu', 'block_14_depthwise', 'block_14_depthwise_BN', 'block_14_depthwise_relu', 'block_14_project', 'block_14_project_BN', 'block_14_add',
  'block_15_expand', 'block_15_expand_BN', 'block_15_expand_relu', 'block_15_depthwise', 'block_15_depthwise_BN', 'block_15_depthwise_relu', 'block_15_project', 'block_15_project_BN', 'block_15_add',
  'block_16_expand', 'block_16_expand_BN', 'block_16_expand_relu', 'block_16_depthwise', 'block_16_depthwise_BN', 'block_16_depthwise_relu', 'block_16_project', 'block_16_project_BN',
  'Conv_1', 'Conv_1_bn', 'out_relu',
];

/**
 * Keras's parameter count from first principles. Stem: 3×3×3×c0 kernel + BN (4 per channel).
 * A block with input width `cin`, expanded width `e` and output width `cout`: [1×1 expand cin·e +
 * BN 4e] + depthwise 9e + BN 4e + 1×1 project e·cout + BN 4·cout. Head: 1×1 c·1280 + BN 4·1280.
 */
function kerasParams(first: number, outs: number[], last: number): number {
  let total = 27 * first + 4 * first;
  let cin = first;
  outs.forEach((cout, block) => {
    const e = block === 0 ? cin : 6 * cin;
    if (block > 0) total += cin * e + 4 * e;
    total += 9 * e + 4 * e + e * cout + 4 * cout;
    cin = cout;
  });
  return total + cin * last + 4 * last;
}

function maxAbs(t: Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(t)).dataSync()[0]!);
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

function assertClose(actual: Tensor, expected: Tensor, what: string, relative = 1e-4): void {
  assert.equal(actual.shape, expected.shape, `${what}: shape`);
  const diff = maxAbsDiff(actual, expected);
  const scale = Math.max(maxAbs(expected), 1e-6);
  assert.ok(diff <= relative * scale, `${what}: max abs diff ${diff} > ${relative} × ${scale}`);
}

test('the layer list is Keras’s: 154 names in order, for every alpha, and the tfjs model keeps it', () => {
  assert.is(KERAS_LAYER_NAMES.length, 154);
  for (const alpha of [1.0, 0.35, 0.5, 1.4]) {
    assert.equal(describeMobileNetV2({ alpha, inputSize: 160 }).map((l) => l.name), KERAS_LAYER_NAMES, `alpha ${alpha}`);
  }
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 1 });
  assert.equal(model.layers.map((l) => l.name), KERAS_LAYER_NAMES);
  assert.is(model.name, 'mobilenetv2_0.35_96');
  const classes = new Map(model.layers.map((l) => [l.name, l.getClassName()]));
  assert.is(classes.get('block_1_pad'), 'ZeroPadding2D');
  assert.is(classes.get('block_11_add'), 'Add');
  assert.is(classes.get('out_relu'), 'ReLU');
  const bn = model.getLayer('bn_Conv1').getConfig();
  assert.is(bn['epsilon'], 1e-3);
  assert.is(bn['momentum'], 0.999);
  assert.is(model.getLayer('Conv1_relu').getConfig()['maxValue'], 6);
  model.dispose();
});

test("Keras's _make_divisible and correct_pad", () => {
  assert.is(makeDivisible(32 * 0.35), 16); // 11.2 -> 8 would lose more than 10 % -> 16
  assert.is(makeDivisible(Math.trunc(16 * 0.35)), 8); // 5 -> 8 (the minimum)
  assert.is(makeDivisible(Math.trunc(64 * 0.35)), 24); // 22 -> 24
  assert.is(makeDivisible(Math.trunc(96 * 0.35)), 32); // 33 -> 32
  assert.is(makeDivisible(Math.trunc(320 * 0.35)), 112);
  assert.is(makeDivisible(1280 * 1.4), 1792);
  assert.equal(correctPad([80, 80]), [[0, 1], [0, 1]]);
  assert.equal(correctPad([7, 8]), [[1, 1], [0, 1]]);
});

test('parameter counts are Keras’s: 2,257,984 at alpha 1.0 and 410,208 at alpha 0.35', () => {
  // alpha 1.0: widths 32 | 16 | 24 24 | 32 32 32 | 64 ×4 | 96 ×3 | 160 ×3 | 320 | 1280
  const full = kerasParams(32, [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320], 1280);
  assert.is(full, 2_257_984);
  // alpha 0.35 through _make_divisible: 16 | 8 | 8 8 | 16 ×3 | 24 ×4 | 32 ×3 | 56 ×3 | 112 | 1280
  const small = kerasParams(16, [8, 8, 8, 16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 56, 56, 56, 112], 1280);
  assert.is(small, 410_208);

  assert.is(countParams(describeMobileNetV2({ alpha: 1.0, inputSize: 160 })).total, full);
  assert.is(countParams(describeMobileNetV2({ alpha: 0.35, inputSize: 96 })).total, small);
  const model = buildMobileNetV2(tf, { alpha: 1.0, inputSize: 160, seed: 1 });
  assert.is(model.countParams(), full);
  assert.equal(model.outputs[0]!.shape, [null, 5, 5, 1280]);
  const smallModel = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 1 });
  assert.is(smallModel.countParams(), small);
  assert.equal(smallModel.outputs[0]!.shape, [null, 3, 3, 1280]);
  // Phase 2 of the recipe: layers[100:] trainable = 1,861,440 parameters (DESIGN §6).
  const top = buildTop(tf, model, boundaryFor(100, model.layers));
  const trainable = top.trainableWeights.reduce((sum, w) => sum + w.shape.reduce((a: number, b) => a * (b ?? 0), 1), 0);
  assert.is(trainable, 1_861_440);
  model.dispose();
  smallModel.dispose();
});

test('boundaryFor cuts at the highest block start at or below fine_tune_at', () => {
  const layers = describeMobileNetV2({ alpha: 1.0, inputSize: 160 });
  const cases: Array<[number, string, number, number[]]> = [
    [0, 'input_1', 0, [160, 160, 3]],
    [1, 'input_1', 0, [160, 160, 3]],
    [3, 'input_1', 0, [160, 160, 3]],
    [4, 'Conv1_relu', 3, [80, 80, 32]],
    [9, 'expanded_conv_project_BN', 8, [80, 80, 16]],
    [97, 'block_9_add', 89, [10, 10, 64]],
    [98, 'block_10_project_BN', 97, [10, 10, 96]],
    [100, 'block_10_project_BN', 97, [10, 10, 96]],
    [101, 'block_10_project_BN', 97, [10, 10, 96]],
    [106, 'block_10_project_BN', 97, [10, 10, 96]],
    [107, 'block_11_add', 106, [10, 10, 96]],
    [151, 'block_16_project_BN', 150, [5, 5, 320]],
    [153, 'block_16_project_BN', 150, [5, 5, 320]],
    [154, 'out_relu', 153, [5, 5, 1280]],
    [1000, 'out_relu', 153, [5, 5, 1280]],
  ];
  for (const [fineTuneAt, name, index, shape] of cases) {
    const boundary = boundaryFor(fineTuneAt, layers);
    assert.equal(
      [boundary.layerName, boundary.index, boundary.shape, boundary.topStart, boundary.fineTuneAt],
      [name, index, shape, index + 1, fineTuneAt],
      `fine_tune_at ${fineTuneAt}`,
    );
  }
  assert.is(KERAS_LAYER_NAMES[100], 'block_11_expand_relu');
  assert.equal(boundaryFor(100, describeMobileNetV2({ alpha: 0.35, inputSize: 96 })).shape, [6, 6, 32]);
  assert.throws(() => boundaryFor(-1, layers), /fine_tune_at: expected a Keras layer index \(an integer ≥ 0\), got -1/);
});

test('the folded frozen path computes what the layers model computes (BN in inference mode)', () => {
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 7 });
  randomizeBatchNorm(model, 100);
  const x = tf.randomUniform([3, 96, 96, 3], -1, 1, 'float32', 5) as Tensor4D;
  const boundary = boundaryFor(100, model.layers);
  const net = foldNetwork(tf, model, ['out_relu', boundary.layerName]);
  // Every conv absorbed its BN (and ReLU6): 52 convolutions + 10 adds, no standalone BN/ReLU/pad.
  assert.equal(new Set(net.steps.map((s) => s.op)), new Set(['conv', 'depthwise', 'add']));
  assert.is(net.steps.length, 62);
  assert.equal(net.outputShapes, [[3, 3, 1280], [6, 6, 32]]);

  const [pooledSource, boundaryValues] = net.apply(x);
  const expected = model.predict(x) as Tensor;
  assertClose(pooledSource!, expected, 'out_relu');
  const inner = tf.model({ inputs: model.inputs, outputs: model.getLayer(boundary.layerName).output as never });
  const expectedBoundary = inner.predict(x) as Tensor;
  assertClose(boundaryValues!, expectedBoundary, boundary.layerName);

  const bottom = buildBottom(tf, model, boundary);
  const [bottomValues] = bottom.apply(x);
  assertClose(bottomValues!, expectedBoundary, 'buildBottom');

  // A boundary inside the stem: the input itself.
  const identity = foldNetwork(tf, model, ['input_1']);
  const [same] = identity.apply(x);
  assert.is(maxAbsDiff(same!, x), 0);
  tf.dispose([pooledSource!, boundaryValues!, bottomValues!, same!, expected, expectedBoundary, x]);
  net.dispose();
  bottom.dispose();
  identity.dispose();
  // The folded weights are copies: the model still works after dispose().
  tf.tidy(() => model.predict(tf.zeros([1, 96, 96, 3])));
  model.dispose();
});

test('the frozen blocks between two boundaries, from a cached activation, give what the whole path gives', () => {
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 9 });
  randomizeBatchNorm(model, 300);
  const x = tf.randomUniform([2, 96, 96, 3], -1, 1, 'float32', 6) as Tensor4D;
  const low = boundaryFor(60, model.layers);
  const high = boundaryFor(130, model.layers);
  assert.equal([low.layerName, high.layerName], ['block_5_add', 'block_13_project_BN']);
  const bottom = buildBottom(tf, model, low);
  const between = buildBetween(tf, model, low, high);
  assert.equal(between.inputShape, low.shape);
  assert.equal(between.outputShapes, [high.shape]);
  const [cached] = bottom.apply(x);
  const [derived] = between.apply(cached!);
  const inner = tf.model({ inputs: model.inputs, outputs: model.getLayer(high.layerName).output as never });
  const expected = inner.predict(x) as Tensor;
  assertClose(derived!, expected, 'buildBetween');
  // Not a boundary: block_8_add also reads block_7_add, past block 8's projection.
  assert.throws(() => foldNetwork(tf, model, ['block_8_add'], { from: 'block_8_project_BN' }), /not a boundary/);
  tf.dispose([x, cached!, derived!, expected]);
  bottom.dispose();
  between.dispose();
  model.dispose();
});

test('buildTop shares layers and weights, freezes below fine_tune_at, and apply(training: false) uses moving statistics', () => {
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 11 });
  randomizeBatchNorm(model, 200);
  const boundary = boundaryFor(100, model.layers);
  const top = buildTop(tf, model, boundary);
  assert.equal(top.layers.slice(1).map((l) => l.name), KERAS_LAYER_NAMES.slice(98));
  assert.ok(top.getLayer('block_11_expand') === model.getLayer('block_11_expand'), 'same layer objects');
  assert.is(top.getLayer('block_11_expand').trainable, false);
  assert.is(top.getLayer('block_11_expand_BN').trainable, false);
  assert.is(top.getLayer('block_11_expand_relu').trainable, true);
  assert.is(top.getLayer('block_11_depthwise').trainable, true);
  assert.is(top.getLayer('Conv_1_bn').trainable, true);

  const x = tf.randomUniform([4, 96, 96, 3], -1, 1, 'float32', 9) as Tensor4D;
  const bottom = buildBottom(tf, model, boundary);
  const [activation] = bottom.apply(x);
  const full = model.predict(x) as Tensor;
  const predicted = top.predict(activation!) as Tensor;
  assertClose(predicted, full, 'bottom then top = the whole model');
  const inference = top.apply(activation!, { training: false }) as Tensor;
  assertClose(inference, predicted, 'apply(training: false) = predict', 1e-6);
  // Batch statistics would give something else: the check above would catch a BN in training mode.
  const training = top.apply(activation!, { training: true }) as Tensor;
  assert.ok(maxAbsDiff(training, predicted) > 1e-2, 'training mode differs');

  // Gradients reach trainable weights only.
  const { grads } = tf.variableGrads(
    () => tf.mean(top.apply(activation!, { training: false }) as Tensor) as Scalar,
    top.trainableWeights.map((w) => w.read() as Variable),
  );
  assert.is(Object.keys(grads).length, top.trainableWeights.length);
  tf.dispose([activation!, full, predicted, inference, training, x, ...Object.values(grads)]);
  bottom.dispose();
  assert.throws(() => buildTop(tf, model, boundaryFor(154, model.layers)), /leaves no layer to fine-tune/);
  model.dispose();
});

test('weights sources: the keras-applications URL, specs, a tfjs model directory round trip', async () => {
  assert.is(
    imagenetWeightsUrl(1.0, 160),
    'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5',
  );
  assert.match(imagenetWeightsUrl(0.35, 96), /_tf_kernels_0\.35_96_no_top\.h5$/);
  assert.match(imagenetWeightsUrl(0.5, 100), /_tf_kernels_0\.5_224_no_top\.h5$/);
  assert.throws(() => imagenetWeightsUrl(0.6, 160), /no ImageNet weights for alpha 0.6/);
  assert.equal(parseWeightsSpec('none'), { kind: 'none' });
  assert.equal(parseWeightsSpec('imagenet'), { kind: 'imagenet' });
  assert.equal(parseWeightsSpec('https://x/y.h5'), { kind: 'url', url: 'https://x/y.h5' });
  assert.equal(parseWeightsSpec('/w/a.h5'), { kind: 'h5', path: '/w/a.h5' });
  assert.equal(parseWeightsSpec('/w/model.json'), { kind: 'tfjs', path: '/w/model.json' });
  assert.equal(parseWeightsSpec('/w/dir', true), { kind: 'tfjs', path: '/w/dir' });

  // `none` is seeded: the same seed gives the same weights, another seed others.
  const a = await loadMobileNetV2(tf, { alpha: 0.35, inputSize: 96, weights: 'none', seed: 3 });
  const b = await loadMobileNetV2(tf, { alpha: 0.35, inputSize: 96, weights: 'none', seed: 3 });
  const c = await loadMobileNetV2(tf, { alpha: 0.35, inputSize: 96, weights: 'none', seed: 4 });
  const kernel = (m: LayersModel) => m.getLayer('block_5_project').getWeights()[0]!;
  assert.is(maxAbsDiff(kernel(a.model), kernel(b.model)), 0);
  assert.ok(maxAbsDiff(kernel(a.model), kernel(c.model)) > 0);
  assert.is(a.weights.kind, 'none');
  assert.is(a.weights.seed, 3);

  const dir = tempDir('pipe-mobilenet-');
  randomizeBatchNorm(a.model, 300);
  await saveLayersModel(a.model, dir);
  const loaded = await loadMobileNetV2(tf, { alpha: 0.35, inputSize: 96, weights: dir });
  assert.is(loaded.weights.kind, 'tfjs');
  assert.is(loaded.weights.params, 410_208);
  assert.match(loaded.weights.sha256 ?? '', /^[0-9a-f]{64}$/);
  for (const layer of a.model.layers) {
    const mine = layer.getWeights();
    const theirs = loaded.model.getLayer(layer.name).getWeights();
    mine.forEach((w, i) => assert.is(maxAbsDiff(w, theirs[i]!), 0, `${layer.name} weight ${i}`));
  }
  // A tfjs model of another width does not fit, and says where.
  const json = path.join(dir, 'model.json');
  let message = '';
  try {
    await loadMobileNetV2(tf, { alpha: 0.5, inputSize: 96, weights: json });
  } catch (error) {
    message = (error as Error).message;
  }
  assert.ok(
    message.startsWith(
      `weights ${json} do not fit mobilenetv2_0.50_96:\n` +
        '  layer block_1_project: weight kernel: shape [1, 1, 48, 8] in the file, the model expects [1, 1, 48, 16]\n',
    ),
    message,
  );
  for (const m of [a, b, c, loaded]) m.model.dispose();
  await fs.rm(dir, { recursive: true, force: true });
});

withWeights('weights from a URL go through the download cache, with the sha256 checked', async () => {
  const bytes = readFileSync(SHARED_WEIGHTS);
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    if (req.url !== '/mobilenet.h5') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mobilenet.h5`;
  const cacheDir = tempDir('pipe-weights-cache-');
  try {
    const { sha256File } = await import('../../src/util/download.ts');
    const sha256 = await sha256File(SHARED_WEIGHTS);
    const first = await loadMobileNetV2(tf, { alpha: 1.0, inputSize: 96, weights: url, sha256, cacheDir });
    assert.is(first.weights.kind, 'url');
    assert.is(first.weights.url, url);
    assert.is(first.weights.sha256, sha256);
    assert.is(first.weights.params, 2_257_984);
    first.model.dispose();
    const second = await loadMobileNetV2(tf, { alpha: 1.0, inputSize: 96, weights: url, sha256, cacheDir });
    second.model.dispose();
    assert.is(requests, 1, 'the second load uses the cache');
  } finally {
    server.close();
    await fs.rm(cacheDir, { recursive: true, force: true });
  }
});

withWeightsAndPhotos('real weights on real photos: pooled features separate cats from dogs', async () => {
  const perClass = 16;
  const size: [number, number] = [160, 160];
  const images: Uint8Array[] = [];
  const labels: number[] = [];
  for (const [label, folder, prefix] of [[0, 'cats', 'cat'], [1, 'dogs', 'dog']] as const) {
    for (let i = 0; i < perClass; i++) {
      const bytes = await fs.readFile(path.join(PHOTOS, folder, `${prefix}.${i}.jpg`));
      images.push(decodeAndResize(tf, bytes, size));
      labels.push(label);
    }
  }
  const { model } = await loadMobileNetV2(tf, { alpha: 1.0, inputSize: 160, weights: SHARED_WEIGHTS });
  const net = foldNetwork(tf, model, ['out_relu']);
  const pixels = new Float32Array(images.length * 160 * 160 * 3);
  images.forEach((image, n) => image.forEach((v, i) => (pixels[n * image.length + i] = v / 127.5 - 1)));
  const features = tf.tidy(() => {
    const [out] = net.apply(tf.tensor4d(pixels, [images.length, 160, 160, 3]));
    const pooled = tf.mean(out!, [1, 2]);
    return tf.div(pooled, tf.norm(pooled, 2, 1, true)).arraySync() as number[][];
  });
  net.dispose();
  model.dispose();
  // Leave-one-out nearest centroid (cosine): a trivial classifier on frozen features.
  let correct = 0;
  for (let i = 0; i < features.length; i++) {
    const centroids = [0, 1].map((label) => {
      const members = features.filter((_, j) => j !== i && labels[j] === label);
      return members[0]!.map((_, d) => members.reduce((sum, f) => sum + f[d]!, 0) / members.length);
    });
    const scores = centroids.map((centroid) => centroid.reduce((sum, v, d) => sum + v * features[i]![d]!, 0));
    if ((scores[1]! > scores[0]! ? 1 : 0) === labels[i]) correct++;
  }
  const accuracy = correct / features.length;
  if (process.env['PIPE_TEST_VERBOSE']) console.log(`nearest-centroid accuracy ${accuracy}`);
  assert.ok(accuracy >= 0.8, `leave-one-out accuracy ${accuracy}`);
  // Non-degenerate: features vary across images.
  const spread = features[0]!.reduce((sum, v, d) => sum + Math.abs(v - features[perClass]![d]!), 0);
  assert.ok(spread > 0.1, `features differ between a cat and a dog (${spread})`);
});

test.run();
