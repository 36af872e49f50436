import { test } from 'uvu';
import type { Scalar, Tensor, Variable } from '@tensorflow/tfjs-node';
import * as assert from 'uvu/assert';
import { loadTf } from '../../src/ml/tf.ts';
import { boundaryFor, buildMobileNetV2, buildTop } from '../../src/ml/mobilenet.ts';
import {
  KerasAdam,
  KerasRmsprop,
  accuracy,
  batchesOf,
  binaryCrossentropyFromLogits,
  dropout,
  epochLine,
  fit,
  evaluateBatches,
  glorotUniform,
  inferenceForward,
  rng,
  shuffledIndices,
  sparseCategoricalCrossentropyFromLogits,
  taskFor,
} from '../../src/ml/train.ts';

const tf = loadTf('cpu');

function close(actual: number, expected: number, tolerance = 1e-5, what = ''): void {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} ${actual} ≠ ${expected}`);
}

test('binary cross-entropy from logits matches hand-computed values and is stable', () => {
  const loss = binaryCrossentropyFromLogits(tf, tf.tensor1d([1, 1, 0]), tf.tensor2d([[2], [-1], [0]]));
  const expected = (Math.log1p(Math.exp(-2)) + Math.log1p(Math.exp(1)) + Math.log(2)) / 3;
  close(loss.dataSync()[0]!, expected, 1e-6);
  const extreme = binaryCrossentropyFromLogits(tf, tf.tensor1d([0, 1]), tf.tensor1d([100, -100]));
  close(extreme.dataSync()[0]!, 100, 1e-3);
});

test('sparse categorical cross-entropy from logits', () => {
  const loss = sparseCategoricalCrossentropyFromLogits(
    tf,
    tf.tensor1d([2, 0], 'int32'),
    tf.tensor2d([
      [1, 2, 3],
      [1, 1, 1],
    ]),
  );
  const row1 = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 3;
  close(loss.dataSync()[0]!, (row1 + Math.log(3)) / 2, 1e-6);
});

test('accuracy: logit > 0 for binary, argmax for multiclass', () => {
  close(accuracy(tf, taskFor(2), tf.tensor1d([1, 1, 0, 0]), tf.tensor1d([2, -1, -3, 0.5])).dataSync()[0]!, 0.5);
  const multi = accuracy(tf, taskFor(3), tf.tensor1d([2, 0], 'int32'), tf.tensor2d([[1, 2, 3], [0, 5, 1]]));
  close(multi.dataSync()[0]!, 0.5);
  assert.equal(taskFor(2), { kind: 'binary' });
  assert.equal(taskFor(5), { kind: 'multiclass', classes: 5 });
});

test('Keras Adam: two steps as the Keras 3 update rule gives them (ε on the uncorrected sqrt(v))', () => {
  const x = tf.variable(tf.tensor1d([1, -2]));
  const adam = new KerasAdam(tf, { learningRate: 0.1, epsilon: 0.01 });
  const grads = [
    [0.5, -1],
    [0.2, 0.3],
  ];
  const expected = [1, -2];
  const m = [0, 0];
  const v = [0, 0];
  for (let t = 1; t <= 2; t++) {
    const g = grads[t - 1]!;
    adam.applyGradients([{ variable: x, grad: tf.tensor1d(g) }]);
    const alpha = (0.1 * Math.sqrt(1 - 0.999 ** t)) / (1 - 0.9 ** t);
    for (let i = 0; i < 2; i++) {
      m[i] = m[i]! + (g[i]! - m[i]!) * 0.1;
      v[i] = v[i]! + (g[i]! ** 2 - v[i]!) * 0.001;
      expected[i] = expected[i]! - (alpha * m[i]!) / (Math.sqrt(v[i]!) + 0.01);
    }
    const got = x.dataSync();
    close(got[0]!, expected[0]!, 1e-6, `step ${t}`);
    close(got[1]!, expected[1]!, 1e-6, `step ${t}`);
  }
  // First step by hand: α = sqrt(0.001), m = 0.05, v = 0.00025 → 1 − 0.0316228·0.05/(0.0158114 + 0.01).
  assert.equal(adam.iterations, 2);
  adam.dispose();
});

test('Keras Adam first step by hand, and tfjs Adam differs', () => {
  const x = tf.variable(tf.scalar(1));
  new KerasAdam(tf, { learningRate: 0.1, epsilon: 0.01 }).applyGradients([{ variable: x, grad: tf.scalar(0.5) }]);
  close(x.dataSync()[0]!, 1 - 0.061257, 1e-5);
  const y = tf.variable(tf.scalar(1));
  tf.train.adam(0.1, 0.9, 0.999, 0.01).applyGradients([{ name: y.name, tensor: tf.scalar(0.5) }]);
  close(y.dataSync()[0]!, 1 - 0.098039, 1e-5); // bias-corrected, ε on sqrt(v̂): not Keras
});

test('Keras RMSprop: x −= lr·g / sqrt(v + ε)', () => {
  const x = tf.variable(tf.scalar(1));
  const rms = new KerasRmsprop(tf, { learningRate: 0.1, epsilon: 0.01 });
  rms.applyGradients([{ variable: x, grad: tf.scalar(0.5) }]);
  // v = 0.1·0.25 = 0.025; step = 0.05 / sqrt(0.035)
  close(x.dataSync()[0]!, 1 - 0.05 / Math.sqrt(0.035), 1e-6);
  rms.applyGradients([{ variable: x, grad: tf.scalar(-1) }]);
  const v2 = 0.9 * 0.025 + 0.1 * 1;
  close(x.dataSync()[0]!, 1 - 0.05 / Math.sqrt(0.035) + 0.1 / Math.sqrt(v2 + 0.01), 1e-6);
  rms.dispose();
});

test('RMSprop on TensorFlow: the fused kernel equals the tfjs ops within float noise; state export and import; a variable assigned from elsewhere is followed', () => {
  const shapes = [[3, 3, 8, 1], [8], [16, 4], [1]];
  const init = shapes.map((shape, i) => tf.randomNormal(shape, 0, 1, 'float32', i + 1));
  const make = () => init.map((t) => tf.variable(t.clone()));
  const fusedVars = make();
  const plainVars = make();
  const fused = new KerasRmsprop(tf, { learningRate: 0.01 });
  const plain = new KerasRmsprop(tf, { learningRate: 0.01, fused: false });
  const before = tf.memory().numTensors;
  for (let step = 0; step < 5; step++) {
    const grads = shapes.map((shape, i) => tf.randomNormal(shape, 0, 1, 'float32', 100 * step + i));
    fused.applyGradients(fusedVars.map((variable, i) => ({ variable, grad: grads[i] })));
    if (step === 0) assert.is(tf.memory().numTensors - before, shapes.length + 3 * shapes.length + 4, 'the gradients, and three mirrors per variable and four constants, made once');
    plain.applyGradients(plainVars.map((variable, i) => ({ variable, grad: grads[i] })));
    tf.dispose(grads);
  }
  const steady = tf.memory().numTensors;
  fused.applyGradients(fusedVars.map((variable) => ({ variable, grad: tf.onesLike(variable) })));
  assert.is(tf.memory().numTensors, steady + shapes.length, 'only the gradients made here stay (the caller frees them)');
  plain.applyGradients(plainVars.map((variable) => ({ variable, grad: tf.onesLike(variable) })));
  fusedVars.forEach((v, i) => {
    const a = v.dataSync();
    const b = plainVars[i]!.dataSync();
    a.forEach((x, k) => close(x, b[k]!, 1e-5));
    assert.not.equal(Array.from(a), Array.from(init[i]!.dataSync()), 'trained');
  });
  assert.is(fused.iterations, 6);
  // The mean squares, exported and imported, as the tfjs ops' slots.
  const exported = fused.exportState(fusedVars);
  const plainState = plain.exportState(plainVars);
  exported.slots.forEach((slots, i) => slots[0]!.forEach((x, k) => close(x, plainState.slots[i]![0]![k]!, 1e-6)));
  const again = new KerasRmsprop(tf, { learningRate: 0.01 });
  again.importState(fusedVars, exported);
  assert.equal(again.exportState(fusedVars).slots.map((s) => Array.from(s[0]!)), exported.slots.map((s) => Array.from(s[0]!)));
  // A checkpoint restored into the variable: the next update starts from it, not from the mirror.
  fusedVars[3]!.assign(tf.tensor([5], [1]));
  plainVars[3]!.assign(tf.tensor([5], [1]));
  fused.applyGradients([{ variable: fusedVars[3]!, grad: tf.tensor([0.5], [1]) }]);
  plain.applyGradients([{ variable: plainVars[3]!, grad: tf.tensor([0.5], [1]) }]);
  close(fusedVars[3]!.dataSync()[0]!, plainVars[3]!.dataSync()[0]!, 1e-6);
  assert.ok(fusedVars[3]!.dataSync()[0]! < 5 && fusedVars[3]!.dataSync()[0]! > 4.9);
  for (const o of [fused, plain, again]) o.dispose();
  tf.dispose([...fusedVars, ...plainVars, ...init]);
});

test('seeded shuffling, batches with a smaller last batch, glorot limits', () => {
  const a = shuffledIndices(10, rng(7));
  assert.equal(a, shuffledIndices(10, rng(7)));
  assert.equal([...a].sort((p, q) => p - q), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.not.equal(a, shuffledIndices(10, rng(8)));
  assert.equal(batchesOf([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]]);
  const kernel = glorotUniform(1280, 1, rng(1));
  const limit = Math.sqrt(6 / 1281);
  assert.ok(kernel.every((w) => Math.abs(w) <= limit));
  assert.ok(Math.max(...kernel) > limit * 0.9);
});

test('dropout keeps 1 − rate of the units and rescales them', () => {
  const out = dropout(tf, tf.ones([10000]), 0.2, 3).dataSync();
  const kept = out.filter((v) => v > 0);
  close(kept.length / 10000, 0.8, 0.02);
  close(kept[0]!, 1.25, 1e-6);
});

test('fit: a logistic model learns a separable problem; history is Keras-like', async () => {
  const random = rng(3);
  const n = 70;
  const xs = new Float32Array(n * 2);
  const labels: number[] = [];
  for (let i = 0; i < n; i++) {
    const label = i % 2;
    xs[i * 2] = (label ? 1 : -1) + (random() - 0.5);
    xs[i * 2 + 1] = random() - 0.5;
    labels.push(label);
  }
  const data = tf.tensor2d(xs, [n, 2]);
  const w = tf.variable(tf.zeros([2, 1]));
  const b = tf.variable(tf.zeros([1]));
  const task = taskFor(2);
  const forward = (x: ReturnType<typeof tf.tensor>) => x.matMul(w).add(b);
  const inputs = (indices: number[]) => data.gather(tf.tensor1d(indices, 'int32'));
  const validate = () => evaluateBatches(tf, { task, labels, batchSize: 32, inputs, forward });
  const lines: string[] = [];
  const before = tf.memory().numTensors;
  const optimizer = new KerasAdam(tf, { learningRate: 0.1 });
  const history = await fit(tf, {
    task,
    vars: [w, b],
    optimizer,
    labels,
    epochs: 5,
    initialEpoch: 1,
    batchSize: 32,
    seed: 1,
    inputs: (_epoch, indices) => inputs(indices),
    forward: (x, training, seed) => (training ? dropout(tf, forward(x), 0, seed) : forward(x)),
    validate,
    onEpoch: (record) => lines.push(epochLine(record, 5)),
  });
  assert.equal(history.epoch, [1, 2, 3, 4]);
  assert.equal(history.loss.length, 4);
  assert.ok(history.val_accuracy.at(-1)! > 0.9, `val accuracy ${history.val_accuracy}`);
  assert.ok(history.loss.at(-1)! < history.loss[0]!);
  assert.match(lines[0]!, /^Epoch 2\/5 - loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}$/);
  // the optimizer's slots (2 per variable) and constants are the only tensors that stay
  assert.ok(tf.memory().numTensors - before <= 7, `leaked ${tf.memory().numTensors - before}`);
  optimizer.dispose();
  assert.is(tf.memory().numTensors - before, 0);
});

test('inferenceForward: the values and gradients of model.apply(x, {training: false}), BN folded', () => {
  const base = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 1 });
  for (const layer of base.layers) {
    if (layer.getClassName() !== 'BatchNormalization') continue;
    const c = layer.getWeights()[0]!.shape[0]!;
    layer.setWeights([
      tf.randomUniform([c], 0.5, 1.5, 'float32', 1),
      tf.randomUniform([c], -0.2, 0.2, 'float32', 2),
      tf.randomUniform([c], -0.2, 0.2, 'float32', 3),
      tf.randomUniform([c], 0.5, 2, 'float32', 4),
    ]);
  }
  const boundary = boundaryFor(100, base.layers);
  const top = buildTop(tf, base, boundary);
  const forward = inferenceForward(tf, top);
  const x = tf.randomNormal([3, ...boundary.shape], 0, 3, 'float32', 5);
  const expected = top.apply(x, { training: false }) as Tensor;
  const actual = forward(x);
  const scale = tf.max(tf.abs(expected)).dataSync()[0]!;
  assert.ok(scale > 0.1);
  close(tf.max(tf.abs(expected.sub(actual))).dataSync()[0]!, 0, 1e-5 * scale);
  const vars = top.trainableWeights.map((w) => w.read() as Variable);
  const lossOf = (f: (t: Tensor) => Tensor) => () => f(x).square().mean() as Scalar;
  const reference = tf.variableGrads(lossOf((t) => top.apply(t, { training: false }) as Tensor), vars);
  const folded = tf.variableGrads(lossOf(forward), vars);
  assert.is(Object.keys(folded.grads).length, vars.length);
  for (const v of vars) {
    const a = reference.grads[v.name]!;
    const b = folded.grads[v.name]!;
    const size = tf.max(tf.abs(a)).dataSync()[0]!;
    close(tf.max(tf.abs(a.sub(b))).dataSync()[0]!, 0, 1e-4 * size + 1e-9, v.name);
  }
  // Moving statistics are no variables of the computation: only γ, β and kernels get gradients.
  assert.ok(vars.every((v) => !/moving/.test(v.name)));
  // The gradient with respect to the input, too (1×1 convs as matrix products, BiasAdd, Relu6Grad)…
  const inputGrad = (f: (t: Tensor) => Tensor) => tf.grad((t: Tensor) => f(t).square().mean())(x);
  const dxReference = inputGrad((t) => top.apply(t, { training: false }) as Tensor);
  const dx = inputGrad(forward);
  const dxSize = tf.max(tf.abs(dxReference)).dataSync()[0]!;
  assert.ok(dxSize > 0);
  close(tf.max(tf.abs(dxReference.sub(dx))).dataSync()[0]!, 0, 1e-4 * dxSize, 'input gradient');
  // …which `inputGradient: false` skips through the first convolutions (it is no longer the
  // input's gradient then) without changing the variables' gradients.
  const trainingOnly = inferenceForward(tf, top, { inputGradient: false });
  assert.ok(tf.max(tf.abs(inputGrad(trainingOnly).sub(dxReference))).dataSync()[0]! > 1e-3 * dxSize);
  const skipped = tf.variableGrads(lossOf(trainingOnly), vars);
  for (const v of vars) {
    close(tf.max(tf.abs(folded.grads[v.name]!.sub(skipped.grads[v.name]!))).dataSync()[0]!, 0, 1e-9, v.name);
  }
  base.dispose();
});

test.run();
