import type { LayersModel, Tensor, Variable } from '@tensorflow/tfjs-node';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { graphTrainer, buildTrainGraph } from '../../src/ml/graph-train.ts';
import { HeadVariables, initHead } from '../../src/ml/head.ts';
import { boundaryFor, buildMobileNetV2, buildTop } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { type Task, dropoutMask, inferenceForward, lossFor } from '../../src/ml/train.ts';
import { randomizeBatchNorm } from '../helpers/model.ts';

const tf = loadTf('cpu');

function smallModel(seed: number): LayersModel {
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed });
  randomizeBatchNorm(model, 40 + seed);
  return model;
}

function close(actual: Tensor, expected: Tensor, what: string, tolerance = 1e-4): void {
  assert.equal(actual.shape, expected.shape, `${what}: shape`);
  const [diff, scale] = tf.tidy(() => [tf.max(tf.abs(tf.sub(actual, expected))).dataSync()[0]!, tf.max(tf.abs(expected)).dataSync()[0]!]);
  assert.ok(diff! <= tolerance * Math.max(scale!, 1e-6), `${what}: max abs diff ${diff} against values up to ${scale}`);
}

/** The eager step's loss, logits and gradients (train.ts's forward under tf.variableGrads). */
function eagerStep(top: LayersModel, head: HeadVariables, task: Task, vars: Variable[], x: Tensor, labels: Tensor, seed: number) {
  const forward = inferenceForward(tf, top, { inputGradient: false });
  let logits: Tensor | undefined;
  const { value, grads } = tf.variableGrads(() => {
    const out = head.logitsOfActivation(forward(x), true, seed);
    logits = tf.keep(out);
    return lossFor(tf, task, labels, out);
  }, vars);
  return { loss: value, logits: logits!, grads: vars.map((v) => grads[v.name]!) };
}

for (const { fineTuneAt, task, pointwise, what } of [
  { fineTuneAt: 100, task: { kind: 'binary' } as Task, pointwise: 'matmul' as const, what: 'binary head, the recipe\'s fine_tune_at (a stride-2 block with its ZeroPadding2D in the top)' },
  { fineTuneAt: 60, task: { kind: 'multiclass', classes: 3 } as Task, pointwise: 'conv' as const, what: 'three classes, frozen layers between the boundary and fine_tune_at, 1×1 convolutions as Conv2D' },
]) {
  test(`the fine-tuning step as a graph: the eager step's loss, logits and gradients within float noise (${what})`, async () => {
    const model = smallModel(fineTuneAt);
    const boundary = boundaryFor(fineTuneAt, model.layers);
    const top = buildTop(tf, model, boundary);
    const classNames = task.kind === 'binary' ? ['cats', 'dogs'] : ['a', 'b', 'c'];
    const head = new HeadVariables(tf, initHead({ inputDim: top.outputs[0]!.shape[3]!, dropout: 0.2, task, classNames, seed: 3 }));
    const graphHead = { kernel: head.kernel, bias: head.bias, dropout: head.spec.dropout };
    const baseVars = top.trainableWeights.map((w) => w.read() as Variable);
    assert.ok(baseVars.length > 0 && baseVars.length < top.weights.length, 'some of the top trains, some is frozen');
    const vars = [...baseVars, ...head.vars];

    const built = buildTrainGraph(top, graphHead, task, vars, { pointwise });
    const pointwiseOps = pointwise === 'conv' ? ['Conv2DBackpropFilter', 'Conv2DBackpropInput'] : ['MatMul'];
    for (const op of [...pointwiseOps, 'DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput', 'Relu6Grad', 'BiasAddGrad']) {
      assert.ok(built.ops.has(op), `the graph computes ${op}`);
    }
    if (fineTuneAt === 100) assert.ok(built.ops.has('Slice'), 'ZeroPadding2D gradient');

    if (pointwise === 'matmul') assert.not.ok(built.ops.has('Conv2D'), 'no Conv2D left in the top');
    const trainer = await graphTrainer(tf, top, graphHead, task, vars, { pointwise });
    try {
      const [, h, w, c] = top.inputs[0]!.shape as number[];
      for (const [n, seed] of [[6, 1], [3, 2]] as const) {
        const x = tf.randomUniform([n, h!, w!, c!], 0, 3, 'float32', seed);
        const labels = task.kind === 'binary' ? tf.tensor1d(Array.from({ length: n }, (_, i) => i % 2), 'float32') : tf.tensor1d(Array.from({ length: n }, (_, i) => i % 3), 'int32');
        // The same mask as train.ts's dropout draws for that seed.
        const keep = dropoutMask(tf, [n, head.spec.inputDim], head.spec.dropout, 100 + seed);
        const want = eagerStep(top, head, task, vars, x, labels, 100 + seed);
        const got = trainer.gradients(x, labels, keep);
        close(got.loss, want.loss, `loss, batch of ${n}`);
        close(got.logits, want.logits, `logits, batch of ${n}`);
        assert.is(got.grads.length, vars.length);
        got.grads.forEach((grad, i) => close(grad, want.grads[i]!, `gradient of ${vars[i]!.name} (${vars[i]!.shape.join('×')}), batch of ${n}`, 2e-3));
        const inference = tf.tidy(() => head.logitsOfActivation(inferenceForward(tf, top)(x), false));
        close(trainer.logits(x), inference, `inference logits, batch of ${n}`);
        tf.dispose([x, labels, keep, want.loss, want.logits, ...want.grads, got.loss, got.logits, ...got.grads, inference]);
      }
    } finally {
      trainer.dispose();
      head.dispose();
      model.dispose();
    }
  });
}

test.run();
