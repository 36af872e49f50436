// The fine-tuning step of pipe's fine-tune stage, alone: the top of the real MobileNetV2 from the
// boundary of `--fine-tune-at`, the head, RMSprop, batches of 32 of random activations — the
// computation bench/graph_rates.py times in TensorFlow graph mode. With --profile, the kernels
// that take the time (tf.profile), summed over the timed steps.
//
//   npx tsx bench/finetune-probe.ts [--weights FILE] [--fine-tune-at 100] [--steps 12] [--profile]

import { parseArgs } from 'node:util';
import type { Tensor, Variable } from '@tensorflow/tfjs-node';
import { HeadVariables, initHead } from '../src/ml/head.ts';
import { boundaryFor, buildTop, loadMobileNetV2 } from '../src/ml/mobilenet.ts';
import { loadTf } from '../src/ml/tf.ts';
import { binaryCrossentropyFromLogits, inferenceForward, makeOptimizer, trainStep } from '../src/ml/train.ts';
import { sharedWeights } from './shared.ts';

const { values } = parseArgs({
  options: {
    weights: { type: 'string' },
    'fine-tune-at': { type: 'string', default: '100' },
    steps: { type: 'string', default: '12' },
    batch: { type: 'string', default: '32' },
    profile: { type: 'boolean', default: false },
  },
});
const tf = loadTf('cpu');
const batch = Number(values.batch);
const { model: base } = await loadMobileNetV2(tf, { weights: values.weights ?? sharedWeights, alpha: 1.0, inputSize: 160 });
const boundary = boundaryFor(Number(values['fine-tune-at']), base.layers);
const top = buildTop(tf, base, boundary);
const head = new HeadVariables(tf, initHead({ inputDim: 1280, task: { kind: 'binary' }, dropout: 0.2, classNames: ['a', 'b'], seed: 1 }));
const optimizer = makeOptimizer(tf, 'rmsprop', 1e-5);
const vars = [...top.trainableWeights.map((w) => w.read() as Variable), ...head.vars];
const topForward = inferenceForward(tf, top, { inputGradient: false });
const x = tf.randomNormal([batch, ...boundary.shape], 0, 1, 'float32', 1);
const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % 2), 'float32');
const step = (seed: number) =>
  tf.tidy(() => {
    const out = trainStep(tf, vars, optimizer, () => {
      const logits = head.logitsOfActivation(topForward(x), true, seed);
      return { loss: binaryCrossentropyFromLogits(tf, y, logits), logits };
    });
    out.logits.dispose();
    return out.loss;
  });
for (let i = 0; i < 3; i++) step(i).dataSync();
const steps = Number(values.steps);
if (values.profile) {
  const info = await tf.profile(() => {
    for (let i = 0; i < steps; i++) step(i).dataSync();
  });
  const byKernel = new Map<string, { ms: number; count: number }>();
  for (const k of info.kernels) {
    const e = byKernel.get(k.name) ?? { ms: 0, count: 0 };
    e.ms += Number(await k.kernelTimeMs) || 0;
    e.count += 1;
    byKernel.set(k.name, e);
  }
  const total = [...byKernel.values()].reduce((s, e) => s + e.ms, 0);
  console.log(`kernels per step ${info.kernels.length / steps}, kernel ms per step ${(total / steps).toFixed(1)}`);
  for (const [name, e] of [...byKernel].sort((a, b) => b[1].ms - a[1].ms).slice(0, 25)) {
    console.log(`${name.padEnd(36)} ${(e.ms / steps).toFixed(1).padStart(7)} ms/step ${String(e.count / steps).padStart(6)} calls/step`);
  }
}
const start = performance.now();
for (let i = 0; i < steps; i++) step(i).dataSync();
const ms = (performance.now() - start) / steps;
console.log(JSON.stringify({ fineTuneAt: Number(values['fine-tune-at']), boundary: boundary.layerName, shape: boundary.shape, trainable: vars.length, msPerStep: +ms.toFixed(1), imagesPerSecond: +((batch * 1000) / ms).toFixed(1) }));
