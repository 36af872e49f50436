// `pipe sweep` as MLflow records it, through the real CLI with command stages and a real MLflow
// server: each trial's run is timed as the trial (its own stages), not as the sweep.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Run } from '../../src/tracking/mlflow-client.ts';
import { pipe, project } from '../helpers/cli.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';

// `data` is shared by the trials (a second's sleep); each trial's own `tune` sleeps `lr` seconds.
const text = `name: timed
experiment: sweep-app
params:
  lr: 1
stages:
  data:
    run: "sleep 1; echo data > data.txt"
    outs: [data.txt]
  tune:
    run: "sleep \${params.lr}; echo '{\\"score\\": \${params.lr}}' > m-\${params.lr}.json"
    deps: [data.txt]
    outs: ["m-\${params.lr}.json"]
    metrics: ["m-\${params.lr}.json"]
sweep:
  grid:
    lr: [1, 2]
  objective: score
`;

let mlflow: TestMlflow;
let runs: Run[];

const tag = (run: Run, key: string) => (run.data.tags ?? []).find((t) => t.key === key)?.value;
const trialRun = (id: string) => runs.find((r) => tag(r, 'pipe.trial') === id);
const parentRun = () => runs.find((r) => tag(r, 'pipe.sweep') !== undefined && tag(r, 'mlflow.parentRunId') === undefined);

test.before(async () => {
  mlflow = await startTestMlflow();
  const dir = project({ 'p.yaml': text });
  const r = await pipe(dir, ['sweep', 'p.yaml', '--json'], { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  assert.is(r.exitCode, 0, r.stderr);
  const experiment = await mlflow.client.getExperimentByName('sweep-app');
  assert.ok(experiment);
  runs = (await mlflow.client.searchRuns({ experimentIds: [experiment.experiment_id] })).runs;
});

test.after(async () => {
  await mlflow?.dispose();
});

test('each trial run starts with its own stage and ends with its last one: its duration is its own', () => {
  const parent = parentRun();
  assert.ok(parent, 'the parent run');
  const sweepStart = parent.info.start_time!;
  for (const [id, seconds] of [['t1', 1], ['t2', 2]] as const) {
    const run = trialRun(id);
    assert.ok(run, `a run for ${id}`);
    assert.is(run.info.status, 'FINISHED');
    const start = run.info.start_time!;
    const end = run.info.end_time!;
    // The shared `data` (a second) ran before: the trial had not started.
    assert.ok(start - sweepStart >= 900, `${id} starts after the shared stage: ${start - sweepStart} ms after the sweep`);
    assert.ok(end <= parent.info.end_time!, `${id} ends within the sweep`);
    // Its duration is its `tune`'s (and the MLflow UI shows end_time − start_time).
    const tune = Number(tag(run, 'pipe.stage.tune.duration_s')) * 1000;
    assert.ok(tune >= seconds * 1000, `tune of ${id} slept ${seconds} s: ${tune} ms`);
    assert.ok(end - start >= tune - 50 && end - start <= tune + 700, `${id}: run ${end - start} ms, its tune ${tune} ms`);
    assert.match(tag(run, 'mlflow.note.content') ?? '', new RegExp(`succeeded in ${((end - start) / 1000).toFixed(1)} s`));
  }
});

test.run();
