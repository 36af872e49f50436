// Early stopping through the queue: a `pipe worker` runs the trials' stages, the submitting
// `pipe sweep --queue` makes the scheduler's decisions and sends them to the worker, which stops the
// lagging trial after its first epoch; its result goes to the shared cache apart from a full one.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { startWorker, stopWorkers, waitFor, type Worker } from '../helpers/cluster.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { startTestRedis, type TestRedis } from '../helpers/redis.ts';
import { smallEarlyStoppingSweep } from '../helpers/small-pipeline.ts';

interface SweepJson {
  trials: Array<{ id: string; status: string; pruned?: { stage: string; epoch: number; of: number }; metrics: Record<string, number>; curve?: number[] }>;
  stages: Array<{ name: string; status: string; fingerprint: string; worker?: string; error?: string; afterPruned?: boolean; pruned?: { epoch: number; of: number } }>;
}

let redis: TestRedis | undefined;
let workers: Worker[] = [];

test.after(async () => {
  await stopWorkers(workers);
  await redis?.stop();
});

test('the submitter decides, the worker stops the trial after epoch 1; its evaluation never runs', async () => {
  redis = await startTestRedis();
  const shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  workers = [startWorker('es1', redis.url, shared)];
  const dir = project({ 'small.yaml': smallEarlyStoppingSweep });
  await writeImageFolder(path.join(dir, 'images'), { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
  await waitFor('the worker', () => /taking stage jobs/.test(workers[0]!.output()));

  const r = await pipe(dir, ['sweep', 'small.yaml', '--queue', redis.url, '--cache', shared, '--json']);
  assert.is(r.exitCode, 0, `${r.stderr}\n${workers[0]!.output()}`);
  const result = JSON.parse(r.stdout) as SweepJson;
  const trial = (id: string) => result.trials.find((t) => t.id === id);
  const stage = (name: string) => result.stages.find((s) => s.name === name);
  assert.is(trial('t1')?.status, 'succeeded');
  assert.ok(trial('t1')?.metrics['test_accuracy'] !== undefined);
  assert.is(trial("t2")?.status, "pruned", workers[0]!.output());
  assert.equal(trial('t2')?.pruned, { stage: 'fine-tune', epoch: 1, of: 3 });
  assert.is(trial('t2')?.curve?.length, 1);
  assert.is(trial('t1')?.curve?.length, 3);

  const pruned = stage('fine-tune[lr=30]');
  assert.is(pruned?.status, 'pruned');
  assert.is(pruned?.worker, 'es1');
  assert.equal(pruned?.pruned, { epoch: 1, of: 3 });
  assert.is(stage('evaluate[lr=30]')?.status, 'skipped');
  assert.is(stage('evaluate[lr=30]')?.afterPruned, true);
  assert.is(stage('evaluate[lr=30]')?.error, "trial pruned: stage 'fine-tune[lr=30]' stopped after epoch 1 of 3");
  assert.match(workers[0]!.output(), /fine-tune\[lr=30\] pruned after epoch 1 of 3/);

  const entries = path.join(shared, 'entries');
  assert.not.ok(existsSync(path.join(entries, pruned?.fingerprint ?? '')));
  const history = JSON.parse(readFileSync(path.join(entries, `${pruned?.fingerprint}.pruned-1`, 'out', 'history.json'), 'utf8')) as { epoch: number[] };
  assert.equal(history.epoch, [2]);
  assert.ok(existsSync(path.join(shared, 'checkpoints', pruned?.fingerprint ?? '', 'epoch-1')), 'its checkpoint, for a later sweep that promotes it');
});

test.run();
