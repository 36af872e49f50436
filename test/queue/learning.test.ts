// The learning pipeline (TensorFlow.js stages: fetch, split, augment, features, head, fine-tune,
// evaluate) through the queue on two workers equals the same pipeline run here.
import { mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { startWorker, stopWorkers, waitFor, type Worker } from '../helpers/cluster.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { startTestRedis, type TestRedis } from '../helpers/redis.ts';
import { smallPipeline } from '../helpers/small-pipeline.ts';

interface Summary {
  status: string;
  stages: Array<{ name: string; status: string; fingerprint: string; worker?: string }>;
  metrics: Record<string, number>;
}

let redis: TestRedis | undefined;
let workers: Worker[] = [];

test.after(async () => {
  await stopWorkers(workers);
  await redis?.stop();
});

test('TensorFlow stages on two workers: the same fingerprints and metrics as a local run', async () => {
  redis = await startTestRedis();
  const shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  workers = [startWorker('tf1', redis.url, shared), startWorker('tf2', redis.url, shared)];
  const images = path.join(mkdtempSync(path.join(os.tmpdir(), 'pipe-images-')), 'images');
  await writeImageFolder(images, { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
  await waitFor('both workers', () => workers.every((w) => /taking stage jobs/.test(w.output())));

  const here = project({ 'small.yaml': smallPipeline });
  const local = await pipe(here, ['run', 'small.yaml', '-p', `data=${images}`, '--json']);
  assert.is(local.exitCode, 0, local.stderr);

  const there = project({ 'small.yaml': smallPipeline });
  const remote = await pipe(there, ['run', 'small.yaml', '-p', `data=${images}`, '--queue', redis.url, '--cache', shared, '--json']);
  assert.is(remote.exitCode, 0, `${remote.stderr}\n${workers.map((w) => w.output()).join('\n')}`);

  const a = JSON.parse(local.stdout) as Summary;
  const b = JSON.parse(remote.stdout) as Summary;
  assert.ok(b.stages.every((s) => s.status === 'ran' && (s.worker === 'tf1' || s.worker === 'tf2')), JSON.stringify(b.stages));
  assert.equal(b.stages.map((s) => [s.name, s.fingerprint]), a.stages.map((s) => [s.name, s.fingerprint]));
  assert.ok(a.metrics['test_accuracy'] !== undefined);
  // Every learned number is equal; only speeds differ.
  const learned = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).filter(([k]) => !/per_second|duration/.test(k)));
  assert.ok(Object.keys(learned(a.metrics)).length >= 6, Object.keys(a.metrics).join(', '));
  assert.equal(learned(b.metrics), learned(a.metrics));
});

test.run();
