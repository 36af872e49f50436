// The learning pipeline end to end through the real CLI, on generated images and a small random
// MobileNetV2 (alpha 0.35 at 96 px), tracked by a real MLflow server that the test starts:
// what MLflow holds equals what was trained; a fine_tune_at change re-runs only the fine-tuning
// part; the saved model predicts.
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';
import { smallPipeline as pipeline } from '../helpers/small-pipeline.ts';


interface Summary {
  status: string;
  stages: Array<{ name: string; status: string; fingerprint: string }>;
  metrics: Record<string, number>;
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

const statuses = (s: Summary) => Object.fromEntries(s.stages.map((x) => [x.name, x.status]));

test('a run trains, evaluates, and MLflow holds exactly what was trained', async () => {
  const r = await pipe(dir, ['run', 'small.yaml', '--json'], { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  assert.is(r.exitCode, 0, r.stderr);
  const summary = JSON.parse(r.stdout) as Summary;
  assert.ok(summary.stages.every((s) => s.status === 'ran'), JSON.stringify(statuses(summary)));
  assert.ok(summary.metrics['test_accuracy'] !== undefined);

  const experiment = await mlflow.client.getExperimentByName('small-e2e');
  assert.ok(experiment, 'experiment created');
  const { runs } = await mlflow.client.searchRuns({ experimentIds: [experiment.experiment_id] });
  assert.is(runs.length, 1);
  const run = runs[0]!;
  assert.is(run.info.status, 'FINISHED');
  const params = Object.fromEntries((run.data.params ?? []).map((p) => [p.key, p.value]));
  assert.is(params['fine_tune_at'], '100');
  assert.is(params['fine-tune.fine_tune_at'], '100');
  assert.is(params['features.alpha'], '0.35');
  const tags = Object.fromEntries((run.data.tags ?? []).map((t) => [t.key, t.value]));
  assert.is(tags['mlflow.source.name'], 'small.yaml');
  assert.match(tags['mlflow.note.content'] ?? '', /fine-tune/);

  // The epoch axis across both phases equals the stages' own histories.
  const entries = path.join(dir, 'runs', 'cache', 'entries');
  const fp = (name: string) => summary.stages.find((s) => s.name === name)?.fingerprint ?? '';
  const headHistory = JSON.parse(readFileSync(path.join(entries, fp('head'), 'out', 'history.json'), 'utf8')) as { epoch: number[]; loss: number[] };
  const fineHistory = JSON.parse(readFileSync(path.join(entries, fp('fine-tune'), 'out', 'history.json'), 'utf8')) as { epoch: number[]; loss: number[] };
  const loss = await mlflow.client.getMetricHistory(run.info.run_id, 'loss');
  const expected = [...headHistory.epoch.map((e, i) => [e, headHistory.loss[i]]), ...fineHistory.epoch.map((e, i) => [e, fineHistory.loss[i]])];
  assert.equal(
    loss.map((m) => [m.step, Number(m.value.toFixed(5))]).sort((a, b) => (a[0] as number) - (b[0] as number)),
    expected.map(([e, v]) => [e, Number((v as number).toFixed(5))]).sort((a, b) => (a[0] as number) - (b[0] as number)),
  );
  const testAccuracy = await mlflow.client.getMetricHistory(run.info.run_id, 'test_accuracy');
  assert.is(testAccuracy.length, 1);
  assert.ok(Math.abs((testAccuracy[0]?.value ?? -1) - (summary.metrics['test_accuracy'] ?? -2)) < 1e-9);

  const artifacts = (await mlflow.client.listArtifactsRecursive(run.info.run_id)).map((f) => f.path);
  for (const expectedPath of ['pipeline.yaml', 'log.txt', 'evaluate/plots/learning_curves.png', 'evaluate/plots/predictions.png', 'evaluate/plots/confusion_matrix.png', 'evaluate/model/model.json', 'augment/plots/augmentation.png', 'fetch/plots/samples.png']) {
    assert.ok(artifacts.includes(expectedPath), `artifact ${expectedPath} in ${artifacts.join(', ')}`);
  }
});

test('fine_tune_at changes re-run only the fine-tuning part; status names the param', async () => {
  const status = await pipe(dir, ['status', 'small.yaml', '-p', 'fine_tune_at=120']);
  assert.match(status.stdout, /fine-tune\s+will run\s+\w+\s+param fine_tune_at changed: 100 → 120/);
  assert.match(status.stdout, /features\s+cached/);
  assert.match(status.stdout, /head\s+cached/);
  const r = await pipe(dir, ['run', 'small.yaml', '-p', 'fine_tune_at=120', '--json']);
  assert.is(r.exitCode, 0, r.stderr);
  assert.equal(statuses(JSON.parse(r.stdout) as Summary), {
    fetch: 'cached', split: 'cached', augment: 'cached', features: 'cached', activations: 'ran', head: 'cached', 'fine-tune': 'ran', evaluate: 'ran',
  });
  // 100 and 101 share a block boundary: the activations are reused.
  const r101 = await pipe(dir, ['run', 'small.yaml', '-p', 'fine_tune_at=101', '--json']);
  const s101 = statuses(JSON.parse(r101.stdout) as Summary);
  assert.is(s101['activations'], 'cached');
  assert.is(s101['fine-tune'], 'ran');
});

test('pipe predict classifies images with the saved model', async () => {
  const r = await pipe(dir, ['run', 'small.yaml', '--json']);
  const summary = JSON.parse(r.stdout) as Summary;
  assert.ok(summary.stages.every((s) => s.status === 'cached'));
  const evaluate = summary.stages.find((s) => s.name === 'evaluate')?.fingerprint ?? '';
  const model = path.join(dir, 'runs', 'cache', 'entries', evaluate, 'out');
  writeFileSync(path.join(dir, 'broken.jpg'), 'not an image');
  const p = await pipe(dir, ['predict', model, 'images/cats/cats.0.jpg', 'images/dogs/dogs.1.jpg', 'broken.jpg']);
  assert.is(p.exitCode, 1, 'a bad image makes the exit code 1');
  const lines = p.stdout.trim().split('\n');
  assert.match(lines[0] ?? '', /^images\/cats\/cats\.0\.jpg\t(cats|dogs)\t0\.\d+/);
  assert.match(lines[1] ?? '', /^images\/dogs\/dogs\.1\.jpg\t(cats|dogs)\t0\.\d+/);
  assert.is(lines.length, 2, 'only the good images on stdout');
  assert.match(p.stderr, /broken\.jpg/);
  const missing = await pipe(dir, ['predict', path.join(dir, 'nowhere'), 'images/cats/cats.0.jpg']);
  assert.is(missing.exitCode, 2, 'a model directory that is not one is invalid input');
  assert.match(missing.stderr, /^pipe predict: no saved model at .*nowhere/m);
});

interface SweepResult {
  trials: Array<{ id: string; values: Record<string, unknown>; status: string; metrics: Record<string, number> }>;
  stages: Array<{ name: string; status: string }>;
}

test('a sweep of the learning pipeline runs shared stages once, nests trials under a parent run, and resumes', async () => {
  const sweepDir = project({ 'small.yaml': pipeline.replace('experiment: small-e2e', 'experiment: small-sweep') });
  await writeImageFolder(path.join(sweepDir, 'images'), { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
  const env = { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri };
  const r = await pipe(sweepDir, ['sweep', 'small.yaml', '-S', 'fine_tune_at=100,120', '--json'], env);
  assert.is(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as SweepResult;
  assert.is(result.trials.length, 2);
  assert.ok(result.trials.every((t) => t.status === 'succeeded' && typeof t.metrics['test_accuracy'] === 'number'));
  const ran = (prefix: string) => result.stages.filter((s) => s.name === prefix || s.name.startsWith(`${prefix}[`)).map((s) => s.status);
  // Shared: one execution each. Per trial: activations (different boundaries), fine-tune, evaluate.
  for (const shared of ['fetch', 'split', 'augment', 'features', 'head']) assert.equal(ran(shared), ['ran'], shared);
  for (const perTrial of ['activations', 'fine-tune', 'evaluate']) assert.equal(ran(perTrial), ['ran', 'ran'], perTrial);
  assert.match(r.stderr, /trial\s+fine_tune_at\s+status\s+test_accuracy/);

  const experiment = await mlflow.client.getExperimentByName('small-sweep');
  assert.ok(experiment);
  const { runs } = await mlflow.client.searchRuns({ experimentIds: [experiment.experiment_id] });
  assert.is(runs.length, 3, 'a parent run and two trial runs');
  const tag = (run: (typeof runs)[number], key: string) => (run.data.tags ?? []).find((t) => t.key === key)?.value;
  const parent = runs.find((run) => tag(run, 'pipe.sweep') !== undefined);
  assert.ok(parent, 'the parent run');
  const children = runs.filter((run) => run !== parent);
  assert.ok(children.every((run) => tag(run, 'mlflow.parentRunId') === parent.info.run_id));
  assert.ok(children.every((run) => run.info.status === 'FINISHED'));
  const best = await mlflow.client.getMetricHistory(parent.info.run_id, 'best.test_accuracy');
  assert.is(best.length, 1);
  const parentArtifacts = (await mlflow.client.listArtifactsRecursive(parent.info.run_id)).map((f) => f.path);
  assert.ok(parentArtifacts.includes('trials.json') && parentArtifacts.includes('objective.png'), parentArtifacts.join(', '));

  const again = await pipe(sweepDir, ['sweep', 'small.yaml', '-S', 'fine_tune_at=100,120', '--json'], env);
  assert.ok((JSON.parse(again.stdout) as SweepResult).stages.every((s) => s.status === 'cached'));
  const more = await pipe(sweepDir, ['sweep', 'small.yaml', '-S', 'fine_tune_at=100,120,101', '--json'], env);
  const moreStages = (JSON.parse(more.stdout) as SweepResult).stages;
  // 101 shares 100's block boundary: only its fine-tune and evaluate run.
  assert.equal(moreStages.filter((s) => s.status === 'ran').map((s) => s.name.replace(/\[.*/, '')).sort(), ['evaluate', 'fine-tune']);
});

test.run();
