// extract-features: one pass of the frozen MobileNetV2 base over every training view and over the
// validation and test images. Per image it stores the 1280-d pooled feature (what the head trains
// on in phase 1) and, with `fine_tune_at`, the activation entering the fine-tuned top (what phase 2
// trains on), both from the same forward pass. The base runs as a folded fixed function
// (src/ml/frozen.ts): BatchNormalization in inference mode folded into the convolutions.
// The artifact format is documented in src/ml/features.ts.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { LayersModel, Tensor4D } from '@tensorflow/tfjs-node';
import { ImageSetReader, readImageSetMeta, type ImageSetMeta } from '../ml/dataset.ts';
import { AugmentedViews, readAugmentRecord, type AugmentRecord, type RowFetch } from '../ml/augmented-views.ts';
import {
  activationBytes,
  BASE_DIR,
  FEATURES_FORMAT,
  FEATURE_SETS,
  FeatureWriter,
  featureFileName,
  writeFeaturesMeta,
  type FeatureSetMeta,
  type FeatureSetName,
  type FeaturesMeta,
} from '../ml/features.ts';
import { foldNetwork } from '../ml/frozen.ts';
import { fastest } from '../ml/graph-net.ts';
import {
  boundaryFor,
  describeMobileNetV2,
  loadMobileNetV2,
  parseWeightsSpec,
  saveLayersModel,
  type Boundary,
} from '../ml/mobilenet.ts';
import { loadTf, tidyValues, type Tf } from '../ml/tf.ts';
import { checkPartsTile, weightedShardRange, type ParamsOf, type ParamsSchema, type PartRange, type Shard, type StageContext, type StageKind } from '../core/stage-kind.ts';
import { InputError } from '../core/errors.ts';
import { concatenateFiles, linkTree } from '../util/files.ts';

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
  /** The training views made from `dir`/`imageSet` as they are read (augment's default), not stored. */
  generated?: AugmentRecord;
}

/** Where a set's rows come from: a stored image set, or views made on the fly. */
interface RowSource {
  readonly rowBytes: number;
  begin(start: number, n: number, out: Uint8Array): RowFetch;
  close(): Promise<void>;
}

async function openRows(job: SetJob, threads: number, batch: number): Promise<RowSource> {
  if (job.generated) return AugmentedViews.open(job.dir, job.imageSet, job.generated, threads, batch);
  const reader = await ImageSetReader.open(job.dir, job.imageSet);
  return {
    rowBytes: reader.rowBytes,
    begin: (start, n, out) => {
      const done = reader.read(start, n, out);
      return { loaded: done.then(() => undefined, () => undefined), done };
    },
    close: () => reader.close(),
  };
}

/**
 * The job of the training views from augment's artifact: its stored image set (views.json), or
 * (augment.json says 'generated') the split's training images with the recorded draws.
 */
async function viewsJob(viewsDir: string, dataDir: string): Promise<SetJob> {
  const record = await readAugmentRecord(viewsDir);
  if (record?.pixels !== 'generated') {
    return { name: 'views', dir: viewsDir, imageSet: 'views', slot: 'views', meta: await readImageSetMeta(viewsDir, 'views') };
  }
  const train = await readImageSetMeta(dataDir, 'train');
  return { name: 'views', dir: dataDir, imageSet: 'train', slot: 'views', meta: { ...train, views: record.views }, generated: record };
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
    dtype: { enum: ['float32', 'float16', 'uint8'], default: 'float32', description: 'storage type of those activations: float16 halves their size; uint8 quarters it (8 bits per value, scaled per image and channel: within 1/510 of the channel\'s range)' },
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
  shard: { run: runShard, merge: mergeParts },
};

export default kind;

/** Everything a pass needs before its first batch: the checked image sets and the folded base. */
interface Prepared {
  tf: Tf;
  jobs: SetJob[];
  model: LayersModel;
  net: ReturnType<typeof foldNetwork>;
  /** The artifact's features.json (the same for every shard). */
  meta: FeaturesMeta;
  pooledDim: number;
}

/** One forward pass: `n` rows of a set from row `start`. The list is the same whatever the shards. */
interface Batch {
  set: FeatureSetName;
  start: number;
  n: number;
}

/** What a pass over some batches took: rows computed and time spent in the base (ms). */
interface PassResult {
  rows: number;
  computeMs: number;
}

/**
 * What a row made on the fly (a training view from augment's draws: read, then rotated and flipped
 * on the pool's threads) costs a shard, against 1 for a row only read (validation, test, stored
 * views). Measured on `--cpus 1` workers at 48,000 images, views=1 (33,600 made views, then 14,400
 * read rows), in two shards of equal batch counts (bench run 20261206T224015Z): shard 1 (24,000
 * made views) took 3m11s, shard 2 (9,600 made views and the 14,400 read rows) 2m52s; with ≈10 s
 * fixed that is ≈7.5 ms a made view against ≈6.2 ms a read row.
 */
const MADE_VIEW_ROW_COST = 1.2;

/** A shard's part: its feature files (rows of its batches), `part.json`, and (shard 0) the base. */
const PART_FILE = 'part.json';

interface PartInfo {
  shard: Shard;
  /** The shard's range [start, end) of the pass's `of` batches (absent in a part of an older pipe). */
  batches?: PartRange;
  meta: FeaturesMeta;
  rows: number;
  computeMs: number;
}

async function run(ctx: StageContext<ExtractFeaturesParams>): Promise<void> {
  const prepared = await prepare(ctx);
  let result: PassResult;
  try {
    result = await extract(ctx, prepared, batchesOf(prepared.jobs, ctx.params.batch_size));
  } finally {
    prepared.net.dispose();
  }
  for (const job of prepared.jobs) {
    const from = job.generated ? `${job.slot}: made from data/${job.imageSet} as they are read` : `from ${job.slot}/${job.imageSet}`;
    ctx.log(`${job.name}: ${job.meta.count * job.meta.views} images (${job.meta.count} × ${job.meta.views} views) ${from}`);
  }
  await saveLayersModel(prepared.model, path.join(ctx.outDir, BASE_DIR));
  prepared.model.dispose();
  await writeFeaturesMeta(ctx.outDir, prepared.meta);
  report(ctx, prepared.meta, result);
}

/**
 * Shard `shard.index` of `shard.count`: the batches of the whole pass (the same list as `run`'s,
 * so every row goes through the base in the same batch as in one job and comes out with the same
 * bits) are cut into contiguous ranges of about equal cost (made views cost more than read rows);
 * this shard computes its range into files named as the artifact's. Shard 0 also stores the base.
 */
async function runShard(ctx: StageContext<ExtractFeaturesParams>, shard: Shard): Promise<void> {
  const prepared = await prepare(ctx);
  const batches = batchesOf(prepared.jobs, ctx.params.batch_size);
  const costs = batchCosts(prepared.jobs, batches);
  const { start, end } = weightedShardRange(costs, shard);
  const total = costs.reduce((sum, cost) => sum + cost, 0);
  const share = total > 0 ? costs.slice(start, end).reduce((sum, cost) => sum + cost, 0) / total : 0;
  const rows = batches.slice(start, end).reduce((sum, batch) => sum + batch.n, 0);
  const weighs = prepared.jobs.some((job) => job.generated) ? ` (a view made on the fly weighs ${MADE_VIEW_ROW_COST} read rows)` : '';
  ctx.log(
    `shard ${shard.index + 1} of ${shard.count}: batches ${start < end ? `${start}–${end - 1}` : 'none'} of ${batches.length}, ` +
      `${rows} rows, ${(share * 100).toFixed(1)}% of the pass's cost${weighs}`,
  );
  let result: PassResult;
  try {
    result = await extract(ctx, prepared, batches.slice(start, end));
  } finally {
    prepared.net.dispose();
  }
  if (shard.index === 0) await saveLayersModel(prepared.model, path.join(ctx.outDir, BASE_DIR));
  prepared.model.dispose();
  const part: PartInfo = { shard, batches: { start, end, of: batches.length }, meta: prepared.meta, ...result };
  await fs.writeFile(path.join(ctx.outDir, PART_FILE), JSON.stringify(part));
}

/** The artifact from the shards' parts: each feature file is the parts' files end to end. */
async function mergeParts(ctx: StageContext<ExtractFeaturesParams>, parts: string[]): Promise<void> {
  const infos = await Promise.all(parts.map(async (dir) => JSON.parse(await fs.readFile(path.join(dir, PART_FILE), 'utf8')) as PartInfo));
  const meta = infos[0]!.meta;
  infos.forEach((info, i) => {
    if (JSON.stringify(info.meta) !== JSON.stringify(meta)) throw new Error(`bug: part ${i} of ${parts.length} is of another pass`);
  });
  checkPartsTile(infos.map((info) => ({ shard: info.shard, range: info.batches })), 'batches');
  for (const set of FEATURE_SETS) {
    for (const file of [meta.sets[set].pooled, meta.sets[set].boundary]) {
      if (file) await concatenateFiles(parts.map((dir) => path.join(dir, file)), path.join(ctx.outDir, file));
    }
  }
  // Cache entries never change: the base is shard 0's files, linked.
  await linkTree(path.join(parts[0]!, BASE_DIR), path.join(ctx.outDir, BASE_DIR));
  await writeFeaturesMeta(ctx.outDir, meta);
  const result = { rows: infos.reduce((sum, info) => sum + info.rows, 0), computeMs: infos.reduce((sum, info) => sum + info.computeMs, 0) };
  const expected = FEATURE_SETS.reduce((sum, set) => sum + meta.sets[set].count * meta.sets[set].views, 0);
  if (result.rows !== expected) throw new Error(`bug: the parts hold ${result.rows} rows, the pass has ${expected}`);
  ctx.log(`merged ${parts.length} parts: ${result.rows} images`);
  report(ctx, meta, result, parts.length);
}

/** Checks the image sets, loads the base and folds it; describes the artifact. */
async function prepare(ctx: StageContext<ExtractFeaturesParams>): Promise<Prepared> {
  const params = ctx.params;
  if (!params.pooled && params.fine_tune_at === null) {
    throw new InputError('extract-features has nothing to do: pooled is false and fine_tune_at is null');
  }
  const dataDir = ctx.inputs['data'];
  if (!dataDir) throw new Error('bug: extract-features needs its data input (a split stage)');
  const viewsDir = ctx.inputs['views'];

  const jobs: SetJob[] = [
    viewsDir
      ? await viewsJob(viewsDir, dataDir)
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
  // One TensorFlow graph in a session where it can be (src/ml/graph-net.ts), else eager ops.
  const net = await fastest(tf, foldNetwork(tf, model, outputs), ctx.log, ctx.tmpDir);
  const pooledDim = net.outputShapes[0]![2];
  const boundarySize = boundary ? boundary.shape.reduce((a, b) => a * b, 1) : 0;

  const sets = {} as Record<FeatureSetName, FeatureSetMeta>;
  for (const job of jobs) {
    sets[job.name] = {
      count: job.meta.count,
      views: job.meta.views,
      labels: job.meta.labels,
      files: job.meta.files,
      // Generated views are the same rows as stored ones: the same artifact, byte for byte.
      source: job.generated ? 'views/views' : `${job.slot}/${job.imageSet}`,
      ...(params.pooled ? { pooled: featureFileName('pooled', job.name) } : {}),
      ...(boundary ? { boundary: featureFileName('boundary', job.name, params.dtype) } : {}),
    };
  }
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
  return { tf, jobs, model, net, meta, pooledDim };
}

/** The pass's forward batches in order: each set's rows in batches of `batchSize`, set after set. */
function batchesOf(jobs: SetJob[], batchSize: number): Batch[] {
  const batches: Batch[] = [];
  for (const job of jobs) {
    const rows = job.meta.count * job.meta.views;
    for (let start = 0; start < rows; start += batchSize) batches.push({ set: job.name, start, n: Math.min(batchSize, rows - start) });
  }
  return batches;
}

/** Each batch's cost for the shards' cut: its rows, made views weighted by MADE_VIEW_ROW_COST. */
function batchCosts(jobs: SetJob[], batches: Batch[]): number[] {
  const made = new Set(jobs.filter((job) => job.generated).map((job) => job.name));
  return batches.map((batch) => batch.n * (made.has(batch.set) ? MADE_VIEW_ROW_COST : 1));
}

/** Runs the base over `batches`, appending each set's rows to its files in `ctx.outDir`. */
async function extract(ctx: StageContext<ExtractFeaturesParams>, prepared: Prepared, batches: Batch[]): Promise<PassResult> {
  const { params } = ctx;
  const { tf, net, meta } = prepared;
  const total = batches.reduce((sum, batch) => sum + batch.n, 0);
  let done = 0;
  let computeMs = 0;
  for (const job of prepared.jobs) {
    const setMeta = meta.sets[job.name];
    const jobBatches = batches.filter((batch) => batch.set === job.name);
    // Opened inside the try, so that a failure once the first file is open (opening the second
    // one, or the rows: e.g. views drawn for other images) still closes what is open.
    let pooledWriter: FeatureWriter | undefined;
    let boundaryWriter: FeatureWriter | undefined;
    let source: RowSource | undefined;
    let fetch: RowFetch | undefined;
    try {
      if (setMeta.pooled) pooledWriter = await FeatureWriter.create(path.join(ctx.outDir, setMeta.pooled), [prepared.pooledDim], 'float32');
      if (setMeta.boundary) boundaryWriter = await FeatureWriter.create(path.join(ctx.outDir, setMeta.boundary), prepared.meta.boundary!.shape, params.dtype);
      source = await openRows(job, ctx.cpus, params.batch_size);
      // Two buffers: batch k + 1 is read (and, for generated views, transformed on other threads)
      // while the base computes batch k.
      const size = source.rowBytes;
      const buffers = [new Uint8Array(params.batch_size * size), new Uint8Array(params.batch_size * size)] as const;
      if (jobBatches[0]) fetch = source.begin(jobBatches[0].start, jobBatches[0].n, buffers[0]);
      for (let k = 0; k < jobBatches.length; k++) {
        const { n } = jobBatches[k]!;
        const pixels = await fetch!.done;
        const next = jobBatches[k + 1];
        fetch = next ? source.begin(next.start, next.n, buffers[(k + 1) % 2]!) : undefined;
        if (fetch) await fetch.loaded;
        const began = performance.now();
        const [pooledValues, boundaryValues] = tidyValues(tf, () => {
          const x = preprocess(tf, pixels.subarray(0, n * size), [n, job.meta.height, job.meta.width, 3]);
          const results = net.apply(x);
          return [
            pooledWriter ? tf.mean(results[0]!, [1, 2]) : tf.zeros([0]),
            boundaryWriter ? results[results.length - 1]! : tf.zeros([0]),
          ];
        });
        computeMs += performance.now() - began;
        if (pooledWriter) await pooledWriter.append(pooledValues!);
        if (boundaryWriter) await boundaryWriter.append(boundaryValues!);
        done += n;
        ctx.progress(done, total, job.name);
      }
    } finally {
      // Settled before the files and the threads go, whatever happened.
      await fetch?.done.catch(() => undefined);
      await source?.close();
      await pooledWriter?.close();
      await boundaryWriter?.close();
    }
  }
  return { rows: total, computeMs };
}

/**
 * The pass's metric and summary. The rate is images per second of time in the base summed over
 * the processes (with shards, per worker process; their wall-clock throughput is higher).
 */
function report(ctx: StageContext<ExtractFeaturesParams>, meta: FeaturesMeta, result: PassResult, shards?: number): void {
  const imagesPerSecond = result.rows / (result.computeMs / 1000);
  ctx.log(`extracted ${result.rows} images at ${imagesPerSecond.toFixed(1)} images/s${shards ? ' per shard process' : ''}`);
  ctx.metric('extract_images_per_second', imagesPerSecond);
  const boundary = meta.boundary;
  ctx.summary({
    images: result.rows,
    images_per_second: Math.round(imagesPerSecond * 10) / 10,
    views: meta.sets.views.views,
    weights: meta.weights.source,
    ...(shards ? { shards } : {}),
    ...(boundary ? { boundary: boundary.layerName, boundary_shape: boundary.shape.join('x'), ...activationBytes(boundary.shape, boundary.dtype, result.rows) } : {}),
  });
}

/** Keras's preprocess_input for MobileNetV2 on uint8 pixels: x / 127.5 − 1, as float32 NHWC. */
function preprocess(tf: Tf, pixels: Uint8Array, shape: [number, number, number, number]): Tensor4D {
  const values = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) values[i] = pixels[i]! / 127.5 - 1;
  return tf.tensor4d(values, shape);
}
