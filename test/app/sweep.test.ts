// `pipe sweep` as MLflow records it, through the real CLI with command stages and a real MLflow
// server: each trial's run is timed as the trial (its own stages), not as the sweep; the parent
// run's link to the compare view of its trials still opens it after the server moved to another
// port (checked in MLflow's UI with headless Chromium when there is one).
import { existsSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Run } from '../../src/tracking/mlflow-client.ts';
import { withBrowserPage } from '../../scripts/mlflow-browser.ts';
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
/** The same store served again on another port (the last test). */
let moved: TestMlflow | undefined;
let experimentId: string;
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
  experimentId = experiment.experiment_id;
  runs = (await mlflow.client.searchRuns({ experimentIds: [experiment.experiment_id] })).runs;
});

test.after(async () => {
  await moved?.stop();
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

test('the parent run links the compare view of its trials relative to the server; moved to another port, the link opens it', async () => {
  const parent = parentRun();
  assert.ok(parent, 'the parent run');
  const note = tag(parent, 'mlflow.note.content') ?? '';
  const link = /\[Compare the trials\]\(([^)\s]+)\)/.exec(note)?.[1] ?? '';
  assert.match(link, /^#\/compare-runs\?runs=/, note);
  assert.is(tag(parent, 'pipe.compare_url'), link);
  assert.not.match(note, /https?:\/\//, 'no server named in the description');
  const ids = (JSON.parse(decodeURIComponent(/runs=([^&]+)/.exec(link)?.[1] ?? '[]')) as string[]).sort();
  assert.equal(ids, [trialRun('t1')?.info.run_id, trialRun('t2')?.info.run_id].sort());

  // As after a restart of the embedded server: the same store, another port.
  await mlflow.stop();
  moved = await startTestMlflow({ dir: mlflow.dir });
  assert.is.not(moved.port, mlflow.port);
  const chromium = process.env['CHROMIUM'] ?? '/usr/bin/chromium';
  if (!existsSync(chromium)) {
    console.log(`(no ${chromium}: the link is not followed in MLflow's UI)`);
    return;
  }
  const server = moved;
  await withBrowserPage(async (page) => {
    await page.goto(`${server.uri}/#/experiments/${experimentId}/runs/${parent.info.run_id}`, { waitUntil: 'domcontentloaded', timeout: 120_000 });
    const anchor = page.getByRole('link', { name: 'Compare the trials' }).first();
    await anchor.waitFor({ timeout: 120_000 });
    const href = await anchor.evaluate((a) => (a as HTMLAnchorElement).href);
    assert.ok(href.startsWith(`${server.uri}/#/compare-runs?runs=`), `the link resolves on the server that shows it: ${href}`);
    // Followed as a user does: the description expanded (MLflow shows its first lines), the link
    // clicked (MLflow opens description links in a new tab).
    await page.getByRole('button', { name: 'Expand description' }).click({ timeout: 5000 }).catch(() => undefined);
    const opened = page.context().waitForEvent('page', { timeout: 10_000 }).catch(() => page);
    await anchor.click();
    const view = await opened;
    await view.getByText('Parallel Coordinates Plot').first().waitFor({ timeout: 120_000 });
    assert.ok(view.url().startsWith(`${server.uri}/#/compare-runs?`), view.url());
    const text = await view.evaluate(() => document.body.innerText);
    for (const id of ['t1', 't2']) assert.ok(text.includes(trialRun(id)?.info.run_name ?? '?'), `the compare view shows ${id}'s run`);
  });
});

test.run();
