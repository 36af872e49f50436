// fine-tune: phase 2 of the recipe. `base.trainable = True; for layer in base.layers[:fine_tune_at]:
// layer.trainable = False`, then RMSprop at a tenth of the head's rate (1e-5), BatchNormalization
// still in inference mode (gamma and beta train, the moving statistics never change: DESIGN §6).
//
// Only the top of the base runs: extract-features cached, per view, the activation at the block
// boundary at or below fine_tune_at (src/ml/mobilenet.ts `boundaryFor`), so each step runs the
// layers from the boundary to `out_relu` (those below fine_tune_at frozen but computed), then the
// head (pooling → dropout → dense, starting from train-head's weights), forward and backward.
// Epoch e trains on view (e mod views) of every training image. The step runs as one TensorFlow
// graph in a session, forward and backward (src/ml/graph-train.ts), once a probe batch shows it
// agrees with the eager step; PIPE_GRAPH=0, or a graph that cannot be built, keeps the eager step.
//
// Epoch numbering continues from the head's as the recipe does it:
//   total_epochs = initial_epochs + fine_tune_epochs
//   model.fit(..., epochs=total_epochs, initial_epoch=history.epoch[-1])
// `history.epoch[-1]` is the index of the head's last epoch (9 after 10 epochs), so Keras runs
// epochs 9..19: eleven epochs, the first one numbered like the head's last. That is the recipe,
// and the default (`keras_initial_epoch_quirk: true`); with false, epochs 10..19 run (exactly
// `epochs` of them).
//
// Artifacts: base/ (the whole MobileNetV2 with the fine-tuned weights, tfjs layers format),
// head.json + head.bin (the fine-tuned head), history.json (this phase's history, Keras-like),
// head_history.json (train-head's, for the learning curves), meta.json.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Tensor, Tensor4D, Variable } from '@tensorflow/tfjs-node';
import { FeatureReader, loadFeatureBase } from '../ml/features.ts';
import { fastestTrainer } from '../ml/graph-train.ts';
import { HeadVariables, headParamCount, readHead, writeHead } from '../ml/head.ts';
import { buildTop, saveLayersModel } from '../ml/mobilenet.ts';
import { loadTf, type Tf } from '../ml/tf.ts';
import { readCheckpoint, restoreCheckpoint, writeCheckpoint, type Checkpoint } from '../ml/checkpoint.ts';
import {
  type History,
  type KerasOptimizer,
  type Task,
  deriveSeed,
  epochLine,
  evaluateBatches,
  fit,
  dropoutMask,
  inferenceForward,
  labelTensor,
  makeOptimizer,
  optimizerNames,
} from '../ml/train.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import type { TrainHeadMeta } from './train-head.ts';
import { InputError } from '../core/errors.ts';

/**
 * The epochs phase 2 runs, as Keras's `fit(epochs=total, initial_epoch=start)` numbers them:
 * total = head epochs + fine-tune epochs; start = the head's last epoch index (the recipe) or the
 * one after it.
 */
export function fineTuneEpochs(
  headEpochs: number,
  headLastEpoch: number,
  fineTuneEpochCount: number,
  kerasQuirk: boolean,
): { initialEpoch: number; epochs: number } {
  return { initialEpoch: kerasQuirk ? headLastEpoch : headLastEpoch + 1, epochs: headEpochs + fineTuneEpochCount };
}

export interface FineTuneMeta {
  format: 'pipe-fine-tune/1';
  classNames: string[];
  task: Task;
  fineTuneAt: number;
  /** The layer whose output the top starts from, and the first layer of the top. */
  boundary: { layerName: string; index: number; topStart: number; shape: number[] };
  model: { architecture: 'mobilenet_v2'; alpha: number; inputShape: [number, number, number]; layers: number };
  trainableParams: { base: number; head: number; total: number };
  trainableVariables: number;
  /** Keras `fit(epochs=..., initial_epoch=...)` of this phase. */
  initialEpoch: number;
  epochs: number;
  /** Epochs of the head phase (the recipe's initial_epochs): where fine-tuning starts on the curves. */
  headEpochs: number;
  final: { loss: number; accuracy: number; val_loss: number; val_accuracy: number };
  /** Set when a sweep's scheduler stopped the training early: after `epoch` of `of` epochs. */
  pruned?: { epoch: number; of: number };
  params: FineTuneParams;
}

const paramsSchema = {
  type: 'object',
  properties: {
    fine_tune_at: { type: 'integer', minimum: 1, description: 'Keras layer index of the first trainable layer of the base (the recipe: 100); must imply the boundary of the activations' },
    epochs: { type: 'integer', minimum: 1, default: 10, description: 'fine_tune_epochs of the recipe' },
    learning_rate: { type: 'number', exclusiveMinimum: 0, default: 1e-5, description: 'the recipe: base_learning_rate / 10' },
    optimizer: { enum: [...optimizerNames], default: 'rmsprop', description: 'Keras RMSprop (ρ 0.9, ε 1e-7), Adam or SGD' },
    batch_size: { type: 'integer', minimum: 1, default: 32, description: 'batch size' },
    seed: { type: 'integer', default: 0, description: 'seed of the shuffles and the dropout' },
    keras_initial_epoch_quirk: { type: 'boolean', default: true, description: "as the recipe, fit(epochs=initial+fine, initial_epoch=history.epoch[-1]): one epoch more, numbered from the head's last epoch" },
  },
  required: ['fine_tune_at'],
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type FineTuneParams = ParamsOf<typeof paramsSchema>;

const kind: StageKind<FineTuneParams> = {
  name: 'fine-tune',
  version: 1,
  description:
    'Fine-tunes the top of the base from fine_tune_at together with the head (RMSprop, BatchNormalization ' +
    'in inference mode) on the cached boundary activations, as phase 2 of the Keras transfer-learning recipe.',
  params: paramsSchema,
  inputs: { activations: ['extract-features', 'derive-activations'], head: ['train-head'] },
  usesTensorflow: true,
  resources: { cpu: 'all' },
  run,
};

export default kind;

async function run(ctx: StageContext<FineTuneParams>): Promise<void> {
  const params = ctx.params;
  const activationsDir = ctx.inputs['activations'];
  const headDir = ctx.inputs['head'];
  if (!activationsDir) throw new Error('bug: fine-tune needs its activations input (an extract-features stage with fine_tune_at)');
  if (!headDir) throw new Error('bug: fine-tune needs its head input (a train-head stage)');
  if (!Number.isInteger(params.fine_tune_at)) throw new Error('bug: fine-tune needs the parameter fine_tune_at (a Keras layer index)');

  const tf = loadTf(ctx.flavour);
  const [headWeights, headMeta, headHistoryText] = await Promise.all([
    readHead(headDir),
    fs.readFile(path.join(headDir, 'meta.json'), 'utf8').then((text) => JSON.parse(text) as TrainHeadMeta),
    fs.readFile(path.join(headDir, 'history.json'), 'utf8'),
  ]);
  const { model: base, meta, boundary } = await loadFeatureBase(tf, activationsDir, { fineTuneAt: params.fine_tune_at });
  if (!boundary) throw new InputError(`the features in ${activationsDir} hold no boundary activations`);
  if (meta.classNames.join('\n') !== headWeights.classNames.join('\n')) {
    throw new InputError(
      `the head was trained on classes ${headWeights.classNames.join(', ')} but the activations are of ${meta.classNames.join(', ')}`,
    );
  }
  const task = headWeights.task;
  const layerCount = base.layers.length;
  if (params.fine_tune_at >= layerCount) {
    throw new InputError(`fine_tune_at ${params.fine_tune_at} leaves nothing to fine-tune: the base has ${layerCount} layers`);
  }

  const top = buildTop(tf, base, boundary);
  const head = new HeadVariables(tf, headWeights);
  const optimizer = makeOptimizer(tf, params.optimizer, params.learning_rate);
  const baseVars = top.trainableWeights.map((weight) => weight.read() as Variable);
  const [h, w, c] = boundary.shape;
  let validation: FeatureReader | undefined;
  let views: FeatureReader | undefined;
  let disposeTrainer = () => {};
  try {
    const baseParams = baseVars.reduce((sum, v) => sum + v.size, 0);
    const headParams = headParamCount(headWeights);
    ctx.log(
      `fine-tuning layers ${params.fine_tune_at}–${layerCount - 1} of ${layerCount} (from ${base.layers[params.fine_tune_at]!.name}); ` +
        `the top runs from the cached output of ${boundary.layerName} (${h}×${w}×${c})`,
    );
    ctx.log(
      `trainable parameters: ${fmt(baseParams)} in the base + ${fmt(headParams)} in the head = ${fmt(baseParams + headParams)} ` +
        `(${baseVars.length + 2} variables); BatchNormalization in inference mode`,
    );

    // The activations are read batch by batch where they lie (FeatureReader.tensorOfRows), never a
    // whole set or view in memory: memory does not grow with the number of images.
    validation = await FeatureReader.open(activationsDir, meta, 'validation', 'boundary');
    views = await FeatureReader.open(activationsDir, meta, 'views', 'boundary');
    const trainSet = meta.sets.views;
    // The top with BatchNormalization in inference mode, folded into the convolutions (the same
    // values and gradients as top.apply(x, {training: false}), faster backward).
    const topForward = inferenceForward(tf, top, { inputGradient: false });
    const forward = (x: Tensor, training: boolean, dropoutSeed: number) =>
      tf.tidy(() => head.logitsOfActivation(topForward(x), training, dropoutSeed));
    const validationInput = validation;
    const trainInput = views;
    const trainVars = [...baseVars, ...head.vars];
    // The same step as one TensorFlow graph in a session where it can be (src/ml/graph-train.ts),
    // checked against the eager step on the first validation batch.
    const probeRows = Array.from({ length: Math.min(params.batch_size, meta.sets.validation.count) }, (_, i) => i);
    const probe = { x: validationInput.tensorOfRows(tf, probeRows), labels: labelTensor(tf, task, probeRows.map((i) => meta.sets.validation.labels[i]!)) };
    const graphHead = { kernel: head.kernel, bias: head.bias, dropout: headWeights.dropout };
    const trainer = probeRows.length > 0 ? await fastestTrainer(tf, { top, head: graphHead, task, vars: trainVars, eagerLogits: forward, probe }, ctx.log, ctx.tmpDir) : undefined;
    tf.dispose([probe.x, probe.labels]);
    disposeTrainer = () => trainer?.dispose();
    const gradients = trainer
      ? (x: Tensor, labels: Tensor, dropoutSeed: number) =>
          trainer.gradients(x, labels, graphHead.dropout > 0 ? dropoutMask(tf, [x.shape[0]!, headWeights.inputDim], graphHead.dropout, dropoutSeed) : undefined)
      : undefined;
    const validate = () =>
      evaluateBatches(tf, {
        task,
        labels: meta.sets.validation.labels,
        batchSize: params.batch_size,
        inputs: (indices) => validationInput.tensorOfRows(tf, indices),
        forward: (x) => (trainer ? trainer.logits(x) : forward(x, false, 0)),
      });

    const range = fineTuneEpochs(headMeta.epochs, headMeta.lastEpoch, params.epochs, params.keras_initial_epoch_quirk);
    const epochCount = range.epochs - range.initialEpoch;
    // Training time alone (the batches of every epoch: loading a view and validating excluded), for
    // the rate metric.
    let trainMs = 0;
    let epochStarted = 0;
    ctx.log(
      `fit(epochs=${range.epochs}, initial_epoch=${range.initialEpoch}): ${epochCount} epochs` +
        (params.keras_initial_epoch_quirk ? ' (the recipe continues at history.epoch[-1], one epoch more than fine_tune_epochs)' : ''),
    );
    const checkpoint = await resumeFrom(ctx, tf, trainVars, optimizer, epochCount);
    let trainedEpochs = 0;
    const history: History = await fit(tf, {
      task,
      vars: trainVars,
      resume: checkpoint?.fit,
      onCheckpoint: ctx.checkpoints.write ? (state) => writeCheckpoint(ctx.checkpoints.dir, CHECKPOINT_OWNER, trainVars, optimizer, state) : undefined,
      optimizer,
      labels: trainSet.labels,
      epochs: range.epochs,
      initialEpoch: range.initialEpoch,
      batchSize: params.batch_size,
      // Its own streams: with the head's seed, the first epochs would repeat the head's shuffles.
      seed: deriveSeed(params.seed, 'fine-tune'),
      beforeEpoch: async () => {
        epochStarted = performance.now();
        trainedEpochs++;
      },
      // Epoch e reads view e mod views: rows view·count + i.
      inputs: (epoch, indices) => {
        const first = (epoch % trainSet.views) * trainSet.count;
        return trainInput.tensorOfRows(tf, indices.map((i) => first + i));
      },
      forward,
      gradients,
      validate: () => {
        trainMs += performance.now() - epochStarted;
        return validate();
      },
      onBatch: (epoch, done, total) =>
        ctx.progress((epoch - range.initialEpoch) * total + done, epochCount * total, 'fine-tuning'),
      onEpoch: (record) => {
        for (const key of ['loss', 'accuracy', 'val_loss', 'val_accuracy'] as const) ctx.metric(key, record[key], record.epoch);
        ctx.log(epochLine(record, range.epochs));
      },
      shouldStop: (epochsRun, of) => ctx.epochEnd(epochsRun, of),
    });
    const epochsRun = history.epoch.length;
    const pruned = epochsRun < epochCount ? { epoch: epochsRun, of: epochCount } : undefined;
    if (pruned) ctx.log(`pruned: stopped by the sweep's scheduler after epoch ${pruned.epoch} of ${pruned.of}`);

    const imagesPerSecond = trainMs > 0 ? (trainedEpochs * trainSet.count) / (trainMs / 1000) : 0;
    ctx.log(`trained on ${trainedEpochs * trainSet.count} images at ${imagesPerSecond.toFixed(1)} images/s (training steps only)`);
    ctx.metric('fine_tune_images_per_second', imagesPerSecond);

    await saveLayersModel(base, path.join(ctx.outDir, 'base'));
    await writeHead(ctx.outDir, head.weights());
    await fs.writeFile(path.join(ctx.outDir, 'history.json'), JSON.stringify(history, null, 1) + '\n');
    await fs.writeFile(path.join(ctx.outDir, 'head_history.json'), headHistoryText);
    const last = history.epoch.length - 1;
    const result: FineTuneMeta = {
      format: 'pipe-fine-tune/1',
      classNames: meta.classNames,
      task,
      fineTuneAt: params.fine_tune_at,
      boundary: { layerName: boundary.layerName, index: boundary.index, topStart: boundary.topStart, shape: boundary.shape },
      model: { architecture: 'mobilenet_v2', alpha: meta.model.alpha, inputShape: meta.model.inputShape, layers: layerCount },
      trainableParams: { base: baseParams, head: headParams, total: baseParams + headParams },
      trainableVariables: baseVars.length + 2,
      initialEpoch: range.initialEpoch,
      epochs: range.epochs,
      headEpochs: headMeta.epochs,
      final: {
        loss: history.loss[last]!,
        accuracy: history.accuracy[last]!,
        val_loss: history.val_loss[last]!,
        val_accuracy: history.val_accuracy[last]!,
      },
      ...(pruned ? { pruned } : {}),
      params,
    };
    await fs.writeFile(path.join(ctx.outDir, 'meta.json'), JSON.stringify(result, null, 1) + '\n');
    ctx.artifact('history.json');
    ctx.summary({
      fine_tune_at: params.fine_tune_at,
      trainable_params: baseParams + headParams,
      epochs_run: epochsRun,
      ...(pruned ? { pruned_after_epoch: pruned.epoch } : {}),
      val_accuracy: round(result.final.val_accuracy),
      val_loss: round(result.final.val_loss),
    });
  } finally {
    disposeTrainer();
    optimizer.dispose();
    head.dispose();
    await validation?.close();
    await views?.close();
    base.dispose();
  }
}

const CHECKPOINT_OWNER = 'fine-tune/1';

/**
 * The newest checkpoint of this stage, restored into the variables and the optimizer: training
 * goes on from there (bit-identical to a straight run). Undefined when there is none.
 */
async function resumeFrom(ctx: StageContext<FineTuneParams>, tf: Tf, vars: Variable[], optimizer: KerasOptimizer, epochCount: number): Promise<Checkpoint | undefined> {
  const checkpoint = await readCheckpoint(ctx.checkpoints.dir, CHECKPOINT_OWNER);
  if (!checkpoint) return undefined;
  restoreCheckpoint(tf, checkpoint, vars, optimizer);
  const done = checkpoint.fit.history.epoch.length;
  ctx.log(`resuming from the checkpoint after epoch ${done} of ${epochCount} (weights, optimizer slots, shuffle and dropout streams)`);
  ctx.summary({ resumed_from_epoch: done });
  return checkpoint;
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

function round(value: number): number {
  return Math.round(value * 10000) / 10000;
}
