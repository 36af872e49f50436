// evaluate: the recipe's last steps. Test loss and accuracy (`model.evaluate(test_dataset)`), the
// predictions on the test images with a 3×3 picture of the first nine (titled with the predicted
// class), a confusion matrix, the learning curves of both phases with the 'Start Fine Tuning'
// marker, and the trained model saved whole in tfjs layers format for `pipe predict`.
//
// Inputs:
//   model     a fine-tune stage (base with fine-tuned weights + head) or a train-head stage (head
//             only: the pipeline has no fine-tuning);
//   data      the split stage: the test images, run through the saved model's own layers;
//   features? the extract-features stage whose base the head was trained on. Needed after
//             train-head (the base comes from there); unused after fine-tune;
//   head?     the train-head stage, for the phase-1 curves after fine-tune (fine-tune keeps a copy
//             of that history, which is used when this slot is not bound).
//
// The test images go through the base folded into fixed convolutions (src/ml/frozen.ts) and the
// head; the saved model (unfolded, with a preprocessing layer) is reloaded from disk and checked
// against those predictions on the pictured images, so what `pipe predict` loads is what was
// measured.
//
// Artifacts: metrics.json, predictions.json, confusion_matrix.json, plots/predictions.png,
// plots/confusion_matrix.png, plots/learning_curves.png, model/model.json + model/*.bin.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { LayersModel, Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import { imageBytes, ImageSetReader, type ImageSetMeta } from '../ml/dataset.ts';
import { loadFeatureBase, readFeaturesMeta } from '../ml/features.ts';
import { foldNetwork } from '../ml/frozen.ts';
import { HeadVariables, buildClassifier, readHead } from '../ml/head.ts';
import { loadMobileNetV2, saveLayersModel } from '../ml/mobilenet.ts';
import { confusionMatrix, imageGrid, learningCurves } from '../ml/plots.ts';
import { type Tf, loadTf, tidyValues } from '../ml/tf.ts';
import { type EvalResult, type History, type Task, evaluateBatches, logitUnits, probabilities } from '../ml/train.ts';
import type { ParamsOf, ParamsSchema, StageContext, StageKind } from '../core/stage-kind.ts';
import type { FineTuneMeta } from './fine-tune.ts';
import type { TrainHeadMeta } from './train-head.ts';
import { InputError } from '../core/errors.ts';

/** One test image's prediction, as predictions.json lists them. */
export interface TestPrediction {
  file: string;
  label: string;
  predicted: string;
  /** Probability of the predicted class. */
  probability: number;
}

/** Test images read per chunk, in batches of batch_size (a chunk is evaluated before the next is read). */
const EVALUATE_CHUNK_BATCHES = 32;

const paramsSchema = {
  type: 'object',
  properties: {
    batch_size: { type: 'integer', minimum: 1, default: 32, description: 'batch size' },
    picture_images: { type: 'integer', minimum: 1, maximum: 64, default: 9, description: 'test images in the predictions picture (the recipe: 9)' },
  },
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type EvaluateParams = ParamsOf<typeof paramsSchema>;

const kind: StageKind<EvaluateParams> = {
  name: 'evaluate',
  version: 1,
  description:
    'Test loss and accuracy, predictions picture, confusion matrix and learning curves; saves the whole ' +
    'trained model (raw pixels in, logits out) in tfjs layers format for pipe predict.',
  params: paramsSchema,
  inputs: { model: ['fine-tune', 'train-head'], data: ['split'], 'features?': ['extract-features', 'derive-activations'], 'head?': ['train-head'] },
  usesTensorflow: true,
  resources: { cpu: 'all' },
  run,
};

export default kind;

type ModelMeta = FineTuneMeta | TrainHeadMeta;

async function readJson<T>(file: string): Promise<T> {
  return JSON.parse(await fs.readFile(file, 'utf8')) as T;
}

/** The base the model's head sits on, with its trained weights. */
async function loadBase(tf: Tf, ctx: StageContext<EvaluateParams>, modelDir: string, meta: ModelMeta): Promise<LayersModel> {
  if (meta.format === 'pipe-fine-tune/1') {
    const { model } = await loadMobileNetV2(tf, {
      alpha: meta.model.alpha,
      inputSize: [meta.model.inputShape[0], meta.model.inputShape[1]],
      weights: path.join(modelDir, 'base'),
    });
    return model;
  }
  const featuresDir = ctx.inputs['features'];
  if (!featuresDir) {
    throw new InputError(
      'evaluate after train-head needs its features input: the extract-features stage the head was trained on ' +
        '(bind it with needs: {features: STAGE})',
    );
  }
  const features = await readFeaturesMeta(featuresDir);
  if (features.classNames.join('\n') !== meta.classNames.join('\n')) {
    throw new InputError(`the features in ${featuresDir} are of classes ${features.classNames.join(', ')}, the head of ${meta.classNames.join(', ')}`);
  }
  return (await loadFeatureBase(tf, featuresDir)).model;
}

/** The learning curves' input: phase 1 then phase 2 (when there is one) end to end. */
async function histories(ctx: StageContext<EvaluateParams>, modelDir: string, meta: ModelMeta) {
  const own = await readJson<History>(path.join(modelDir, 'history.json'));
  if (meta.format === 'pipe-train-head/1') return { head: own, fine: undefined };
  const headDir = ctx.inputs['head'];
  const head = await readJson<History>(headDir ? path.join(headDir, 'history.json') : path.join(modelDir, 'head_history.json'));
  return { head, fine: own };
}

async function run(ctx: StageContext<EvaluateParams>): Promise<void> {
  const modelDir = ctx.inputs['model'];
  const dataDir = ctx.inputs['data'];
  if (!modelDir) throw new Error('bug: evaluate needs its model input (a fine-tune or train-head stage)');
  if (!dataDir) throw new Error('bug: evaluate needs its data input (a split stage)');

  const meta = await readJson<ModelMeta>(path.join(modelDir, 'meta.json'));
  if (meta.format !== 'pipe-fine-tune/1' && meta.format !== 'pipe-train-head/1') {
    throw new InputError(`evaluate: ${modelDir}/meta.json is neither a fine-tune nor a train-head result`);
  }
  const tf = loadTf(ctx.flavour);
  const headWeights = await readHead(modelDir);
  const reader = await ImageSetReader.open(dataDir, 'test');
  try {
    await evaluateTestSet(ctx, tf, modelDir, meta, headWeights, reader);
  } finally {
    await reader.close();
  }
}

/** Evaluates on the test set read batch by batch: memory does not grow with the number of test images. */
async function evaluateTestSet(
  ctx: StageContext<EvaluateParams>,
  tf: Tf,
  modelDir: string,
  meta: ModelMeta,
  headWeights: Awaited<ReturnType<typeof readHead>>,
  reader: ImageSetReader,
): Promise<void> {
  const { batch_size: batchSize, picture_images: pictureCount } = ctx.params;
  const task: Task = headWeights.task;
  const classNames = headWeights.classNames;
  const testSet = reader.meta;
  if (testSet.classNames.join('\n') !== classNames.join('\n')) {
    throw new InputError(`the test images are of classes ${testSet.classNames.join(', ')}, the model of ${classNames.join(', ')}`);
  }
  if (testSet.count === 0) throw new InputError(`the split in ${reader.dir} has no test images`);

  const base = await loadBase(tf, ctx, modelDir, meta);
  const [h, w] = (base.inputs[0]!.shape.slice(1) as number[]) as [number, number];
  if (testSet.height !== h || testSet.width !== w || testSet.channels !== 3) {
    base.dispose();
    throw new InputError(`the test images are ${testSet.height}×${testSet.width}×${testSet.channels}, the model takes ${h}×${w}×3`);
  }
  ctx.log(`evaluating ${meta.format === 'pipe-fine-tune/1' ? `the fine-tuned model (fine_tune_at ${meta.fineTuneAt})` : 'the head on the frozen base'} on ${testSet.count} test images`);

  const net = foldNetwork(tf, base, ['out_relu']);
  const head = new HeadVariables(tf, headWeights);
  const units = logitUnits(task);
  const logits = new Float32Array(testSet.count * units);
  let classifier: LayersModel | undefined;
  try {
    // --- Test loss and accuracy, every test image's logits
    // A chunk of whole batches is read at a time and evaluated; the chunks' sums make the totals.
    const size = reader.rowBytes;
    const chunkRows = batchSize * EVALUATE_CHUNK_BATCHES;
    const chunk = new Uint8Array(Math.min(chunkRows, testSet.count) * size);
    const parts: EvalResult[] = [];
    for (let start = 0; start < testSet.count; start += chunkRows) {
      const n = Math.min(chunkRows, testSet.count - start);
      const pixels = await reader.read(start, n, chunk);
      const chunkLogits = new Float32Array(n * units);
      const part = evaluateBatches(tf, {
        task,
        labels: testSet.labels.slice(start, start + n),
        batchSize,
        inputs: (indices: number[]): Tensor4D => {
          const values = new Float32Array(indices.length * size);
          indices.forEach((image, row) => {
            for (let k = 0; k < size; k++) values[row * size + k] = pixels[image * size + k]! / 127.5 - 1;
          });
          return tf.tensor4d(values, [indices.length, h, w, 3]);
        },
        forward: (x) => tf.tidy(() => head.logitsOfActivation(net.apply(x as Tensor4D)[0]!, false)),
        keepLogits: chunkLogits,
        onBatch: (done) => ctx.progress(start + done, testSet.count, 'test images'),
      });
      logits.set(chunkLogits, start * units);
      parts.push(part);
    }
    const result = parts.length === 1 ? parts[0]! : combineResults(parts);
    ctx.metric('test_loss', result.loss);
    ctx.metric('test_accuracy', result.accuracy);
    ctx.log(`Test loss: ${result.loss.toFixed(4)} - Test accuracy: ${result.accuracy.toFixed(4)}`);

    // --- Predictions and the confusion matrix
    const { predicted, probability } = tf.tidy(() => {
      const all = tf.tensor2d(logits, [testSet.count, units]);
      const probs = probabilities(tf, task, all);
      if (task.kind === 'binary') {
        const p1 = probs.dataSync() as Float32Array;
        // The recipe's predictions: tf.where(sigmoid(logits) < 0.5, 0, 1).
        const cls = Array.from(p1, (p) => (p >= 0.5 ? 1 : 0));
        return { predicted: cls, probability: cls.map((c, i) => (c === 1 ? p1[i]! : 1 - p1[i]!)) };
      }
      const rows = probs.arraySync() as number[][];
      const cls = rows.map((row) => row.indexOf(Math.max(...row)));
      return { predicted: cls, probability: cls.map((c, i) => rows[i]![c]!) };
    });
    const matrix = classNames.map(() => classNames.map(() => 0));
    testSet.labels.forEach((label, i) => matrix[label]![predicted[i]!]!++);
    const predictions: TestPrediction[] = testSet.files.map((file, i) => ({
      file,
      label: classNames[testSet.labels[i]!]!,
      predicted: classNames[predicted[i]!]!,
      probability: round(probability[i]!),
    }));
    await fs.mkdir(path.join(ctx.outDir, 'plots'), { recursive: true });
    await writeJson(ctx.outDir, 'metrics.json', { test_loss: result.loss, test_accuracy: result.accuracy, test_images: testSet.count });
    await writeJson(ctx.outDir, 'predictions.json', predictions);
    await writeJson(ctx.outDir, 'confusion_matrix.json', { classNames, rows: 'true class', columns: 'predicted class', matrix });
    await writeArtifact(ctx, 'plots/confusion_matrix.png', await confusionMatrix(matrix, classNames, { title: 'Test set' }));
    ctx.artifact('metrics.json');
    ctx.artifact('predictions.json');
    ctx.artifact('confusion_matrix.json');

    // --- The recipe's pictures
    const shown = Array.from({ length: Math.min(pictureCount, testSet.count) }, (_, i) => i);
    const shownPixels = await reader.read(0, shown.length);
    const shownImage = (i: number) => shownPixels.subarray(i * size, (i + 1) * size);
    await writeArtifact(
      ctx,
      'plots/predictions.png',
      await imageGrid(
        shown.map((i) => ({ data: shownImage(i), height: h, width: w, channels: 3 })),
        shown.map((i) => classNames[predicted[i]!]!),
        { cols: 3, titleColours: shown.map((i) => (predicted[i] === testSet.labels[i] ? undefined : '#d62728')) },
      ),
    );
    const { head: headHistory, fine } = await histories(ctx, modelDir, meta);
    const joined = (key: keyof Omit<History, 'epoch'>) => [...headHistory[key], ...(fine?.[key] ?? [])];
    await writeArtifact(
      ctx,
      'plots/learning_curves.png',
      await learningCurves({
        accuracy: joined('accuracy'),
        val_accuracy: joined('val_accuracy'),
        loss: joined('loss'),
        val_loss: joined('val_loss'),
        ...(fine ? { fineTuneStartEpoch: headHistory.epoch.length } : {}),
      }),
    );

    // --- The whole model, saved and checked against the predictions above
    classifier = buildClassifier(tf, base, headWeights);
    const modelOut = path.join(ctx.outDir, 'model');
    await saveLayersModel(classifier, modelOut);
    for (const file of (await fs.readdir(modelOut)).sort()) ctx.artifact(`model/${file}`);
    const gap = await checkSavedModel(tf, modelOut, testSet, shown.map(shownImage), logits, units);
    ctx.log(
      `saved the model (raw ${h}×${w} RGB pixels in, logits out; ${classifier.countParams()} parameters) to model/; ` +
        `reloaded, it agrees with the test predictions within ${gap.toExponential(1)}`,
    );
    ctx.summary({
      test_accuracy: round(result.accuracy),
      test_loss: round(result.loss),
      test_images: testSet.count,
      model_params: classifier.countParams(),
    });
  } finally {
    net.dispose();
    head.dispose();
    base.dispose();
    classifier?.dispose();
  }
}

/**
 * Reloads the saved model from disk, runs it on raw pixels of the `images` and returns the largest
 * difference from the logits measured through the folded network. Throws when they disagree.
 */
async function checkSavedModel(
  tf: Tf,
  dir: string,
  testSet: ImageSetMeta,
  images: Uint8Array[],
  logits: Float32Array,
  units: number,
): Promise<number> {
  const saved = await tf.loadLayersModel(tf.io.fileSystem(path.join(dir, 'model.json')));
  try {
    const size = imageBytes(testSet);
    const pixels = new Float32Array(images.length * size);
    images.forEach((image, row) => pixels.set(image, row * size));
    const out = tidyValues(tf, () => [saved.predict(tf.tensor4d(pixels, [images.length, testSet.height, testSet.width, 3])) as Tensor])[0]!;
    let gap = 0;
    images.forEach((_, image) => {
      const row = image;
      for (let u = 0; u < units; u++) gap = Math.max(gap, Math.abs(out[row * units + u]! - logits[image * units + u]!));
    });
    const scale = logits.reduce((max, v) => Math.max(max, Math.abs(v)), 1);
    if (!(gap <= 1e-3 * scale)) {
      throw new Error(`bug: the saved model's logits differ from the evaluated ones by ${gap}`);
    }
    return gap;
  } finally {
    saved.dispose();
  }
}

/** The loss and accuracy of the whole set from those of its chunks (weighted by their counts). */
function combineResults(parts: EvalResult[]): EvalResult {
  const count = parts.reduce((n, p) => n + p.count, 0);
  const loss = parts.reduce((sum, p) => sum + p.loss * p.count, 0) / count;
  const correct = parts.reduce((sum, p) => sum + Math.round(p.accuracy * p.count), 0);
  return { loss, accuracy: correct / count, count };
}

async function writeJson(dir: string, name: string, value: unknown): Promise<void> {
  await fs.writeFile(path.join(dir, name), JSON.stringify(value, null, 1) + '\n');
}

async function writeArtifact(ctx: StageContext<EvaluateParams>, relPath: string, bytes: Uint8Array): Promise<void> {
  await fs.writeFile(path.join(ctx.outDir, relPath), bytes);
  ctx.artifact(relPath);
}

function round(value: number): number {
  return Math.round(value * 10000) / 10000;
}
