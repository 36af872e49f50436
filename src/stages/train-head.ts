// train-head: phase 1 of the recipe. The base is frozen and BatchNormalization runs in inference
// mode, so the base is a fixed function whose pooled output per view was computed once by
// extract-features; the head (GlobalAveragePooling2D → Dropout → Dense logit) trains on those
// features. Pooling comes before dropout and is linear, so training on pooled features is exactly
// training the head on the base's output (DESIGN §4).
//
// As in the recipe: Adam (lr 1e-4, Keras defaults otherwise), BinaryCrossentropy(from_logits=True)
// and BinaryAccuracy(threshold=0) — softmax / sparse categorical cross-entropy and argmax accuracy
// for more than two classes —, batches of 32, the training examples shuffled every epoch, the
// untrained head's validation loss and accuracy first (the recipe's 0.91 / 0.38), then a Keras-like
// history. Epoch e trains on view (e mod views) of every training image.
//
// Artifacts: head.json + head.bin (src/ml/head.ts), history.json (Keras's history with epoch
// indices), meta.json (classes, task, epochs, parameter count, initial validation figures).

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-node';
import { FeatureReader, readFeaturesMeta } from '../ml/features.ts';
import { HeadVariables, headParamCount, initHead, writeHead } from '../ml/head.ts';
import { loadTf } from '../ml/tf.ts';
import { readCheckpoint, restoreCheckpoint, writeCheckpoint } from '../ml/checkpoint.ts';
import {
  deriveSeed,
  epochLine,
  evaluateBatches,
  fit,
  makeOptimizer,
  optimizerNames,
  taskFor,
} from '../ml/train.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import { InputError } from '../core/errors.ts';

/** What train-head records in meta.json (read by fine-tune and evaluate). */
export interface TrainHeadMeta {
  format: 'pipe-train-head/1';
  classNames: string[];
  task: ReturnType<typeof taskFor>;
  /** The recipe's `initial_epochs`: epochs run. */
  epochs: number;
  /** `history.epoch[-1]`, where fine-tuning continues from. */
  lastEpoch: number;
  trainableParams: number;
  initial: { val_loss: number; val_accuracy: number };
  final: { loss: number; accuracy: number; val_loss: number; val_accuracy: number };
  /** Set when a sweep's scheduler stopped the training early: after `epoch` of `of` epochs. */
  pruned?: { epoch: number; of: number };
  params: TrainHeadParams;
}

const paramsSchema = {
  type: 'object',
  properties: {
    epochs: { type: 'integer', minimum: 1, default: 10, description: 'epochs of phase 1 (the recipe: initial_epochs = 10); epoch e trains on view e mod views of each image' },
    learning_rate: { type: 'number', exclusiveMinimum: 0, default: 1e-4, description: 'base_learning_rate of the recipe' },
    optimizer: { enum: [...optimizerNames], default: 'adam', description: 'Keras Adam (β 0.9/0.999, ε 1e-7), RMSprop (ρ 0.9, ε 1e-7) or SGD' },
    dropout: { type: 'number', minimum: 0, exclusiveMaximum: 1, default: 0.2, description: 'Dropout rate before the Dense logit' },
    batch_size: { type: 'integer', minimum: 1, default: 32, description: 'batch size' },
    seed: { type: 'integer', default: 0, description: 'seed of the initialisation, the shuffles and the dropout' },
  },
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type TrainHeadParams = ParamsOf<typeof paramsSchema>;

const kind: StageKind<TrainHeadParams> = {
  name: 'train-head',
  version: 1,
  description:
    'Trains the classification head (pooling, dropout, dense logit) on the frozen base\'s pooled features, ' +
    'as phase 1 of the Keras transfer-learning recipe.',
  params: paramsSchema,
  inputs: { features: ['extract-features'] },
  usesTensorflow: true,
  resources: { cpu: 'all' },
  run,
};

export default kind;

async function run(ctx: StageContext<TrainHeadParams>): Promise<void> {
  const params = ctx.params;
  const featuresDir = ctx.inputs['features'];
  if (!featuresDir) throw new Error('bug: train-head needs its features input (an extract-features stage)');
  const meta = await readFeaturesMeta(featuresDir);
  if (!meta.pooled) {
    throw new InputError(`train-head needs pooled features, but the extract-features stage behind ${featuresDir} ran with pooled: false`);
  }
  const tf = loadTf(ctx.flavour);
  const task = taskFor(meta.classNames.length);
  const trainSet = meta.sets.views;
  const views = trainSet.views;
  const dim = meta.pooled.dim;

  // The pooled features are read batch by batch where they lie (FeatureReader.tensorOfRows), not
  // held in memory: memory does not grow with the number of images.
  const trainAll = await FeatureReader.open(featuresDir, meta, 'views', 'pooled');
  const validation = await FeatureReader.open(featuresDir, meta, 'validation', 'pooled').catch(async (error: unknown) => {
    await trainAll.close();
    throw error;
  });
  const head = new HeadVariables(
    tf,
    initHead({ inputDim: dim, task, dropout: params.dropout, classNames: meta.classNames, seed: deriveSeed(params.seed, 'init') }),
  );
  const optimizer = makeOptimizer(tf, params.optimizer, params.learning_rate);
  try {
    const trainable = headParamCount(head.spec);
    ctx.log(
      `head: GlobalAveragePooling2D → Dropout(${params.dropout}) → Dense(${head.spec.units}), ` +
        `${trainable} trainable parameters; ${task.kind === 'binary' ? 'binary cross-entropy' : `${meta.classNames.length}-class softmax cross-entropy`} from logits`,
    );
    ctx.log(
      `training on ${trainSet.count} images × ${views} view${views === 1 ? '' : 's'} (epoch e uses view e mod ${views}), ` +
        `validating on ${meta.sets.validation.count}`,
    );
    const validate = () =>
      evaluateBatches(tf, {
        task,
        labels: meta.sets.validation.labels,
        batchSize: params.batch_size,
        inputs: (indices) => validation.tensorOfRows(tf, indices),
        forward: (x) => head.logits(x, false),
      });

    const initial = validate();
    ctx.metric('initial_val_loss', initial.loss);
    ctx.metric('initial_val_accuracy', initial.accuracy);
    ctx.log(`initial loss: ${initial.loss.toFixed(2)}, initial accuracy: ${initial.accuracy.toFixed(2)}`);

    const checkpoint = await readCheckpoint(ctx.checkpoints.dir, CHECKPOINT_OWNER);
    if (checkpoint) {
      // After the untrained head's figures, which the checkpoint's run reported too.
      restoreCheckpoint(tf, checkpoint, head.vars, optimizer);
      ctx.log(`resuming from the checkpoint after epoch ${checkpoint.fit.history.epoch.length} of ${params.epochs} (weights, optimizer slots, shuffle and dropout streams)`);
      ctx.summary({ resumed_from_epoch: checkpoint.fit.history.epoch.length });
    }
    const history = await fit(tf, {
      task,
      vars: head.vars,
      resume: checkpoint?.fit,
      onCheckpoint: ctx.checkpoints.write ? (state) => writeCheckpoint(ctx.checkpoints.dir, CHECKPOINT_OWNER, head.vars, optimizer, state) : undefined,
      optimizer,
      labels: trainSet.labels,
      epochs: params.epochs,
      batchSize: params.batch_size,
      seed: params.seed,
      inputs: (epoch, indices) => trainAll.tensorOfRows(tf, indices.map((i) => (epoch % views) * trainSet.count + i)),
      forward: (x, training, dropoutSeed) => head.logits(x, training, dropoutSeed),
      validate,
      onBatch: (epoch, done, total) => ctx.progress(epoch * total + done, params.epochs * total, 'training'),
      onEpoch: (record) => {
        for (const key of ['loss', 'accuracy', 'val_loss', 'val_accuracy'] as const) ctx.metric(key, record[key], record.epoch);
        ctx.log(epochLine(record, params.epochs));
      },
      shouldStop: (epochsRun, of) => ctx.epochEnd(epochsRun, of),
    });
    const epochsRun = history.epoch.length;
    if (epochsRun < params.epochs) ctx.log(`pruned: stopped by the sweep's scheduler after epoch ${epochsRun} of ${params.epochs}`);

    await writeHead(ctx.outDir, head.weights());
    await fs.writeFile(path.join(ctx.outDir, 'history.json'), JSON.stringify(history, null, 1) + '\n');
    const last = history.epoch.length - 1;
    const result: TrainHeadMeta = {
      format: 'pipe-train-head/1',
      classNames: meta.classNames,
      task,
      epochs: epochsRun,
      lastEpoch: history.epoch[last]!,
      trainableParams: trainable,
      initial: { val_loss: initial.loss, val_accuracy: initial.accuracy },
      final: {
        loss: history.loss[last]!,
        accuracy: history.accuracy[last]!,
        val_loss: history.val_loss[last]!,
        val_accuracy: history.val_accuracy[last]!,
      },
      ...(epochsRun < params.epochs ? { pruned: { epoch: epochsRun, of: params.epochs } } : {}),
      params,
    };
    await fs.writeFile(path.join(ctx.outDir, 'meta.json'), JSON.stringify(result, null, 1) + '\n');
    ctx.artifact('history.json');
    ctx.summary({
      trainable_params: trainable,
      initial_val_accuracy: round(initial.accuracy),
      val_accuracy: round(result.final.val_accuracy),
      val_loss: round(result.final.val_loss),
      ...(result.pruned ? { pruned_after_epoch: result.pruned.epoch } : {}),
    });
  } finally {
    optimizer.dispose();
    head.dispose();
    await trainAll.close();
    await validation.close();
  }
}

const CHECKPOINT_OWNER = 'train-head/1';

function round(value: number): number {
  return Math.round(value * 10000) / 10000;
}
