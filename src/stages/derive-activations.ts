// derive-activations: the activations entering the fine-tuned top for one `fine_tune_at`, derived
// from activations cached at a lower block boundary by running only the frozen blocks in between.
//
// extract-features runs the whole base once per view and stores the activations at one low boundary
// (e.g. block_5_add for fine_tune_at ≥ 54). A fine-tuning run for fine_tune_at 100 needs those of
// block_10_project_BN: this stage computes them from the cached ones through blocks 6–10 (about 17 %
// of a forward pass), instead of from the pixels through the whole base. The frozen blocks run
// folded (src/ml/frozen.ts), like the base in extract-features, so the values equal a full pass up to
// float rounding. The output is a features artifact (src/ml/features.ts) with the boundary of
// `fine_tune_at` and no pooled features: what fine-tune and evaluate read.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  activationBytes,
  BASE_DIR,
  FEATURE_SETS,
  FeatureWriter,
  featureFileName,
  loadFeatureBase,
  FeatureReader,
  writeFeaturesMeta,
  type FeatureSetMeta,
  type FeatureSetName,
  type FeaturesMeta,
} from '../ml/features.ts';
import { buildBetween } from '../ml/frozen.ts';
import { fastest } from '../ml/graph-net.ts';
import { boundaryFor, describeMobileNetV2 } from '../ml/mobilenet.ts';
import { loadTf, tidyValues } from '../ml/tf.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import { InputError } from '../core/errors.ts';
import { linkOrCopy, linkTree } from '../util/files.ts';

const paramsSchema = {
  type: 'object',
  properties: {
    fine_tune_at: { type: 'integer', minimum: 1, description: 'Keras layer index of the first fine-tuned layer: the activations are derived at the block boundary at or below it, which must not be below the cached one' },
    batch_size: { type: 'integer', minimum: 1, default: 64, description: 'rows per forward pass (not in the fingerprint: it does not change the values)' },
    dtype: { enum: ['float32', 'float16', 'uint8'], default: 'float32', description: 'storage type of the derived activations: float16 halves their size; uint8 quarters it (8 bits per value, scaled per image and channel)' },
  },
  required: ['fine_tune_at'],
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type DeriveActivationsParams = ParamsOf<typeof paramsSchema>;

const kind: StageKind<DeriveActivationsParams> = {
  name: 'derive-activations',
  version: 1,
  description:
    'Derives the activations entering the fine-tuned top for fine_tune_at from activations cached at a lower ' +
    'block boundary (extract-features), running only the frozen blocks in between.',
  params: paramsSchema,
  inputs: { features: ['extract-features', 'derive-activations'] },
  fingerprintParams: (params) => ({
    // Layer names and boundaries are the same for every width and input size: fine_tune_at 100 and
    // 101 share one entry, like extract-features' boundary.
    boundary: boundaryFor(params.fine_tune_at, describeMobileNetV2({ alpha: 1.0, inputSize: 224 })).layerName,
    dtype: params.dtype,
  }),
  usesTensorflow: true,
  resources: { cpu: 'all' },
  run,
};

export default kind;

async function run(ctx: StageContext<DeriveActivationsParams>): Promise<void> {
  const { params } = ctx;
  const featuresDir = ctx.inputs['features'];
  if (!featuresDir) throw new Error('bug: derive-activations needs its features input');
  const tf = loadTf(ctx.flavour);
  const { model, meta } = await loadFeatureBase(tf, featuresDir);
  try {
    const from = meta.boundary;
    if (!from) {
      throw new InputError(
        `the features of ${featuresDir} hold no boundary activations: give their extract-features stage a fine_tune_at ` +
          `(the lowest fine_tune_at to derive from them, at most ${params.fine_tune_at})`,
      );
    }
    const to = boundaryFor(params.fine_tune_at, model.layers);
    if (to.index < from.index) {
      throw new InputError(
        `fine_tune_at ${params.fine_tune_at} needs the activations of ${to.layerName} (layer ${to.index}), below the cached ` +
          `${from.layerName} (layer ${from.index}, for fine_tune_at ≥ ${from.topStart}): lower the fine_tune_at of the ` +
          `extract-features stage to ${params.fine_tune_at} or less`,
      );
    }
    ctx.log(
      `fine_tune_at ${params.fine_tune_at}: ${to.layerName} (layer ${to.index}, ${to.shape.join('×')}) ` +
        `from the cached ${from.layerName} (layer ${from.index}, ${from.shape.join('×')}, ${from.dtype})`,
    );
    const sets = {} as Record<FeatureSetName, FeatureSetMeta>;
    const same = to.layerName === from.layerName && from.dtype === params.dtype;
    const total = FEATURE_SETS.reduce((sum, set) => sum + meta.sets[set].count * meta.sets[set].views, 0);
    let done = 0;
    let computeMs = 0;
    const net = same ? undefined : await fastest(tf, buildBetween(tf, model, from, to), ctx.log, ctx.tmpDir);
    try {
      for (const set of FEATURE_SETS) {
        const { pooled: _pooled, boundary: _boundary, ...setMeta } = meta.sets[set];
        const rows = setMeta.count * setMeta.views;
        const file = featureFileName('boundary', set, params.dtype);
        if (net === undefined) {
          // The cached boundary is the one asked for: the same bytes, linked when the file system allows.
          await linkOrCopy(path.join(featuresDir, meta.sets[set].boundary!), path.join(ctx.outDir, file));
          done += rows;
        } else {
          const writer = await FeatureWriter.create(path.join(ctx.outDir, file), to.shape, params.dtype);
          const reader = await FeatureReader.open(featuresDir, meta, set, 'boundary');
          try {
            for (let start = 0; start < rows; start += params.batch_size) {
              const count = Math.min(params.batch_size, rows - start);
              const input = await reader.read(start, count);
              const began = performance.now();
              const values = tidyValues(tf, () => net.apply(tf.tensor4d(input.data, [count, ...from.shape])))[0]!;
              computeMs += performance.now() - began;
              await writer.append(values);
              done += count;
              ctx.progress(done, total, set);
            }
          } finally {
            await reader.close();
            await writer.close();
          }
        }
        sets[set] = { ...setMeta, boundary: file };
      }
    } finally {
      net?.dispose();
    }
    // The base's files are the features' own: linked, not copied (9 MB per entry for MobileNetV2).
    await linkTree(path.join(featuresDir, meta.base), path.join(ctx.outDir, BASE_DIR));
    const out: FeaturesMeta = { ...meta, base: BASE_DIR, pooled: null, boundary: { ...to, dtype: params.dtype }, sets };
    await writeFeaturesMeta(ctx.outDir, out);
    const rowsPerSecond = computeMs > 0 ? total / (computeMs / 1000) : 0;
    if (net !== undefined) {
      ctx.log(`derived ${total} rows at ${rowsPerSecond.toFixed(1)} rows/s`);
      ctx.metric('derive_rows_per_second', rowsPerSecond);
    } else {
      ctx.log(`${total} rows: the cached activations as they are (${from.layerName})`);
    }
    ctx.summary({
      rows: total,
      from: from.layerName,
      boundary: to.layerName,
      boundary_shape: to.shape.join('x'),
      ...activationBytes(to.shape, params.dtype, total),
      ...(net !== undefined ? { rows_per_second: Math.round(rowsPerSecond * 10) / 10 } : {}),
    });
  } finally {
    model.dispose();
  }
}

