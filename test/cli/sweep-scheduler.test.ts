// sweep.scheduler (early stopping) as a pipeline user writes it: every mistake is a located error,
// all at once, exit 2. (The scheduler at work, on the learning stages: test/e2e/sweep-early-stopping.test.ts.)
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { smallEarlyStoppingSweep } from '../helpers/small-pipeline.ts';

const text = (scheduler: string) => `name: sched
params:
  lr: 0.1
stages:
  data:
    run: "echo data > data.txt"
    outs: [data.txt]
sweep:
  grid:
    lr: [0.1, 0.2]
  scheduler: ${scheduler}
`;

test('the schema checks the scheduler: type, numbers, unknown fields, at their line', async () => {
  const dir = project({ 'p.yaml': text('{type: hyperband, grace_period: 0, reduction_factor: 1, patience: 3}') });
  const r = await pipe(dir, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(r.exitCode, 2, r.stderr);
  assert.ok(r.stderr.includes('p.yaml:11:21: error: sweep.scheduler.type: expected one of "asha", "median", got "hyperband"'), r.stderr);
  assert.ok(r.stderr.includes('p.yaml:11:46: error: sweep.scheduler.grace_period: expected a value >= 1, got 0'), r.stderr);
  assert.ok(r.stderr.includes('p.yaml:11:67: error: sweep.scheduler.reduction_factor: expected a value > 1, got 1'), r.stderr);
  assert.match(r.stderr, /p\.yaml:11:70: error: sweep\.scheduler\.patience: unknown field 'patience'/);
});

test('a scheduler needs a learning stage; settings of the other rule and unknown metrics are errors', async () => {
  const none = project({ 'p.yaml': text('{type: asha}') });
  const r = await pipe(none, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(r.exitCode, 2, r.stderr);
  assert.ok(r.stderr.includes('p.yaml:11:15: error: sweep.scheduler.type: early stopping watches the epochs of a fine-tune or train-head stage, and the pipeline has none'), r.stderr);

  const command = project({ 'p.yaml': text('{type: median, stage: data, reduction_factor: 3, metric: test_accuracy, pause: true}') });
  const c = await pipe(command, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(c.exitCode, 2, c.stderr);
  assert.ok(c.stderr.includes("p.yaml:11:36: error: sweep.scheduler.stage: stage 'data' (a command stage) reports no epochs: early stopping watches a fine-tune or train-head stage"), c.stderr);
  assert.ok(c.stderr.includes('sweep.scheduler.metric: \'test_accuracy\' is not reported per epoch (expected one of: val_accuracy, val_loss, accuracy, loss)'), c.stderr);
  assert.ok(c.stderr.includes('sweep.scheduler.reduction_factor: reduction_factor is for type: asha (the median rule has none)'), c.stderr);
  assert.ok(c.stderr.includes('sweep.scheduler.pause: pause is for type: asha (the median rule stops trials)'), c.stderr);
  assert.match(c.stderr, /4 problems found/);

  const missing = project({ 'p.yaml': text('{type: asha, stage: nope}') });
  const m = await pipe(missing, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(m.exitCode, 2, m.stderr);
  assert.ok(m.stderr.includes("p.yaml:11:34: error: sweep.scheduler.stage: no stage 'nope' in the pipeline (stages: data)"), m.stderr);
});

test('the defaults as Ray has them, and the watched stage found by its kind (--dry-run)', async () => {
  const median = smallEarlyStoppingSweep.replace(/  scheduler: .*\n/, '  scheduler: {type: median}\n');
  const dir = project({ 'small.yaml': median });
  mkdirSync(path.join(dir, 'images'));
  const r = await pipe(dir, ['sweep', 'small.yaml', '--dry-run']);
  assert.is(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /early stopping: median on val_accuracy \(max\) after each epoch of stage fine-tune; grace_period 1, min_samples_required 3\n/);
  writeFileSync(path.join(dir, 'small.yaml'), median.replace('{type: median}', '{type: asha, metric: loss, stage: head, max_t: 2}'));
  const a = await pipe(dir, ['sweep', 'small.yaml', '--dry-run']);
  assert.is(a.exitCode, 0, a.stderr);
  assert.match(a.stdout, /early stopping: asha on loss \(min\) after each epoch of stage head; grace_period 1, reduction_factor 4, max_t 2\n/);
  writeFileSync(path.join(dir, 'small.yaml'), median.replace('{type: median}', '{type: asha, pause: true}'));
  const p = await pipe(dir, ['sweep', 'small.yaml', '--dry-run']);
  assert.is(p.exitCode, 0, p.stderr);
  assert.match(p.stdout, /early stopping: asha on val_accuracy \(max\) after each epoch of stage fine-tune; grace_period 1, reduction_factor 4, pause true\n/);
});

test.run();
