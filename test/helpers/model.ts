// Upstream artifacts for tests of the model stages: a split of generated images, and a small
// seeded MobileNetV2 (alpha 0.35, 96 px) with calibrated BatchNormalization statistics.

import type { LayersModel, Tensor } from '@tensorflow/tfjs-node';
import { writeImageSet } from './image-sets.ts';
import { buildMobileNetV2, saveLayersModel } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { rng } from '../../src/ml/train.ts';
import { tempDir } from './run-kind.ts';

const tf = loadTf('cpu');
export const SIZE = 96;

/** A split artifact of generated 96-px images: cats are darker than dogs. */
export async function generatedSplit(counts: { train: number; validation: number; test: number }): Promise<string> {
  const dir = tempDir('pipe-split-');
  const random = rng(5);
  for (const [name, count] of Object.entries(counts)) {
    const labels = Array.from({ length: count }, (_, i) => i % 2);
    const pixels = new Uint8Array(count * SIZE * SIZE * 3);
    labels.forEach((label, i) => {
      for (let p = 0; p < SIZE * SIZE * 3; p++) pixels[i * SIZE * SIZE * 3 + p] = Math.floor(random() * 128) + label * 100;
    });
    await writeImageSet(dir, name, {
      count, height: SIZE, width: SIZE, channels: 3, views: 1, classNames: ['cats', 'dogs'], labels,
      files: labels.map((label, i) => `${label ? 'dogs' : 'cats'}/${name}-${i}.jpg`), pixels,
    });
  }
  return dir;
}

/**
 * A seeded random MobileNetV2 whose BatchNormalization statistics are calibrated on generated
 * images, so that activations keep a sensible scale through the network (with identity BN they
 * vanish and the gradients underflow), saved as a tfjs model directory for `weights:`.
 */
export async function calibratedBase(): Promise<string> {
  const dir = tempDir('pipe-base-');
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: SIZE, seed: 7 });
  const x = tf.randomUniform([8, SIZE, SIZE, 3], -1, 1, 'float32', 3);
  const values = new Map<string, Tensor>([[model.layers[0]!.name, x]]);
  for (const layer of model.layers.slice(1)) {
    const inputs = (layer.inboundNodes[0]?.inboundLayers ?? []).map((l) => values.get(l.name)!);
    const input = inputs.length === 1 ? inputs[0]! : inputs;
    if (layer.getClassName() === 'BatchNormalization') {
      const { mean, variance } = tf.moments(input as Tensor, [0, 1, 2]);
      const [gamma, beta] = layer.getWeights();
      layer.setWeights([gamma!, beta!, mean, variance]);
    }
    values.set(layer.name, layer.apply(input) as Tensor);
  }
  await saveLayersModel(model, dir);
  tf.dispose([...values.values()]);
  model.dispose();
  return dir;
}

/** Gives every BatchNormalization random, non-trivial statistics (so that folding is really tested). */
export function randomizeBatchNorm(model: LayersModel, seed: number): void {
  let s = seed;
  for (const layer of model.layers) {
    if (layer.getClassName() !== 'BatchNormalization') continue;
    const c = layer.getWeights()[0]!.shape[0]!;
    layer.setWeights([
      tf.randomUniform([c], 0.5, 1.5, 'float32', s++),
      tf.randomUniform([c], -0.3, 0.3, 'float32', s++),
      tf.randomUniform([c], -0.3, 0.3, 'float32', s++),
      tf.randomUniform([c], 0.3, 2.0, 'float32', s++),
    ]);
  }
}
