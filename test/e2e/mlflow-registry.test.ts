// The learning pipeline's model through MLflow, by the real CLI against a real server: `pipe run
// --register NAME --alias A` versions the run's LoggedModel; the REST API finds it by name and
// version and by alias; `pipe predict models:/…` loads it through the server and classifies as the
// local model does; `pipe register RUN NAME` and `pipe register MODEL NAME` add versions.

import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';
import { smallPipeline } from '../helpers/small-pipeline.ts';

let mlflow: TestMlflow;
let dir: string;
let env: Record<string, string>;

test.before(async () => {
  mlflow = await startTestMlflow();
  dir = project({ 'small.yaml': smallPipeline.replace('experiment: small-e2e', 'experiment: small-registry') });
  await writeImageFolder(path.join(dir, 'images'), { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
  env = { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri };
});

test.after(async () => {
  await mlflow?.dispose();
});

const images = ['images/cats/cats.0.jpg', 'images/dogs/dogs.1.jpg'];

test('run --register, REST by name/version and alias, predict models:/, register RUN and MODEL', async () => {
  const r = await pipe(dir, ['run', 'small.yaml', '--json', '--register', 'cats-vs-dogs', '--alias', 'champion'], env);
  assert.is(r.exitCode, 0, r.stderr);
  const summary = JSON.parse(r.stdout) as { runId: string; stages: Array<{ name: string; fingerprint: string }> };

  const byAlias = await mlflow.client.getModelVersionByAlias('cats-vs-dogs', 'champion');
  const byVersion = await mlflow.client.getModelVersion('cats-vs-dogs', '1');
  assert.is(byAlias.version, '1');
  assert.is(byVersion.source, byAlias.source);
  const modelId = /^models:\/(m-[0-9a-f]+)$/.exec(byVersion.source)?.[1];
  assert.ok(modelId, byVersion.source);
  const model = await mlflow.client.getLoggedModel(modelId!);
  assert.is(model.info.status, 'LOGGED_MODEL_READY');
  assert.is(model.info.source_run_id, byVersion.run_id);

  // The registered model classifies exactly as the evaluate stage's saved model.
  const evaluate = summary.stages.find((s) => s.name === 'evaluate')!.fingerprint;
  const local = await pipe(dir, ['predict', path.join(dir, 'runs', 'cache', 'entries', evaluate, 'out'), ...images]);
  assert.is(local.exitCode, 0, local.stderr);
  for (const uri of ['models:/cats-vs-dogs@champion', 'models:/cats-vs-dogs/1', `models:/${modelId}`]) {
    const p = await pipe(dir, ['predict', uri, ...images], env);
    assert.is(p.exitCode, 0, `${uri}: ${p.stderr}`);
    assert.is(p.stdout, local.stdout, uri);
  }

  // pipe register RUN NAME: through the run's journal.
  const byRun = await pipe(dir, ['register', summary.runId, 'cats-vs-dogs', '--alias', 'challenger'], env);
  assert.is(byRun.exitCode, 0, byRun.stderr);
  assert.match(byRun.stdout, 'registered cats-vs-dogs version 1: models:/cats-vs-dogs/1 models:/cats-vs-dogs@challenger');
  // pipe register MODEL NAME: on the server.
  const byModel = await pipe(dir, ['register', modelId!, 'other-name'], env);
  assert.is(byModel.exitCode, 0, byModel.stderr);
  assert.match(byModel.stdout, 'registered other-name version 1: models:/other-name/1');
  assert.is((await mlflow.client.getModelVersionByAlias('cats-vs-dogs', 'challenger')).version, '1');

  const missing = await pipe(dir, ['predict', 'models:/cats-vs-dogs@nobody', ...images], env);
  assert.is(missing.exitCode, 2);
  assert.match(missing.stderr, /^pipe predict: models:\/cats-vs-dogs@nobody: not found on http:\/\/127\.0\.0\.1:\d+ \([A-Z_]+\)/m);
  const bad = await pipe(dir, ['register', summary.runId, 'a/b'], env);
  assert.match(bad.stderr, /model name "a\/b": expected a name without/);
});

test('sweep --register: the best trial\'s model is versioned; the parent links the compare view of the trials', async () => {
  const r = await pipe(dir, ['sweep', 'small.yaml', '-S', 'fine_tune_at=100,120', '--objective', 'val_accuracy', '--register', 'sweep-best', '--alias', 'best', '--json'], env);
  assert.is(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /registered sweep-best version 1: models:\/sweep-best\/1 models:\/sweep-best@best/);
  const version = await mlflow.client.getModelVersionByAlias('sweep-best', 'best');
  const trialRun = await mlflow.client.getRun(version.run_id!);
  const tag = (run: { data: { tags?: Array<{ key: string; value: string }> } }, key: string) => run.data.tags?.find((t) => t.key === key)?.value;
  const parent = await mlflow.client.getRun(tag(trialRun, 'mlflow.parentRunId')!);
  assert.ok(tag(parent, 'pipe.best_trial')!.startsWith(`${tag(trialRun, 'pipe.trial')} `), 'the best trial was registered');
  // Each trial carries the swept param and the objective, so the compare view lines them up.
  const compare = tag(parent, 'pipe.compare_url')!;
  const ids = JSON.parse(decodeURIComponent(/runs=([^&]+)/.exec(compare)![1]!)) as string[];
  assert.is(ids.length, 2);
  for (const id of ids) {
    const trial = await mlflow.client.getRun(id);
    assert.ok(trial.data.params?.some((p) => p.key === 'fine_tune_at'));
    assert.ok(trial.data.metrics?.some((m) => m.key === 'val_accuracy'));
  }
  assert.match(tag(parent, 'mlflow.note.content') ?? '', '[Compare the trials](');
});

test.run();
