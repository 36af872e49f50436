// The machine side of `npm run bench` (bench/run.ts starts it as its own process and reads the JSON
// it prints last): which tfjs backend and libtensorflow pipe runs on, the matmul GFLOP/s the cores
// reach, the FLOPs of one MobileNetV2 forward pass counted over the built model's layers, and the
// images per second of the frozen base through the very code path of pipe's extract-features stage
// (the folded network of src/ml/frozen.ts, batches of 32).
//
//   npx tsx bench/probe.ts [--weights FILE] [--size 160] [--alpha 1.0] [--matmul 2048] [--reps 8] [--batches 6]

import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import type { Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import { foldNetwork } from '../src/ml/frozen.ts';
import { buildMobileNetV2, loadMobileNetV2 } from '../src/ml/mobilenet.ts';
import { loadTf } from '../src/ml/tf.ts';
import { countMacs, layerShapes } from './lib.ts';

const { values } = parseArgs({
  options: {
    weights: { type: 'string' },
    size: { type: 'string', default: '160' },
    alpha: { type: 'string', default: '1.0' },
    matmul: { type: 'string', default: '2048' },
    reps: { type: 'string', default: '8' },
    batches: { type: 'string', default: '6' },
    batch: { type: 'string', default: '32' },
  },
});
const size = Number(values.size);
const alpha = Number(values.alpha);
const n = Number(values.matmul);
const reps = Number(values.reps);
const batches = Number(values.batches);
const batch = Number(values.batch);

const tf = loadTf('cpu');
const require = createRequire(import.meta.url);
const binding = (tf.backend() as unknown as { binding?: { TF_Version?: string } }).binding;
const runtime = {
  backend: tf.getBackend(),
  tfjs: (require('@tensorflow/tfjs-node/package.json') as { version: string }).version,
  libtensorflow: binding?.TF_Version ? String(binding.TF_Version) : 'unknown',
};

// Matmul: n×n by n×n, 2n³ FLOPs, best of `reps` after a warm-up.
const a = tf.randomUniform([n, n], -1, 1, 'float32', 1);
const b = tf.randomUniform([n, n], -1, 1, 'float32', 2);
const matmulTimes: number[] = [];
for (let rep = -1; rep < reps; rep++) {
  const start = performance.now();
  const c = tf.matMul(a, b);
  c.dataSync();
  const ms = performance.now() - start;
  c.dispose();
  if (rep >= 0) matmulTimes.push(ms);
}
a.dispose();
b.dispose();
const matmulFlops = 2 * n ** 3;
const bestMs = Math.min(...matmulTimes);
const matmul = {
  n,
  reps,
  bestGflops: matmulFlops / (bestMs / 1000) / 1e9,
  medianGflops: matmulFlops / (median(matmulTimes) / 1000) / 1e9,
};

// FLOPs of one forward pass, counted over the layers of the model pipe builds (no weights needed).
const built = buildMobileNetV2(tf, { alpha, inputSize: size, seed: 0 });
const shapes = layerShapes(built);
const counted = countMacs(shapes);
// MACs of the network up to and including each layer (Keras order): what a pass that stops at a
// boundary layer (the activations stage) costs
const cumulativeMacs: Record<string, number> = {};
let running = 0;
for (const layer of shapes) {
  running += countMacs([layer]).macs;
  cumulativeMacs[layer.name] = running;
}
const flops = {
  model: built.name,
  alpha,
  size,
  layers: built.layers.length,
  macs: counted.macs,
  forwardFlops: 2 * counted.macs,
  macsByClass: counted.byClass,
  cumulativeMacs,
};
built.dispose();

// Images per second of the folded frozen base (extract-features' path), real weights if given.
let throughput: Record<string, unknown> | undefined;
if (values.weights) {
  const { model } = await loadMobileNetV2(tf, { alpha, inputSize: size, weights: values.weights });
  const net = foldNetwork(tf, model, ['out_relu']);
  const x = tf.randomUniform([batch, size, size, 3], -1, 1, 'float32', 3) as Tensor4D;
  const pass = () => {
    const start = performance.now();
    tf.tidy(() => {
      const [y] = net.apply(x);
      (tf.mean(y!, [1, 2]) as Tensor).dataSync();
    });
    return performance.now() - start;
  };
  pass(); // warm-up
  const times = Array.from({ length: batches }, pass);
  const cpuStart = process.cpuUsage();
  const oneMore = pass();
  const cpu = process.cpuUsage(cpuStart);
  times.push(oneMore);
  throughput = {
    batch,
    batches: times.length,
    medianImagesPerSecond: (batch * 1000) / median(times),
    bestImagesPerSecond: (batch * 1000) / Math.min(...times),
    cpuMsPerImage: (cpu.user + cpu.system) / 1000 / batch,
  };
  net.dispose();
  // Where the forward's time goes: the folded base up to the boundaries the pipeline's
  // fine_tune_at values use (60, 100, 120, 130) and to the end, each timed like the whole.
  try {
    const prefixes: { layer: string; macs: number; imagesPerSecond: number }[] = [];
    for (const layer of ['block_5_add', 'block_10_project_BN', 'block_12_add', 'block_13_project_BN', 'out_relu']) {
      const part = foldNetwork(tf, model, [layer]);
      const passPart = () => {
        const start = performance.now();
        tf.tidy(() => {
          const [y] = part.apply(x);
          y!.dataSync();
        });
        return performance.now() - start;
      };
      passPart();
      const partTimes = Array.from({ length: batches }, passPart);
      prefixes.push({ layer, macs: cumulativeMacs[layer] ?? NaN, imagesPerSecond: (batch * 1000) / median(partTimes) });
      part.dispose();
    }
    throughput['prefixes'] = prefixes;
  } catch (error) {
    throughput['prefixesError'] = (error as Error).message;
  }
  x.dispose();
  model.dispose();
}

console.log(JSON.stringify({ runtime, matmul, flops, throughput }));

function median(list: number[]): number {
  const sorted = [...list].sort((p, q) => p - q);
  return sorted[Math.floor(sorted.length / 2)]!;
}
