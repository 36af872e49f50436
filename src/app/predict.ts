// `pipe predict MODEL IMAGE...`: classifies image files with a model saved by an evaluate stage.
//
// MODEL is the evaluate stage's artifact directory or its `model/` directory (or model.json), or a
// model on the MLflow server: `models:/NAME/VERSION`, `models:/NAME@ALIAS` (the Model Registry) or
// `models:/m-…` (a LoggedModel), whose files are fetched through the server into a temporary
// directory first (src/tracking/registry.ts). Each
// image is decoded and resized exactly as the data stages do it (src/ml/images.ts: Keras's
// image_dataset_from_directory, rounded to bytes), fed to the model as raw pixels (the model
// preprocesses them itself) and printed as `<image>\t<class>\t<probability of that class>`.
// An image that cannot be read or decoded is reported on its own line and makes the exit code 1;
// the other images are still classified.

import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-node';
import type { CommandStatus } from '../core/io.ts';
import { CLASSIFIER_FORMAT, type ClassifierMetadata } from '../ml/head.ts';
import { decodeAndResize } from '../ml/images.ts';
import { loadTf, tidyValues } from '../ml/tf.ts';
import type { Flavour } from '../core/stage-kind.ts';
import { InputError } from '../core/errors.ts';


/** The model.json of a saved classifier, from an evaluate artifact dir, its model/ dir or the file itself. */
export async function findModelJson(modelPath: string): Promise<string> {
  const candidates = modelPath.endsWith('.json')
    ? [modelPath]
    : [path.join(modelPath, 'model.json'), path.join(modelPath, 'model', 'model.json')];
  for (const candidate of candidates) {
    if (await fs.stat(candidate).then((s) => s.isFile(), () => false)) return candidate;
  }
  throw new InputError(`no saved model at ${modelPath}: expected ${candidates.join(' or ')} (the model/ directory of an evaluate stage)`);
}

export interface PredictOptions {
  /** Where per-image errors go (default: `out`). */
  err?: (line: string) => void;
  flavour?: Flavour;
  /** Where the tracking server of `models:/` URIs is found (default: the current directory). */
  projectDir?: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * Classifies `images` and prints one line per image. Returns 0 when every image was classified,
 * 1 when some could not be (the model itself failing to load is thrown).
 */
export async function predict(
  modelDir: string,
  images: string[],
  out: (line: string) => void,
  options: PredictOptions = {},
): Promise<CommandStatus> {
  if (!modelDir.startsWith('models:/')) return predictLocal(modelDir, images, out, options);
  const { downloadModel, projectClient, resolveModelUri } = await import('../tracking/registry.ts');
  const client = await projectClient(options.projectDir ?? process.cwd(), options.env);
  const model = await resolveModelUri(client, modelDir);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'pipe-model-'));
  try {
    await downloadModel(client, model, dir);
    return await predictLocal(dir, images, out, options);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

async function predictLocal(
  modelDir: string,
  images: string[],
  out: (line: string) => void,
  options: PredictOptions,
): Promise<CommandStatus> {
  const err = options.err ?? out;
  const modelJson = await findModelJson(modelDir);
  const tf = loadTf(options.flavour ?? 'cpu');
  const model = await tf.loadLayersModel(tf.io.fileSystem(modelJson));
  try {
    const meta = model.getUserDefinedMetadata() as Partial<ClassifierMetadata> | undefined;
    if (meta?.format !== CLASSIFIER_FORMAT || !meta.classNames || !meta.inputShape || !meta.task) {
      throw new InputError(`${modelJson} is not a classifier saved by an evaluate stage (no ${CLASSIFIER_FORMAT} metadata)`);
    }
    const { classNames, task } = meta;
    const [height, width] = meta.inputShape;
    let status: CommandStatus = 'ok';
    for (const image of images) {
      let pixels: Uint8Array;
      try {
        pixels = decodeAndResize(tf, await fs.readFile(image), [height, width]);
      } catch (error) {
        err(`${image}\terror: ${reason(error)}`);
        status = 'failed';
        continue;
      }
      const probabilities = tidyValues(tf, () => {
        const logits = model.predict(tf.tensor4d(pixels, [1, height, width, 3], 'float32')) as Tensor;
        return [task.kind === 'binary' ? tf.sigmoid(logits) : tf.softmax(logits)];
      })[0]!;
      let predicted: number;
      let probability: number;
      if (task.kind === 'binary') {
        const p1 = probabilities[0]!;
        predicted = p1 >= 0.5 ? 1 : 0; // the recipe: tf.where(sigmoid(logits) < 0.5, 0, 1)
        probability = predicted === 1 ? p1 : 1 - p1;
      } else {
        predicted = 0;
        probabilities.forEach((p, i) => {
          if (p > probabilities[predicted]!) predicted = i;
        });
        probability = probabilities[predicted]!;
      }
      out(`${image}\t${classNames[predicted] ?? predicted}\t${probability.toFixed(4)}`);
    }
    return status;
  } finally {
    model.dispose();
  }
}

function reason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EISDIR') return 'is a directory';
  if (code === 'EACCES') return 'permission denied';
  return (error instanceof Error ? error.message : String(error)).split('\n')[0]!;
}
