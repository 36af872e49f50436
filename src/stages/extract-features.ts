// extract-features: one pass of the frozen MobileNetV2 base over every training view and over the
// validation and test images. Per image it stores the 1280-d pooled feature (what the head trains
// on in phase 1) and, with `fine_tune_at`, the activation entering the fine-tuned top (what phase 2
// trains on), both from the same forward pass. The base runs as a folded fixed function
// (src/ml/frozen.ts): BatchNormalization in inference mode folded into the convolutions.
// The artifact format is documented in src/ml/features.ts.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Tensor4D } from '@tensorflow/tfjs-node';
import { ImageSetReader, readImageSetMeta, type ImageSetMeta } from '../ml/dataset.ts';
import {
  activationBytes,
  BASE_DIR,
  FEATURES_FORMAT,
  FeatureWriter,
  featureFileName,
  writeFeaturesMeta,
  type FeatureSetMeta,
  type FeatureSetName,
  type FeaturesMeta,
} from '../ml/features.ts';
import { foldNetwork } from '../ml/frozen.ts';
import {
  boundaryFor,
  describeMobileNetV2,
  loadMobileNetV2,
  parseWeightsSpec,
  saveLayersModel,
  type Boundary,
} from '../ml/mobilenet.ts';
import { loadTf, tidyValues } from '../ml/tf.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import { InputError } from '../core/errors.ts';

/** Weights named by a local path (not `none`, `imagenet` or a URL). */
function localWeightsPath(weights: string): string | undefined {
  const kind = parseWeightsSpec(weights).kind;
  return kind === 'h5' || kind === 'tfjs' ? weights : undefined;
}

interface SetJob {
  name: FeatureSetName;
  dir: string;
  imageSet: string;
  slot: string;
  meta: ImageSetMeta;
}

const paramsSchema = {
  type: 'object',
  properties: {
    weights: { type: 'string', minLength: 1, default: 'imagenet', description: "'imagenet' (the official keras-applications file for alpha and size), 'none' (random, seeded), a Keras .h5 file, an http(s) URL of one, or a tfjs model directory" },
    weights_sha256: { type: 'string', pattern: '^[0-9a-fA-F]{64}$', description: 'expected sha256 of a downloaded weights file' },
    alpha: { type: 'number', exclusiveMinimum: 0, default: 1.0, description: 'MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)' },
    batch_size: { type: 'integer', minimum: 1, default: 32, description: 'images per forward pass (not in the fingerprint: it does not change the values)' },
    pooled: { type: 'boolean', default: true, description: 'store the 1280-d GlobalAveragePooling of out_relu per image (for train-head)' },
    fine_tune_at: { type: ['integer', 'null'], minimum: 0, default: null, description: 'Keras layer index of the first fine-tuned layer: also store the activations entering the top, at the block boundary at or below it (for fine-tune and evaluate)' },
    dtype: { enum: ['float32', 'float16'], default: 'float32', description: 'storage type of those activations (float16 halves their size)' },
    seed: { type: 'integer', default: 0, description: "seed of the random initialisation with weights 'none'" },
  },
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type ExtractFeaturesParams = ParamsOf<typeof paramsSchema>;

const kind: StageKind<ExtractFeaturesParams> = {
  name: 'extract-features',
  version: 1,
  description:
    'Runs the frozen MobileNetV2 base once over every training view and the validation and test images; ' +
    'stores pooled features and, with fine_tune_at, the activations entering the fine-tuned top.',
  params: paramsSchema,
  inputs: { data: ['split'], 'views?': ['augment'] },
  inputPaths: (params) => {
    const local = localWeightsPath(params.weights);
    return local ? [local] : [];
  },
  fingerprintParams: (params) => {
    const { batch_size: _batchSize, fine_tune_at, seed, ...rest } = params;
    const layers = describeMobileNetV2({ alpha: rest.alpha, inputSize: 224 });
    return {
      ...rest,
      // Layer names do not depend on the input size; the boundary is what the artifacts depend on.
      boundary: fine_tune_at === null ? null : boundaryFor(fine_tune_at, layers).layerName,
      ...(rest.weights === 'none' ? { seed } : {}),
    };
  },
  usesTensorflow: true,
  resources: { cpu: 'all' },
  run,
};

export default kind;

async function run(ctx: StageContext<ExtractFeaturesParams>): Promise<void> {
  const params = ctx.params;
  if (!params.pooled && params.fine_tune_at === null) {
    throw new InputError('extract-features has nothing to do: pooled is false and fine_tune_at is null');
  }
  const dataDir = ctx.inputs['data'];
  if (!dataDir) throw new Error('bug: extract-features needs its data input (a split stage)');
  const viewsDir = ctx.inputs['views'];

  const jobs: SetJob[] = [
    viewsDir
      ? { name: 'views', dir: viewsDir, imageSet: 'views', slot: 'views', meta: await readImageSetMeta(viewsDir, 'views') }
      : { name: 'views', dir: dataDir, imageSet: 'train', slot: 'data', meta: await readImageSetMeta(dataDir, 'train') },
    { name: 'validation', dir: dataDir, imageSet: 'validation', slot: 'data', meta: await readImageSetMeta(dataDir, 'validation') },
    { name: 'test', dir: dataDir, imageSet: 'test', slot: 'data', meta: await readImageSetMeta(dataDir, 'test') },
  ];
  const first = jobs[0]!.meta;
  for (const job of jobs) {
    const { meta } = job;
    if (meta.height !== first.height || meta.width !== first.width || meta.channels !== 3) {
      throw new InputError(
        `image set ${job.slot}/${job.imageSet} is ${meta.height}×${meta.width}×${meta.channels}, ` +
          `expected ${first.height}×${first.width}×3 like ${jobs[0]!.slot}/${jobs[0]!.imageSet}`,
      );
    }
    if (JSON.stringify(meta.classNames) !== JSON.stringify(first.classNames)) {
      throw new InputError(`image set ${job.slot}/${job.imageSet} has classes ${meta.classNames.join(', ')}, expected ${first.classNames.join(', ')}`);
    }
  }

  const tf = loadTf(ctx.flavour);
  let lastShown = 0;
  const { model, weights } = await loadMobileNetV2(tf, {
    alpha: params.alpha,
    inputSize: [first.height, first.width],
    weights: params.weights,
    sha256: params.weights_sha256,
    seed: params.seed,
    cacheDir: ctx.downloadCacheDir,
    log: ctx.log,
    onDownloadProgress: (received, total) => {
      if (received - lastShown >= 1 << 20 || received === total) {
        lastShown = received;
        ctx.progress(received, total, 'downloading weights');
      }
    },
  });
  ctx.log(
    `MobileNetV2 alpha ${params.alpha}, ${first.height}×${first.width}: ${model.countParams()} parameters, ` +
      `weights ${weights.source}${weights.sha256 ? ` (sha256 ${weights.sha256.slice(0, 12)}…)` : ''}`,
  );

  const boundary: Boundary | null = params.fine_tune_at === null ? null : boundaryFor(params.fine_tune_at, model.layers);
  if (boundary) {
    ctx.log(
      `fine_tune_at ${boundary.fineTuneAt}: boundary ${boundary.layerName} (layer ${boundary.index}), ` +
        `${boundary.shape.join('×')} per image, ${params.dtype}`,
    );
  }
  const outputs = [...(params.pooled ? ['out_relu'] : []), ...(boundary ? [boundary.layerName] : [])];
  const net = foldNetwork(tf, model, outputs);
  const pooledDim = net.outputShapes[0]![2];
  const boundarySize = boundary ? boundary.shape.reduce((a, b) => a * b, 1) : 0;

  const total = jobs.reduce((sum, job) => sum + job.meta.count * job.meta.views, 0);
  let done = 0;
  let computeMs = 0;
  const sets = {} as Record<FeatureSetName, FeatureSetMeta>;
  try {
    for (const job of jobs) {
      const { meta } = job;
      const rows = meta.count * meta.views;
      const setMeta: FeatureSetMeta = {
        count: meta.count,
        views: meta.views,
        labels: meta.labels,
        files: meta.files,
        source: `${job.slot}/${job.imageSet}`,
      };
      const pooledWriter = params.pooled
        ? await FeatureWriter.create(path.join(ctx.outDir, featureFileName('pooled', job.name)), pooledDim, 'float32')
        : undefined;
      const boundaryWriter = boundary
        ? await FeatureWriter.create(path.join(ctx.outDir, featureFileName('boundary', job.name, params.dtype)), boundarySize, params.dtype)
        : undefined;
      const pixels = await ImageSetReader.open(job.dir, job.imageSet);
      try {
        const size = pixels.rowBytes;
        const buffer = new Uint8Array(params.batch_size * size);
        for (let start = 0; start < rows; start += params.batch_size) {
          const n = Math.min(params.batch_size, rows - start);
          await pixels.read(start, n, buffer);
          const began = performance.now();
          const [pooledValues, boundaryValues] = tidyValues(tf, () => {
            const x = preprocess(tf, buffer.subarray(0, n * size), [n, meta.height, meta.width, 3]);
            const results = net.apply(x);
            return [
              params.pooled ? tf.mean(results[0]!, [1, 2]) : tf.zeros([0]),
              boundary ? results[results.length - 1]! : tf.zeros([0]),
            ];
          });
          const values = { pooled: params.pooled ? pooledValues : undefined, boundary: boundary ? boundaryValues : undefined };
          computeMs += performance.now() - began;
          if (pooledWriter && values.pooled) await pooledWriter.append(values.pooled);
          if (boundaryWriter && values.boundary) await boundaryWriter.append(values.boundary);
          done += n;
          ctx.progress(done, total, job.name);
        }
      } finally {
        await pixels.close();
        await pooledWriter?.close();
        await boundaryWriter?.close();
      }
      if (pooledWriter) setMeta.pooled = path.basename(pooledWriter.file);
      if (boundaryWriter) setMeta.boundary = path.basename(boundaryWriter.file);
      sets[job.name] = setMeta;
      ctx.log(`${job.name}: ${rows} images (${meta.count} × ${meta.views} views) from ${setMeta.source}`);
    }
  } finally {
    net.dispose();
  }

  const imagesPerSecond = total / (computeMs / 1000);
  ctx.log(`extracted ${total} images at ${imagesPerSecond.toFixed(1)} images/s`);
  ctx.metric('extract_images_per_second', imagesPerSecond);

  await saveLayersModel(model, path.join(ctx.outDir, BASE_DIR));
  const meta: FeaturesMeta = {
    format: FEATURES_FORMAT,
    model: {
      architecture: 'mobilenet_v2',
      alpha: params.alpha,
      inputShape: [first.height, first.width, 3],
      preprocessing: 'x / 127.5 - 1',
      params: model.countParams(),
    },
    weights,
    base: BASE_DIR,
    classNames: first.classNames,
    pooled: params.pooled ? { layer: 'out_relu', pooling: 'global-average', dim: pooledDim, dtype: 'float32' } : null,
    boundary: boundary ? { ...boundary, dtype: params.dtype } : null,
    sets,
  };
  await writeFeaturesMeta(ctx.outDir, meta);
  model.dispose();

  ctx.summary({
    images: total,
    images_per_second: Math.round(imagesPerSecond * 10) / 10,
    views: sets.views.views,
    weights: weights.source,
    ...(boundary ? { boundary: boundary.layerName, boundary_shape: boundary.shape.join('x'), ...activationBytes(boundarySize, params.dtype, total) } : {}),
  });
}

/** Keras's preprocess_input for MobileNetV2 on uint8 pixels: x / 127.5 − 1, as float32 NHWC. */
function preprocess(tf: ReturnType<typeof loadTf>, pixels: Uint8Array, shape: [number, number, number, number]): Tensor4D {
  const values = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) values[i] = pixels[i]! / 127.5 - 1;
  return tf.tensor4d(values, shape);
}
