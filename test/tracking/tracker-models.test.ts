// What a run of the learning pipeline records beyond metrics, against a real MLflow server: its
// datasets (fetch and split), its final model as a LoggedModel with the test metrics linked to it,
// a Model Registry version with `--register`; and all of it through the journal when the server was
// down for the whole run.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { RunStartEvent, StageEndEvent } from '../../src/core/events.ts';
import { syncCommand } from '../../src/app/sync.ts';
import { Journal } from '../../src/tracking/journal.ts';
import type { DatasetInput, LoggedModel, Run } from '../../src/tracking/mlflow-client.ts';
import { parseNvidiaSmi, treeTicksSince } from '../../src/tracking/system-metrics.ts';
import { createTracker } from '../../src/tracking/tracker.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';

let mlflow: TestMlflow;
let projectDir: string;
const T0 = Date.UTC(2026, 0, 2, 12, 0, 0);

test.before(async () => {
  mlflow = await startTestMlflow();
  projectDir = mkdtempSync(join(tmpdir(), 'pipe-tracker-models-'));
});

test.after(async () => {
  await mlflow?.dispose();
  if (projectDir) rmSync(projectDir, { recursive: true, force: true });
});

const classNames = ['cats', 'dogs'];

function writeSet(dir: string, name: string, labels: number[]): void {
  const meta = { count: labels.length, height: 2, width: 2, channels: 3, views: 1, classNames, labels, files: labels.map((l, i) => `${classNames[l]}/${name}${i}.jpg`) };
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(meta));
  writeFileSync(join(dir, `${name}.u8`), new Uint8Array(labels.length * 12).fill(labels.length));
}

/** A run of fetch → split → evaluate with real stage outputs on disk. */
function learningRun(runId: string, experiment: string): { start: RunStartEvent; ends: StageEndEvent[]; endedAt: number } {
  const runDir = join(projectDir, 'runs', 'small', runId);
  mkdirSync(runDir, { recursive: true });
  const out = (stage: string) => {
    const dir = join(projectDir, 'cache', runId, stage);
    mkdirSync(dir, { recursive: true });
    return dir;
  };
  const fetchDir = out('fetch');
  writeSet(fetchDir, 'train', [0, 0, 1, 1, 1]);
  writeSet(fetchDir, 'validation', [0, 1]);
  writeFileSync(join(fetchDir, 'fetch.json'), JSON.stringify({ source: 'https://example.org/data/cats_and_dogs_filtered.zip', sets: { train: {}, validation: {} } }));
  const splitDir = out('split');
  writeSet(splitDir, 'train', [0, 0, 1, 1]);
  writeSet(splitDir, 'validation', [1, 0]);
  writeSet(splitDir, 'test', [1]);
  const evalDir = out('evaluate');
  mkdirSync(join(evalDir, 'model'));
  const metadata = { format: 'pipe-classifier/1', classNames, task: { kind: 'binary' }, inputShape: [2, 2, 3], output: 'logits', preprocessing: 'x / 127.5 - 1' };
  writeFileSync(join(evalDir, 'model', 'model.json'), JSON.stringify({ format: 'layers-model', userDefinedMetadata: metadata }));
  writeFileSync(join(evalDir, 'model', 'weights.bin'), new Uint8Array([7, 7, 7]));

  const start: RunStartEvent = {
    type: 'run-start',
    runId,
    runDir,
    pipelineName: 'small',
    pipelineFile: 'small.yaml',
    experiment,
    pipelineYaml: 'name: small\n',
    pipelineHash: 'cd'.repeat(32),
    params: { fine_tune_at: 100 },
    backend: 'cpu',
    stages: [
      { name: 'fetch', kind: 'fetch', fingerprint: 'a', cached: false, reasons: [], needs: [], params: { source: 'https://example.org/data/cats_and_dogs_filtered.zip' } },
      { name: 'split', kind: 'split', fingerprint: 'b', cached: false, reasons: [], needs: ['fetch'], params: {} },
      { name: 'evaluate', kind: 'evaluate', fingerprint: 'c', cached: false, reasons: [], needs: ['split'], params: { batch_size: 32 } },
    ],
    startedAt: T0,
  };
  const end = (stage: string, outDir: string, metrics: StageEndEvent['metrics'] = []): StageEndEvent => ({
    type: 'stage-end', stage, status: 'ran', fingerprint: stage, durationMs: 10, metrics, artifacts: [], summary: {}, outDir,
  });
  const testMetrics = [
    { key: 'test_loss', value: 0.25, step: 0, timestamp: T0 + 50 },
    { key: 'test_accuracy', value: 0.9, step: 0, timestamp: T0 + 50 },
  ];
  return { start, ends: [end('fetch', fetchDir), end('split', splitDir), end('evaluate', evalDir, testMetrics)], endedAt: T0 + 100 };
}

async function record(runId: string, experiment: string, uri: string): Promise<{ pending: number }> {
  const r = learningRun(runId, experiment);
  const tracker = createTracker({
    projectDir,
    trackingUri: uri,
    batchIntervalMs: 50,
    reconnectIntervalMs: 100,
    retry: { retries: 0, baseDelayMs: 10, timeoutMs: 5000 },
    register: { name: `${experiment}-model`, aliases: ['champion'] },
    log: () => {},
    syncOthers: false,
    systemMetricsIntervalMs: 0,
  });
  tracker.listener(r.start);
  for (const e of r.ends) tracker.listener(e);
  const summary = { runId, pipeline: 'small', status: 'succeeded' as const, durationMs: 100, stages: [], metrics: {} };
  tracker.listener({ type: 'run-end', summary, endedAt: r.endedAt });
  return tracker.close();
}

async function theRun(experiment: string): Promise<Run & { inputs?: { dataset_inputs?: DatasetInput[] }; outputs?: { model_outputs?: Array<{ model_id: string }> } }> {
  const exp = (await mlflow.client.getExperimentByName(experiment))!.experiment_id;
  const runs = (await mlflow.client.searchRuns({ experimentIds: [exp] })).runs;
  assert.is(runs.length, 1);
  return (await mlflow.client.getRun(runs[0]!.info.run_id)) as Awaited<ReturnType<typeof theRun>>;
}

/** Everything the learning run must leave on the server. */
async function assertRecorded(experiment: string): Promise<void> {
  const run = await theRun(experiment);
  const runId = run.info.run_id;
  assert.is(run.info.status, 'FINISHED');

  const inputs = run.inputs?.dataset_inputs ?? [];
  const byName = Object.fromEntries(inputs.map((i) => [i.dataset.name, i]));
  assert.equal(Object.keys(byName).sort(), ['cats_and_dogs_filtered', 'cats_and_dogs_filtered/test', 'cats_and_dogs_filtered/train', 'cats_and_dogs_filtered/validation']);
  const context = (name: string) => byName[name]!.tags.find((t) => t.key === 'mlflow.data.context')?.value;
  assert.equal([context('cats_and_dogs_filtered'), context('cats_and_dogs_filtered/train'), context('cats_and_dogs_filtered/validation'), context('cats_and_dogs_filtered/test')], ['fetched', 'training', 'validation', 'testing']);
  const train = byName['cats_and_dogs_filtered/train']!.dataset;
  assert.equal(JSON.parse(train.profile!), { num_rows: 4, classes: { cats: 2, dogs: 2 } });
  assert.equal(JSON.parse(train.source), { url: 'https://example.org/data/cats_and_dogs_filtered.zip' });
  assert.is(train.source_type, 'http');
  const splitTrain = join(projectDir, 'cache', (run.data.tags ?? []).find((t) => t.key === 'pipe.run_id')!.value, 'split');
  const { readFileSync } = await import('node:fs');
  const digest = createHash('sha256').update(readFileSync(join(splitTrain, 'train.json'))).update(readFileSync(join(splitTrain, 'train.u8'))).digest('hex').slice(0, 16);
  assert.is(train.digest, digest);
  assert.equal(JSON.parse(byName['cats_and_dogs_filtered']!.dataset.profile!).sets.train, { num_rows: 5, classes: { cats: 2, dogs: 3 } });

  const modelIds = run.outputs?.model_outputs?.map((o) => o.model_id) ?? [];
  assert.is(modelIds.length, 1);
  const model: LoggedModel = await mlflow.client.getLoggedModel(modelIds[0]!);
  assert.is(model.info.name, 'small');
  assert.is(model.info.status, 'LOGGED_MODEL_READY');
  assert.is(model.info.source_run_id, runId);
  const tags = Object.fromEntries((model.info.tags ?? []).map((t) => [t.key, t.value]));
  assert.is(tags['pipe.classes'], 'cats, dogs');
  const params = Object.fromEntries((model.data?.params ?? []).map((p) => [p.key, p.value]));
  assert.is(params['fine_tune_at'], '100');
  assert.equal((model.data?.metrics ?? []).map((m) => [m.key, m.value]).sort(), [['test_accuracy', 0.9], ['test_loss', 0.25]]);
  // ... measured on the run's test set.
  const testSet = byName['cats_and_dogs_filtered/test']!.dataset;
  assert.equal((model.data?.metrics ?? []).map((m) => [m.dataset_name, m.dataset_digest]), [[testSet.name, testSet.digest], [testSet.name, testSet.digest]]);
  // The test metrics are logged once, on the run, linked to the model.
  assert.equal((await mlflow.client.getMetricHistory(runId, 'test_accuracy')).map((m) => m.value), [0.9]);
  const files = (await mlflow.client.listProxiedArtifacts(model.info.artifact_uri)).map((f) => f.path).sort();
  assert.equal(files, ['MLmodel', 'model.json', 'weights.bin']);
  const mlmodel = new TextDecoder().decode(await mlflow.client.downloadProxiedArtifact(model.info.artifact_uri, 'MLmodel'));
  assert.match(mlmodel, 'class_names: ["cats","dogs"]');
  assert.match(mlmodel, 'preprocessing: "x / 127.5 - 1"');
  assert.match(mlmodel, `inputs: '[{"type":"tensor","name":"image","tensor-spec":{"dtype":"float32","shape":[-1,2,2,3]}}]'`);

  const version = await mlflow.client.getModelVersionByAlias(`${experiment}-model`, 'champion');
  assert.is(version.version, '1');
  assert.is(version.source, `models:/${model.info.model_id}`);
  assert.is(version.run_id, runId);
}

test('a learning run records its datasets, its model (metrics linked, artifacts) and a registry version', async () => {
  const result = await record('20260102-120000-aaaa', 'models-online', mlflow.uri);
  assert.is(result.pending, 0);
  await assertRecorded('models-online');
});

test('recorded while the server was down, the run ends with its datasets, model and version once synced', async () => {
  await mlflow.stop();
  try {
    const result = await record('20260102-130000-bbbb', 'models-offline', mlflow.uri);
    assert.ok(result.pending > 10, `${result.pending} requests kept`);
  } finally {
    await mlflow.start();
  }
  const lines: string[] = [];
  assert.is(await syncCommand({ projectDir, print: (l) => lines.push(l) }), 'ok', lines.join('\n'));
  await assertRecorded('models-offline');
});

test('pipe sync finds the journals of sweep trials (runs/<pipeline>/<sweep-id>/<trial>)', async () => {
  const trialDir = join(projectDir, 'runs', 'small', 'sweep-20260102-150000', 't01');
  mkdirSync(trialDir, { recursive: true });
  const journal = Journal.create(trialDir, { embedded: false, uri: mlflow.uri });
  journal.append({ kind: 'create-run', experimentName: 'sweep-trials', runName: 'trial t01', startTime: T0, tags: [{ key: 'pipe.journal_id', value: journal.journalId }] }, T0);
  journal.append({ kind: 'update-run', status: 'FINISHED', endTime: T0 + 10 }, T0 + 10);
  const lines: string[] = [];
  assert.is(await syncCommand({ projectDir, print: (l) => lines.push(l) }), 'ok', lines.join('\n'));
  assert.match(lines.join('\n'), 'runs/small/sweep-20260102-150000/t01: sent 2 request(s)');
  assert.is((await theRun('sweep-trials')).info.status, 'FINISHED');
});

test('system metrics: sampled at the interval under system/, the run\'s process tree included', async () => {
  const r = learningRun('20260102-140000-cccc', 'system-metrics');
  const tracker = createTracker({ projectDir, trackingUri: mlflow.uri, batchIntervalMs: 50, systemMetricsIntervalMs: 300, log: () => {}, syncOthers: false });
  tracker.listener({ ...r.start, stages: [] });
  // A stage-like child process of this one, busy on one core for a while.
  const busy = spawn(process.execPath, ['-e', 'const t = Date.now(); while (Date.now() - t < 1500) {}']);
  await new Promise((done) => busy.once('exit', done));
  const summary = { runId: r.start.runId, pipeline: 'small', status: 'succeeded' as const, durationMs: 100, stages: [], metrics: {} };
  tracker.listener({ type: 'run-end', summary, endedAt: Date.now() });
  assert.is((await tracker.close()).pending, 0);

  const run = await theRun('system-metrics');
  const history = (key: string) => mlflow.client.getMetricHistory(run.info.run_id, `system/${key}`);
  const cpu = await history('cpu_utilization_percentage');
  assert.ok(cpu.length >= 4, `${cpu.length} samples in ~1.5 s at 300 ms`);
  assert.equal(cpu.map((m) => m.step), cpu.map((_, i) => i));
  assert.ok(cpu.every((m) => m.value >= 0 && m.value <= 100));
  const tree = await history('process_tree_cpu_percentage');
  assert.ok(Math.max(...tree.map((m) => m.value)) > 25, `the busy child counts: ${tree.map((m) => m.value).join(', ')}`);
  const rss = await history('process_tree_rss_megabytes');
  assert.ok(rss.every((m) => m.value > 20), rss.map((m) => m.value).join(', '));
  const memory = await history('system_memory_usage_megabytes');
  assert.ok(memory.every((m) => m.value > 0));
  assert.is(treeTicksSince(new Map([[1, 50], [2, 70]]), new Map([[1, 80], [3, 5]])), 35, 'an exited process does not make it negative');
  assert.equal(parseNvidiaSmi('37, 1024, 4096\n5, 0, 8192\n'), [
    ['gpu_0_utilization_percentage', 37], ['gpu_0_memory_usage_megabytes', 1073.74], ['gpu_0_memory_usage_percentage', 25],
    ['gpu_1_utilization_percentage', 5], ['gpu_1_memory_usage_megabytes', 0], ['gpu_1_memory_usage_percentage', 0],
  ]);
});

test.run();
