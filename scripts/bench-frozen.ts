// Images per second of the frozen MobileNetV2 base: the tfjs layers model (`model.predict`) against
// the folded path (src/ml/frozen.ts), same weights, same batch. Run on a quiet machine:
//
//   npx tsx scripts/bench-frozen.ts [--alpha 1.0] [--size 160] [--batch 32] [--reps 5] [--weights FILE]
//   (the weights default to ../shared/weights/mobilenet_v2_1.0_no_top_imagenet_coral.h5 beside the repository)

import { parseArgs } from 'node:util';
import type { Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import { foldNetwork } from '../src/ml/frozen.ts';
import { loadMobileNetV2 } from '../src/ml/mobilenet.ts';
import { loadTf } from '../src/ml/tf.ts';
import { sharedWeights } from '../bench/shared.ts';

const { values } = parseArgs({
  options: {
    alpha: { type: 'string', default: '1.0' },
    size: { type: 'string', default: '160' },
    batch: { type: 'string', default: '32' },
    reps: { type: 'string', default: '5' },
    weights: { type: 'string', default: sharedWeights },
  },
});
const alpha = Number(values.alpha);
const size = Number(values.size);
const batch = Number(values.batch);
const reps = Number(values.reps);

const tf = loadTf('cpu');
const { model } = await loadMobileNetV2(tf, { alpha, inputSize: size, weights: alpha === 1 ? values.weights! : 'none' });
const net = foldNetwork(tf, model, ['out_relu']);
const x = tf.randomUniform([batch, size, size, 3], -1, 1, 'float32', 1) as Tensor4D;

const layers = () => {
  const y = model.predict(x, { batchSize: batch }) as Tensor;
  y.dataSync();
  y.dispose();
};
const folded = () => {
  const [y] = net.apply(x);
  y!.dataSync();
  y!.dispose();
};

const times: Record<string, number[]> = { layers: [], folded: [] };
/** CPU time (user + system, all threads) per run: less sensitive than wall time to other load. */
const cpu: Record<string, number[]> = { layers: [], folded: [] };
layers(); // warm-up
folded();
for (let rep = 0; rep < reps; rep++) {
  for (const [name, f] of [['layers', layers], ['folded', folded]] as const) {
    const start = performance.now();
    const cpuStart = process.cpuUsage();
    f();
    const used = process.cpuUsage(cpuStart);
    times[name]!.push(performance.now() - start);
    cpu[name]!.push((used.user + used.system) / 1000);
  }
}
const diff = tf.tidy(() => {
  const a = model.predict(x) as Tensor;
  const [b] = net.apply(x);
  return [tf.max(tf.abs(tf.sub(a, b!))).dataSync()[0]!, tf.max(tf.abs(a)).dataSync()[0]!];
});
const median = (list: number[]) => [...list].sort((p, q) => p - q)[Math.floor(list.length / 2)]!;
console.log(`MobileNetV2 alpha ${alpha}, ${size}×${size}, batch ${batch}, ${reps} reps:`);
for (const [name, list] of Object.entries(times)) {
  const best = Math.min(...list);
  console.log(
    `  ${name.padEnd(7)} ${((batch * 1000) / median(list)).toFixed(1)} images/s (median; best ${((batch * 1000) / best).toFixed(1)}), ` +
      `${(median(cpu[name]!) / batch).toFixed(1)} CPU ms per image`,
  );
}
console.log(`  max |layers − folded| = ${diff[0]} (max |out| = ${diff[1]})`);
