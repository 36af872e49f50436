// Resumable training: a learning stage stopped after k epochs (a sweep's scheduler) leaves a
// checkpoint; a later run of the same stage continues from it, and its result is bit-identical to
// a run straight through (weights, optimizer slots, shuffle and dropout streams all restored).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import extractFeatures from '../../src/stages/extract-features.ts';
import fineTune, { type FineTuneMeta } from '../../src/stages/fine-tune.ts';
import trainHead, { type TrainHeadMeta } from '../../src/stages/train-head.ts';
import type { History } from '../../src/ml/train.ts';
import { listFiles } from '../../src/util/hash.ts';
import { runKind, tempDir, type KindRun } from '../helpers/run-kind.ts';
import { calibratedBase, generatedSplit } from '../helpers/model.ts';

const read = async <T>(dir: string, file: string) => JSON.parse(await fs.readFile(path.join(dir, file), 'utf8')) as T;

/** Every file of two artifact directories, byte for byte (timing facts aside). */
async function assertSameFiles(a: string, b: string, skip: string[] = []): Promise<void> {
  const files = (await listFiles(a)).filter((f) => !skip.includes(f));
  assert.equal(files, (await listFiles(b)).filter((f) => !skip.includes(f)));
  for (const file of files) {
    const [x, y] = await Promise.all([fs.readFile(path.join(a, file)), fs.readFile(path.join(b, file))]);
    assert.ok(x.equals(y), `${file} differs`);
  }
}

const epochPoints = (run: KindRun) =>
  run.metrics.filter((m) => ['loss', 'accuracy', 'val_loss', 'val_accuracy'].includes(m.key)).map((m) => `${m.key}@${m.step}=${m.value}`);

test('train-head (Adam, dropout, a partial batch): stopped after 2 of 6 epochs, resumed, equals a straight run', async () => {
  const features = await generatedFeatures();
  const params = { epochs: 6, learning_rate: 0.05, batch_size: 10, seed: 4 };
  const checkpoints = path.join(tempDir('pipe-ckpt-'), 'head');

  const stopped = await runKind(trainHead, params, { features }, { checkpointDir: checkpoints, stopAfterEpoch: 2 });
  const stoppedMeta = await read<TrainHeadMeta>(stopped.outDir, 'meta.json');
  assert.equal(stoppedMeta.pruned, { epoch: 2, of: 6 });
  assert.equal((await read<History>(stopped.outDir, 'history.json')).epoch, [0, 1]);
  assert.equal(await fs.readdir(checkpoints), ['epoch-2'], 'only the newest checkpoint is kept');

  // Resumed and stopped again at once: the scheduler sees the checkpoint's epochs, nothing trains.
  const again = await runKind(trainHead, params, { features }, { checkpointDir: checkpoints, stopAfterEpoch: 2 });
  assert.is(again.summary['resumed_from_epoch'], 2);
  await assertSameFiles(stopped.outDir, again.outDir);

  const resumed = await runKind(trainHead, params, { features }, { checkpointDir: checkpoints });
  const straight = await runKind(trainHead, params, { features });
  assert.is(resumed.summary['resumed_from_epoch'], 2);
  assert.ok(resumed.logs.some((l) => l.startsWith('resuming from the checkpoint after epoch 2 of 6')), resumed.logs.join('\n'));
  assert.is(straight.summary['resumed_from_epoch'], undefined);
  await assertSameFiles(resumed.outDir, straight.outDir);
  assert.equal(epochPoints(resumed), epochPoints(straight), 'the replayed epochs are reported as they were');
  assert.is((await read<History>(straight.outDir, 'history.json')).epoch.length, 6);
});

test('fine-tune (RMSprop on the top of a MobileNetV2): stopped after 1 of 3 epochs, resumed, equals a straight run', async () => {
  const split = await generatedSplit({ train: 12, validation: 6, test: 4 });
  const features = await runKind(extractFeatures, { weights: await calibratedBase(), alpha: 0.35, fine_tune_at: 100 }, { data: split });
  const head = await runKind(trainHead, { epochs: 2, learning_rate: 0.01 }, { features: features.outDir });
  const inputs = { activations: features.outDir, head: head.outDir };
  const params = { fine_tune_at: 100, epochs: 3, learning_rate: 1e-3, batch_size: 5, keras_initial_epoch_quirk: false };
  const checkpoints = path.join(tempDir('pipe-ckpt-'), 'fine-tune');

  const stopped = await runKind(fineTune, params, inputs, { checkpointDir: checkpoints, stopAfterEpoch: 1 });
  assert.equal((await read<FineTuneMeta>(stopped.outDir, 'meta.json')).pruned, { epoch: 1, of: 3 });
  assert.equal((await read<History>(stopped.outDir, 'history.json')).epoch, [2]);
  assert.ok(existsSync(path.join(checkpoints, 'epoch-1', 'tensors.bin')));

  const resumed = await runKind(fineTune, params, inputs, { checkpointDir: checkpoints });
  const straight = await runKind(fineTune, params, inputs);
  assert.is(resumed.summary['resumed_from_epoch'], 1);
  assert.equal((await read<History>(resumed.outDir, 'history.json')).epoch, [2, 3, 4]);
  await assertSameFiles(resumed.outDir, straight.outDir);
  assert.equal(epochPoints(resumed), epochPoints(straight));
});

/** Pooled features of generated images through a small MobileNetV2 (train-head's input). */
async function generatedFeatures(): Promise<string> {
  const split = await generatedSplit({ train: 24, validation: 8, test: 4 });
  const features = await runKind(extractFeatures, { weights: await calibratedBase(), alpha: 0.35, pooled: true }, { data: split });
  return features.outDir;
}

test.run();
