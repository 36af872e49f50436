// Early stopping of sweep trials on the learning pipeline, through the real CLI, on generated
// images and a small random MobileNetV2, tracked by a real MLflow server: ASHA stops the trial whose
// fine-tuning diverges after its first epoch; its result is kept apart from a full one; its
// evaluation does not run; MLflow shows it FINISHED with where it stopped and its curves up to there.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project, startPipe } from '../helpers/cli.ts';
import { waitFor } from '../helpers/processes.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';
import { smallEarlyStoppingSweep } from '../helpers/small-pipeline.ts';

const pipeline = smallEarlyStoppingSweep;

interface SweepJson {
  sweep: string;
  scheduler: Record<string, unknown>;
  trials: Array<{ id: string; values: { lr: number }; status: string; pruned?: { stage: string; epoch: number; of: number }; metrics: Record<string, number> }>;
  stages: Array<{ name: string; status: string; fingerprint: string; error?: string; afterPruned?: boolean; pruned?: { epoch: number; of: number } }>;
}

let mlflow: TestMlflow;
let dir: string;

test.before(async () => {
  mlflow = await startTestMlflow();
  dir = project({ 'small.yaml': pipeline });
  await writeImageFolder(path.join(dir, 'images'), { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
});

test.after(async () => {
  await mlflow?.dispose();
});

const stage = (r: SweepJson, name: string) => r.stages.find((s) => s.name === name);

const FINE_TUNE_FILES = ['head.bin', 'base/weights.bin', 'history.json'];

/** The fine-tune entry's files equal those of the same stage computed from scratch (`pipe run -p lr=… --force fine-tune`). */
async function assertSameAsForcedRun(dir: string, lr: string, entry: string): Promise<void> {
  const bytes = FINE_TUNE_FILES.map((f) => readFileSync(path.join(entry, f)));
  const forced = await pipe(dir, ['run', 'small.yaml', '-p', `lr=${lr}`, '--force', 'fine-tune']);
  assert.is(forced.exitCode, 0, forced.stderr);
  FINE_TUNE_FILES.forEach((f, i) => assert.ok(readFileSync(path.join(entry, f)).equals(bytes[i]!), `${f} differs from the run computed in one go`));
}

test('asha stops the lagging trial after its first epoch; its evaluation never runs; MLflow records where', async () => {
  assert.ok(pipeline.includes('learning_rate: "${params.lr}"'), 'the fixture sweeps the fine-tuning rate');
  const dry = await pipe(dir, ['sweep', 'small.yaml', '--dry-run']);
  assert.match(dry.stdout, /early stopping: asha on val_loss \(min\) after each epoch of stage fine-tune; grace_period 1, reduction_factor 2/);

  const r = await pipe(dir, ['sweep', 'small.yaml', '--json'], { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  assert.is(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as SweepJson;
  assert.equal(result.scheduler, { type: 'asha', metric: 'val_loss', mode: 'min', stage: 'fine-tune', grace_period: 1, reduction_factor: 2 });
  const byId = Object.fromEntries(result.trials.map((t) => [t.id, t]));
  assert.is(byId['t1']?.status, 'succeeded');
  assert.ok(byId['t1']?.metrics['test_accuracy'] !== undefined);
  assert.is(byId['t2']?.status, 'pruned');
  assert.equal(byId['t2']?.pruned, { stage: 'fine-tune', epoch: 1, of: 3 });
  assert.is(byId['t2']?.metrics['test_accuracy'], undefined, 'a pruned trial is not evaluated');
  assert.ok((byId['t2']?.metrics['val_loss'] ?? 0) > (byId['t1']?.metrics['val_loss'] ?? Infinity) || Number.isNaN(byId['t2']?.metrics['val_loss']));
  assert.match(r.stderr, /t2\s+30\s+pruned@1/);

  const pruned = stage(result, 'fine-tune[lr=30]');
  assert.is(pruned?.status, 'pruned');
  assert.equal(pruned?.pruned, { epoch: 1, of: 3 });
  const held = stage(result, 'evaluate[lr=30]');
  assert.is(held?.status, 'skipped');
  assert.is(held?.afterPruned, true);
  assert.is(held?.error, "trial pruned: stage 'fine-tune[lr=30]' stopped after epoch 1 of 3");
  assert.is(stage(result, 'fine-tune[lr=0.0001]')?.status, 'ran');

  // The pruned result is kept apart: its fingerprint has no entry; the pruned one holds one epoch.
  const entries = path.join(dir, 'runs', 'cache', 'entries');
  const fp = pruned?.fingerprint ?? '';
  assert.not.ok(existsSync(path.join(entries, fp)), 'no full entry for a pruned stage');
  const prunedDir = path.join(entries, `${fp}.pruned-1`);
  const history = JSON.parse(readFileSync(path.join(prunedDir, 'out', 'history.json'), 'utf8')) as { epoch: number[] };
  assert.equal(history.epoch, [2], 'one epoch, numbered after the head’s two');
  const meta = JSON.parse(readFileSync(path.join(prunedDir, 'out', 'meta.json'), 'utf8')) as { pruned: unknown };
  assert.equal(meta.pruned, { epoch: 1, of: 3 });
  const full = JSON.parse(readFileSync(path.join(entries, stage(result, 'fine-tune[lr=0.0001]')?.fingerprint ?? '', 'out', 'history.json'), 'utf8')) as { epoch: number[] };
  assert.equal(full.epoch, [2, 3, 4]);

  // MLflow: the pruned trial FINISHED, tagged with where it stopped, its curves up to there.
  const experiment = await mlflow.client.getExperimentByName('small-e2e');
  assert.ok(experiment);
  const { runs } = await mlflow.client.searchRuns({ experimentIds: [experiment.experiment_id] });
  const tag = (run: (typeof runs)[number], key: string) => (run.data.tags ?? []).find((t) => t.key === key)?.value;
  const trialRun = (id: string) => runs.find((x) => tag(x, 'pipe.trial') === id);
  const t2 = trialRun('t2');
  const t1 = trialRun('t1');
  assert.ok(t1 && t2, 'a run per trial');
  assert.is(t2.info.status, 'FINISHED');
  assert.is(tag(t2, 'pipe.trial_status'), 'pruned');
  assert.is(tag(t2, 'pipe.pruned_at_epoch'), '1');
  assert.is(tag(t2, 'pipe.pruned_stage'), 'fine-tune');
  assert.is(tag(t2, 'pipe.stage.fine-tune.status'), 'pruned');
  assert.match(tag(t2, 'mlflow.note.content') ?? '', /stopped early by the sweep's scheduler \(`fine-tune` after epoch 1 of 3\)/);
  assert.is(tag(t1, 'pipe.trial_status'), undefined);
  const steps = async (run: typeof t1) => (await mlflow.client.getMetricHistory(run.info.run_id, 'val_loss')).map((m) => m.step).sort((a, b) => a - b);
  assert.equal(await steps(t2), [0, 1, 2], 'the head’s two epochs and the one fine-tuning epoch');
  assert.equal(await steps(t1), [0, 1, 2, 3, 4]);
  const parent = runs.find((x) => tag(x, 'pipe.sweep') !== undefined && tag(x, 'mlflow.parentRunId') === undefined);
  assert.ok(parent);
  assert.is(parent.info.status, 'FINISHED', 'a pruned trial fails nothing');
  for (const trial of [t1, t2]) {
    // Each trial's run is timed as the trial: from its own fine-tune (after the shared head) to its last stage.
    const { start_time: start = 0, end_time: end = 0 } = trial.info;
    const seconds = (stageName: string) => Number(tag(trial, `pipe.stage.${stageName}.duration_s`)) * 1000;
    assert.ok(start - (parent.info.start_time ?? 0) >= seconds('head'), `${tag(trial, 'pipe.trial')} starts after the shared head`);
    assert.ok(end - start >= seconds('fine-tune') - 50 && end <= (parent.info.end_time ?? 0), `${tag(trial, 'pipe.trial')}: ${end - start} ms`);
    // Both trials logged the data they share, each its own inputs (no lost race on the dataset rows).
    const inputs = ((await mlflow.client.getRun(trial.info.run_id)) as unknown as { inputs?: { dataset_inputs?: Array<{ dataset: { name: string } }> } }).inputs?.dataset_inputs ?? [];
    assert.equal(inputs.map((d) => d.dataset.name).sort(), ['images', 'images/test', 'images/train', 'images/validation']);
  }
  const params = Object.fromEntries((parent.data.params ?? []).map((p) => [p.key, p.value]));
  assert.equal(
    [params['sweep.scheduler.type'], params['sweep.scheduler.metric'], params['sweep.scheduler.mode'], params['sweep.scheduler.grace_period'], params['sweep.scheduler.reduction_factor'], params['sweep.lr']],
    ['asha', 'val_loss', 'min', '1', '2', '[0.0001,30]'],
  );
  assert.match(tag(parent, 'mlflow.note.content') ?? '', /Early stopping: \*\*asha\*\* on val_loss \(min\).*1 of 2 trials stopped early \(t2 @1\)/);
  const artifacts = (await mlflow.client.listArtifacts(parent.info.run_id)).map((f) => f.path);
  assert.ok(artifacts.includes('curves.png') && artifacts.includes('trials.json'), artifacts.join(', '));
  const sweepDir = path.join(dir, 'runs', 'small', result.sweep);
  const trialsJson = JSON.parse(readFileSync(path.join(sweepDir, 'trials.json'), 'utf8')) as Array<{ id: string; curve?: number[] }>;
  assert.is(trialsJson.find((t) => t.id === 't2')?.curve?.length, 1, 'the pruned trial’s curve ends at epoch 1');
  assert.is(trialsJson.find((t) => t.id === 't1')?.curve?.length, 3);
  assert.ok(existsSync(path.join(sweepDir, 'curves.png')));
});

test('again: the complete trial comes from the cache and still counts; the pruned one is pruned again, never taken as complete', async () => {
  const r = await pipe(dir, ['sweep', 'small.yaml', '--json']);
  assert.is(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as SweepJson;
  assert.is(stage(result, 'fine-tune[lr=0.0001]')?.status, 'cached');
  assert.is(stage(result, 'evaluate[lr=0.0001]')?.status, 'cached');
  const again = result.stages.find((s) => s.name === 'fine-tune[lr=30]') as { status: string; summary: Record<string, unknown> } | undefined;
  assert.is(again?.status, 'pruned', 'compared with the cached trial’s epochs');
  assert.is(again?.summary['resumed_from_epoch'], 1, 'from its checkpoint: judged again without training');
  assert.equal(result.trials.find((t) => t.id === 't2')?.pruned, { stage: 'fine-tune', epoch: 1, of: 3 });
});

test('promoted: without the scheduler the pruned trial continues from its checkpoint, as if it had never stopped', async () => {
  const plain = pipeline.replace(/  scheduler: .*\n/, '');
  writeFileSync(path.join(dir, 'small.yaml'), plain);
  const r = await pipe(dir, ['sweep', 'small.yaml', '--json']);
  assert.is(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as SweepJson & { stages: Array<{ summary: Record<string, unknown> }> };
  assert.ok(result.trials.every((t) => t.status === 'succeeded'), JSON.stringify(result.trials));
  const promoted = result.stages.find((s) => s.name === 'fine-tune[lr=30]') as (SweepJson['stages'][number] & { summary: Record<string, unknown> }) | undefined;
  assert.is(promoted?.status, 'ran');
  assert.is(promoted?.summary['resumed_from_epoch'], 1);
  assert.is(stage(result, 'evaluate[lr=30]')?.status, 'ran');
  const cache = path.join(dir, 'runs', 'cache');
  const entry = path.join(cache, 'entries', promoted?.fingerprint ?? '', 'out');
  assert.equal((JSON.parse(readFileSync(path.join(entry, 'history.json'), 'utf8')) as { epoch: number[] }).epoch, [2, 3, 4]);
  assert.not.ok(existsSync(path.join(cache, 'checkpoints', promoted?.fingerprint ?? '')), 'complete: its checkpoints are removed');

  // The same stage computed from scratch (no checkpoint left) gives the same bytes.
  const resumedFiles = ['head.bin', 'base/weights.bin', 'history.json'].map((f) => readFileSync(path.join(entry, f)));
  const forced = await pipe(dir, ['run', 'small.yaml', '-p', 'lr=30', '--force', 'fine-tune', '--json']);
  assert.is(forced.exitCode, 0, forced.stderr);
  const fineTune = (JSON.parse(forced.stdout) as { stages: Array<{ name: string; status: string; fingerprint: string; summary: Record<string, unknown> }> }).stages.find((s) => s.name === 'fine-tune');
  assert.is(fineTune?.fingerprint, promoted?.fingerprint);
  assert.is(fineTune?.summary['resumed_from_epoch'], undefined, 'from epoch 0');
  ['head.bin', 'base/weights.bin', 'history.json'].forEach((f, i) => assert.ok(readFileSync(path.join(entry, f)).equals(resumedFiles[i]!), `${f} differs from the resumed run's`));
});

test('a sweep killed in the middle of a watched stage resumes it from its last checkpoint', async () => {
  // A third trial, and a grace period as long as the training: checkpoints, but nobody is stopped.
  const text = pipeline.replace('lr: [0.0001, 30]', 'lr: [0.0001, 30, 0.0002]').replace('grace_period: 1', 'grace_period: 3');
  writeFileSync(path.join(dir, 'small.yaml'), text);
  const checkpoints = path.join(dir, 'runs', 'cache', 'checkpoints');
  const epochDirs = () => (existsSync(checkpoints) ? readdirSync(checkpoints).flatMap((fp) => readdirSync(path.join(checkpoints, fp)).filter((n) => n.startsWith('epoch-'))) : []);
  assert.equal(epochDirs(), []);
  const run = startPipe(dir, ['sweep', 'small.yaml']);
  assert.ok(await waitFor(() => epochDirs().length > 0, 60_000), 'a checkpoint after the first epoch');
  run.kill('SIGTERM');
  const killed = await run;
  assert.is(killed.exitCode, 143, String(killed.stderr));

  const r = await pipe(dir, ['sweep', 'small.yaml', '--json']);
  assert.is(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as { stages: Array<{ name: string; status: string; fingerprint: string; summary: Record<string, unknown> }> };
  const resumed = result.stages.find((s) => s.name === 'fine-tune[lr=0.0002]');
  assert.is(resumed?.status, 'ran');
  assert.ok(Number(resumed?.summary['resumed_from_epoch']) >= 1, JSON.stringify(resumed?.summary));
  await assertSameAsForcedRun(dir, '0.0002', path.join(dir, 'runs', 'cache', 'entries', resumed?.fingerprint ?? '', 'out'));
});

test('asha with pause: trials pause at their rung and the promoted ones resume from their checkpoints; one trains to the end, bit-identical to a straight run', async () => {
  // Its own project: no trial comes from the cache. lr 0.0001 learns; the others diverge.
  const text = pipeline.replace('lr: [0.0001, 30]', 'lr: [0.0001, 30, 10, 20]').replace('reduction_factor: 2}', 'reduction_factor: 2, pause: true}');
  const own = project({ 'small.yaml': text });
  await writeImageFolder(path.join(own, 'images'), { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
  const r = await pipe(own, ['sweep', 'small.yaml', '--json'], { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  assert.is(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as SweepJson & { stages: Array<{ summary: Record<string, unknown> }> };
  assert.equal(result.scheduler['pause'], true);
  // Rungs at epochs 1 and 2 of 3; floor(4/2) = 2 trials go past rung 1, one past rung 2.
  const statuses = result.trials.map((t) => (t.pruned ? `pruned@${t.pruned.epoch}` : t.status)).sort();
  assert.equal(statuses, ['pruned@1', 'pruned@1', 'pruned@2', 'succeeded'], JSON.stringify(result.trials));
  const winner = result.trials.find((t) => t.status === 'succeeded');
  assert.is(winner?.id, 't1', 'the trial that learns');
  assert.ok(winner?.metrics['test_accuracy'] !== undefined, 'evaluated');
  const fineTune = result.stages.find((s) => s.name === 'fine-tune[lr=0.0001]') as (SweepJson['stages'][number] & { summary: Record<string, unknown> }) | undefined;
  assert.is(fineTune?.status, 'ran');
  assert.ok(Number(fineTune?.summary['resumed_from_epoch']) >= 1, 'paused at rung 1 (alone there), promoted, resumed');
  assert.match(r.stderr, /fine-tune\[lr=0\.0001\]: paused after epoch 1 of 3/);
  assert.match(r.stderr, /fine-tune\[lr=0\.0001\]: promoted: resumes from its checkpoint after epoch 1/);
  assert.match(r.stderr, /not promoted: ends after epoch/);

  // MLflow: the resumed trial's curves hold each epoch once (the replayed epoch is not logged twice).
  const experiment = await mlflow.client.getExperimentByName('small-e2e');
  const { runs } = await mlflow.client.searchRuns({ experimentIds: [experiment!.experiment_id], filter: `tags.\`pipe.sweep_id\` = '${result.sweep}'` });
  const t1 = runs.find((x) => (x.data.tags ?? []).some((t) => t.key === 'pipe.trial' && t.value === 't1'));
  assert.ok(t1, 'a run for t1');
  const history = await mlflow.client.getMetricHistory(t1.info.run_id, 'val_loss');
  assert.equal(history.map((m) => m.step).sort((a, b) => a - b), [0, 1, 2, 3, 4], 'two head epochs, three fine-tuning epochs, once each');

  // Resumed twice or not, the same bytes as the stage computed in one go.
  await assertSameAsForcedRun(own, '0.0001', path.join(own, 'runs', 'cache', 'entries', fineTune?.fingerprint ?? '', 'out'));
});

test.run();
