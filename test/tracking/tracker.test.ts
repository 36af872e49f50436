// The tracker against a real MLflow server from the venv (one for the whole file): what a run logs
// is what the events said; a server outage loses nothing and replay duplicates nothing; orphans.

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { RunEvent, RunStartEvent, RunSummary, StageEndEvent } from '../../src/core/events.ts';
import type { MetricPoint } from '../../src/core/stage-kind.ts';
import { Journal, JOURNAL_FILE, replayJournal, ReplaySession } from '../../src/tracking/journal.ts';
import type { Metric, Run } from '../../src/tracking/mlflow-client.ts';
import { markOrphans, writeTrackingRecord } from '../../src/tracking/sync.ts';
import { syncCommand } from '../../src/app/sync.ts';
import { createTracker, type Tracker } from '../../src/tracking/tracker.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';

let mlflow: TestMlflow;
let projectDir: string;
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

test.before(async () => {
  mlflow = await startTestMlflow();
  projectDir = mkdtempSync(join(tmpdir(), 'pipe-tracker-'));
});

test.after(async () => {
  await mlflow?.dispose();
  if (projectDir) rmSync(projectDir, { recursive: true, force: true });
});

// ---- a synthetic run ----

interface Synthetic {
  start: RunStartEvent;
  dataEnd: StageEndEvent;
  /** The train stage's per-epoch points, in order. */
  trainPoints: MetricPoint[];
  trainEnd: StageEndEvent;
  end: RunEvent & { type: 'run-end' };
}

function synthetic(runId: string, experiment: string, epochs: number): Synthetic {
  const runDir = join(projectDir, 'runs', 'demo', runId);
  mkdirSync(runDir, { recursive: true });
  const filesDir = join(projectDir, 'files', runId);
  mkdirSync(join(filesDir, 'plots'), { recursive: true });
  writeFileSync(join(filesDir, 'classes.json'), '["cats","dogs"]');
  writeFileSync(join(filesDir, 'plots', 'learning_curves.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47]));
  writeFileSync(join(runDir, 'log.txt'), 'line 1\nline 2\n');

  const start: RunStartEvent = {
    type: 'run-start',
    runId,
    runDir,
    pipelineName: 'demo',
    pipelineFile: 'pipelines/demo.yaml',
    experiment,
    pipelineYaml: 'name: demo\nstages: {}\n',
    pipelineHash: 'ab'.repeat(32),
    params: { epochs, lr: 0.0001, long: 'y'.repeat(7000) },
    backend: 'cpu',
    stages: [
      { name: 'data', kind: 'download', fingerprint: 'f1', cached: true, reasons: [], needs: [], params: { url: 'http://x/y.zip', opts: { retries: 3, mirrors: ['a', 'b'] } } },
      { name: 'train', kind: 'train-head', fingerprint: 'f2', cached: false, reasons: ['no cache entry'], needs: ['data'], params: { epochs, learning_rate: 0.0001, optimizer: 'adam' } },
    ],
    startedAt: T0,
  };
  const dataEnd: StageEndEvent = {
    type: 'stage-end',
    stage: 'data',
    status: 'cached',
    fingerprint: 'f1',
    durationMs: 12,
    metrics: [{ key: 'images', value: 2000, step: 0, timestamp: T0 - 86_400_000 }],
    artifacts: [{ name: 'classes.json', path: join(filesDir, 'classes.json') }],
    summary: {},
  };
  const trainPoints: MetricPoint[] = [];
  for (let e = 0; e < epochs; e++) {
    trainPoints.push({ key: 'loss', value: 1 / (e + 1), step: e, timestamp: T0 + 1000 * (e + 1) });
    trainPoints.push({ key: 'val_accuracy', value: 0.5 + e / 100, step: e, timestamp: T0 + 1000 * (e + 1) + 1 });
  }
  const trainEnd: StageEndEvent = {
    type: 'stage-end',
    stage: 'train',
    status: 'ran',
    fingerprint: 'f2',
    durationMs: 1000 * epochs + 500,
    metrics: [...trainPoints, { key: 'test_accuracy', value: 0.979, step: 0, timestamp: T0 + 1000 * epochs + 400 }],
    artifacts: [{ name: 'plots/learning_curves.png', path: join(filesDir, 'plots', 'learning_curves.png') }],
    summary: { epochs },
  };
  const summary: RunSummary = {
    runId,
    pipeline: 'demo',
    status: 'succeeded',
    durationMs: 1000 * epochs + 600,
    stages: [
      { name: 'data', kind: 'download', status: 'cached', durationMs: 12, fingerprint: 'f1', reasons: [], summary: {} },
      { name: 'train', kind: 'train-head', status: 'ran', durationMs: 1000 * epochs + 500, fingerprint: 'f2', reasons: ['no cache entry'], summary: {} },
    ],
    metrics: { 'train.test_accuracy': 0.979 },
  };
  return { start, dataEnd, trainPoints, trainEnd, end: { type: 'run-end', summary, endedAt: T0 + 1000 * epochs + 600 } };
}

function newTracker(): Tracker {
  return createTracker({
    projectDir,
    trackingUri: mlflow.uri,
    batchIntervalMs: 100,
    reconnectIntervalMs: 200,
    retry: { retries: 1, baseDelayMs: 50, timeoutMs: 5000 },
    systemMetricsIntervalMs: 0,
    log: () => {},
  });
}

async function findRun(experiment: string): Promise<Run[]> {
  const expId = (await mlflow.client.getExperimentByName(experiment))!.experiment_id;
  return (await mlflow.client.searchRuns({ experimentIds: [expId] })).runs;
}

const strip = (ms: Metric[]): Array<[number, number, number]> => ms.map((m) => [m.step, m.value, m.timestamp]);
const expected = (ps: MetricPoint[], key: string): Array<[number, number, number]> =>
  ps.filter((p) => p.key === key).map((p) => [p.step, p.value, p.timestamp]);

// ---- tests ----

test('a run logs params, every metric step, tags, artifacts, note and status', async () => {
  const s = synthetic('20260101-120000-aaaa1111', 'tracker-full', 3);
  const tracker = newTracker();
  tracker.listener(s.start);
  tracker.listener(s.dataEnd);
  tracker.listener({ type: 'stage-start', stage: 'train', fingerprint: 'f2', startedAt: T0 + 100 });
  for (const p of s.trainPoints) tracker.listener({ type: 'stage-metric', stage: 'train', point: p });
  tracker.listener(s.trainEnd);
  tracker.listener(s.end);
  const result = await tracker.close();
  assert.is(result.pending, 0);

  const runs = await findRun('tracker-full');
  assert.is(runs.length, 1);
  const runId = runs[0]!.info.run_id;
  assert.is(result.runs[0]!.runId, runId);
  assert.is(result.runs[0]!.url, `${mlflow.uri}/#/experiments/${runs[0]!.info.experiment_id}/runs/${runId}`);
  const run = await mlflow.client.getRun(runId);
  assert.is(run.info.status, 'FINISHED');
  assert.is(run.info.start_time, T0);
  assert.is(run.info.end_time, T0 + 3600);

  const params = Object.fromEntries((run.data.params ?? []).map((p) => [p.key, p.value]));
  assert.is(params['epochs'], '3');
  assert.is(params['lr'], '0.0001');
  assert.is(params['long']!.length, 6000);
  assert.ok(params['long']!.endsWith('…[truncated]'));
  assert.is(params['data.url'], 'http://x/y.zip');
  assert.is(params['data.opts.retries'], '3');
  assert.is(params['data.opts.mirrors'], '["a","b"]');
  assert.is(params['train.epochs'], '3');
  // The optimizer's settings as Keras autolog names them, per training stage.
  assert.is(params['train.opt_name'], 'adam');
  assert.is(params['train.opt_learning_rate'], '0.0001');
  assert.is(params['train.opt_beta_2'], '0.999');
  assert.is(params['pipeline_hash'], 'ab'.repeat(32));
  assert.is(params['backend'], 'cpu');

  for (const key of ['loss', 'val_accuracy']) {
    assert.equal(strip(await mlflow.client.getMetricHistory(runId, key)), expected(s.trainPoints, key), key);
  }
  assert.equal(strip(await mlflow.client.getMetricHistory(runId, 'images')), [[0, 2000, T0 - 86_400_000]]);
  assert.equal(strip(await mlflow.client.getMetricHistory(runId, 'test_accuracy')), [[0, 0.979, T0 + 3400]]);
  // The learning rate per epoch, beside the loss.
  assert.equal(strip(await mlflow.client.getMetricHistory(runId, 'learning_rate')), expected(s.trainPoints, 'loss').map(([step, , at]) => [step, 0.0001, at]));
  // Bookkeeping: tags, not charts.
  assert.equal(await mlflow.client.getMetricHistory(runId, 'stage.train.duration_s'), []);
  assert.equal((run.data.metrics ?? []).map((m) => m.key).sort(), ['images', 'learning_rate', 'loss', 'test_accuracy', 'val_accuracy']);

  const tags = Object.fromEntries((run.data.tags ?? []).map((t) => [t.key, t.value]));
  assert.is(tags['pipe.stage.data.status'], 'cached');
  assert.is(tags['pipe.stage.train.status'], 'ran');
  assert.is(tags['pipe.stage.train.duration_s'], '3.5');
  assert.is(tags['mlflow.runName'], 'demo 20260101-120000-aaaa1111');
  assert.is(run.info.run_name, 'demo 20260101-120000-aaaa1111');
  assert.is(tags['mlflow.source.name'], 'pipelines/demo.yaml');
  assert.is(tags['mlflow.source.type'], 'LOCAL');
  assert.ok((tags['mlflow.user'] ?? '') !== '');
  assert.is(tags['pipe.run_id'], '20260101-120000-aaaa1111');
  const note = tags['mlflow.note.content'] ?? '';
  assert.match(note, '| stage | kind | status | duration | why it ran |');
  assert.match(note, '| data | download | cached | 12 ms | (from the cache) |');
  assert.match(note, '| train | train-head | ran | 3.5 s | no cache entry |');

  const files = (await mlflow.client.listArtifactsRecursive(runId)).map((f) => f.path).sort();
  assert.equal(files, ['data/classes.json', 'log.txt', 'pipeline.yaml', 'train/plots/learning_curves.png']);

  const record = JSON.parse(readFileSync(join(s.start.runDir, 'tracking.json'), 'utf8')) as { run_id: string; ended: string };
  assert.is(record.run_id, runId);
  assert.is(record.ended, 'FINISHED');
});

test('a failed stage: run FAILED, the error in the note; a sweep trial nests under its parent', async () => {
  const s = synthetic('20260101-150000-dddd4444', 'tracker-failed', 2);
  const parent = await mlflow.client.createRun({ experimentId: await mlflow.client.getOrCreateExperiment('tracker-failed'), runName: 'sweep parent' });
  const tracker = createTracker({ projectDir, trackingUri: mlflow.uri, parentRunId: parent.info.run_id, batchIntervalMs: 100, systemMetricsIntervalMs: 0, log: () => {} });
  tracker.listener({ ...s.start, sweep: { id: 'sweep-1', trial: 't03' } });
  tracker.listener({ type: 'stage-start', stage: 'data', fingerprint: 'f1', startedAt: T0 });
  tracker.listener({ ...s.dataEnd, status: 'failed', error: 'download failed: HTTP 404 for http://x/y.zip', metrics: [], artifacts: [] });
  tracker.listener({ ...s.trainEnd, status: 'skipped', error: "upstream stage 'data' failed", durationMs: 0, metrics: [], artifacts: [] });
  const summary: RunSummary = {
    ...s.end.summary,
    status: 'failed',
    stages: [
      { name: 'data', kind: 'download', status: 'failed', durationMs: 12, fingerprint: 'f1', reasons: ['no cache entry'], error: 'download failed: HTTP 404 for http://x/y.zip', summary: {} },
      { name: 'train', kind: 'train-head', status: 'skipped', durationMs: 0, fingerprint: 'f2', reasons: [], error: "upstream stage 'data' failed", summary: {} },
    ],
    metrics: {},
  };
  tracker.listener({ type: 'run-end', summary, endedAt: T0 + 50 });
  const result = await tracker.close();
  assert.is(result.pending, 0);
  const run = await mlflow.client.getRun(result.runs[0]!.runId!);
  assert.is(run.info.status, 'FAILED');
  const tags = Object.fromEntries((run.data.tags ?? []).map((t) => [t.key, t.value]));
  assert.is(tags['mlflow.parentRunId'], parent.info.run_id);
  assert.is(tags['mlflow.runName'], 'demo 20260101-150000-dddd4444 t03');
  assert.is(tags['pipe.trial'], 't03');
  const note = tags['mlflow.note.content'] ?? '';
  assert.match(note, '| data | download | **failed** | 12 ms | no cache entry |');
  assert.match(note, "| train | train-head | skipped |  | upstream stage 'data' failed |");
  assert.match(note, '**Stage `data` failed:**\n\n```\ndownload failed: HTTP 404 for http://x/y.zip\n```');
  assert.is(tags['pipe.stage.data.duration_s'], '0.012');
  assert.is(tags['pipe.stage.data.status'], 'failed');
  assert.is(tags['pipe.stage.train.status'], 'skipped');
  assert.is(tags['pipe.stage.train.duration_s'], undefined);
});

test('MLflow (sqlite store) ignores an exact duplicate metric row; the journal does not rely on it', async () => {
  const c = mlflow.client;
  const exp = await c.getOrCreateExperiment('dedupe-check');
  const run = await c.createRun({ experimentId: exp, startTime: T0 });
  const pts: Metric[] = [0, 1, 2].map((s) => ({ key: 'm', value: s / 3, timestamp: T0 + s, step: s }));
  await c.logBatch(run.info.run_id, { metrics: pts });
  await c.logBatch(run.info.run_id, { metrics: [...pts, pts[0]!] });
  assert.is((await c.getMetricHistory(run.info.run_id, 'm')).length, 3);
  // Same key, step and timestamp with another value is a new point.
  await c.logBatch(run.info.run_id, { metrics: [{ ...pts[0]!, value: 9 }] });
  assert.is((await c.getMetricHistory(run.info.run_id, 'm')).length, 4);
});

test('the server goes away mid-run: the run finishes, `pipe sync` replays with no loss and no duplicate', async () => {
  const s = synthetic('20260101-130000-bbbb2222', 'tracker-outage', 6);
  const tracker = newTracker();
  tracker.listener(s.start);
  tracker.listener(s.dataEnd);
  tracker.listener({ type: 'stage-start', stage: 'train', fingerprint: 'f2', startedAt: T0 + 100 });
  const half = s.trainPoints.length / 2;
  for (const p of s.trainPoints.slice(0, half)) tracker.listener({ type: 'stage-metric', stage: 'train', point: p });
  await tracker.flush();

  await mlflow.stop();
  for (const p of s.trainPoints.slice(half)) tracker.listener({ type: 'stage-metric', stage: 'train', point: p });
  tracker.listener(s.trainEnd);
  tracker.listener(s.end);
  const result = await tracker.close(); // must not throw or hang
  assert.ok(result.pending > 0, 'requests were kept for later');
  const runId = result.runs[0]!.runId!;

  await mlflow.start(); // same store, same port
  const lines: string[] = [];
  assert.is(await syncCommand({ projectDir, print: (l) => lines.push(l) }), 'ok', lines.join('\n'));
  assert.match(lines.join('\n'), 'runs/demo/20260101-130000-bbbb2222: sent');

  const runs = await findRun('tracker-outage');
  assert.is(runs.length, 1);
  assert.is(runs[0]!.info.run_id, runId);
  for (const key of ['loss', 'val_accuracy']) {
    assert.equal(strip(await mlflow.client.getMetricHistory(runId, key)), expected(s.trainPoints, key), key);
  }
  const run = await mlflow.client.getRun(runId);
  assert.is(run.info.status, 'FINISHED');
  assert.is(run.info.end_time, s.end.endedAt);
  const files = (await mlflow.client.listArtifactsRecursive(runId)).map((f) => f.path).sort();
  assert.equal(files, ['data/classes.json', 'log.txt', 'pipeline.yaml', 'train/plots/learning_curves.png']);

  // A second sync has nothing to do.
  lines.length = 0;
  assert.is(await syncCommand({ projectDir, print: (l) => lines.push(l) }), 'ok');
  assert.equal(lines, ['Nothing to sync: every run is on its MLflow server.']);
});

test('a crash between send and ack: replay finds the run and the points, and sends nothing twice', async () => {
  const s = synthetic('20260101-140000-cccc3333', 'tracker-crash', 4);
  const tracker = newTracker();
  for (const e of [s.start, s.dataEnd] as RunEvent[]) tracker.listener(e);
  for (const p of s.trainPoints) tracker.listener({ type: 'stage-metric', stage: 'train', point: p });
  tracker.listener(s.trainEnd);
  tracker.listener(s.end);
  const result = await tracker.close();
  assert.is(result.pending, 0);
  const runId = result.runs[0]!.runId!;

  // Forget every ack, as if the runner died after each send: everything is in doubt.
  const path = join(s.start.runDir, JOURNAL_FILE);
  const kept = readFileSync(path, 'utf8').split('\n').filter((l) => !l.includes('"t":"ack"'));
  writeFileSync(path, kept.join('\n'));
  const journal = Journal.open(s.start.runDir)!;
  assert.ok(journal.pending().length > 5);

  const res = await replayJournal(journal, mlflow.client, new ReplaySession(true));
  assert.is(res.error, undefined);
  assert.is(res.pending, 0);
  assert.is(journal.run?.runId, runId, 'the run was found by its pipe.journal_id tag, not created again');
  assert.is(res.deduplicated, s.trainPoints.length + s.trainPoints.length / 2 /* learning_rate */ + 1 /* images */ + 1 /* test_accuracy */);
  assert.is((await findRun('tracker-crash')).length, 1);
  for (const key of ['loss', 'val_accuracy']) {
    assert.equal(strip(await mlflow.client.getMetricHistory(runId, key)), expected(s.trainPoints, key), key);
  }
});

test('orphans: a dead runner leaves its run KILLED, also when the run never reached the server', async () => {
  const deadPid = spawnSync(process.execPath, ['-e', '']).pid!;

  // A run that reached the server and stayed RUNNING.
  const onlineDir = join(projectDir, 'runs', 'demo', 'orphan-online');
  mkdirSync(onlineDir, { recursive: true });
  const j1 = Journal.create(onlineDir, { embedded: false, uri: mlflow.uri });
  j1.append({ kind: 'create-run', experimentName: 'tracker-orphans', runName: 'online', startTime: T0, tags: [{ key: 'pipe.journal_id', value: j1.journalId }] }, T0);
  j1.append({ kind: 'log-batch', metrics: [{ key: 'loss', value: 1, step: 0, timestamp: T0 + 5000 }] }, T0 + 5000);
  await replayJournal(j1, mlflow.client, new ReplaySession(false));
  assert.is((await mlflow.client.getRun(j1.run!.runId)).info.status, 'RUNNING');
  writeTrackingRecord(onlineDir, { run_id: j1.run!.runId, experiment_id: j1.run!.experimentId, journal_id: j1.journalId, pid: deadPid, host: hostname(), started_at: T0 });

  // A run whose runner never reached the server.
  const offlineDir = join(projectDir, 'runs', 'demo', 'orphan-offline');
  mkdirSync(offlineDir, { recursive: true });
  const j2 = Journal.create(offlineDir, { embedded: false, uri: mlflow.uri });
  j2.append({ kind: 'create-run', experimentName: 'tracker-orphans', runName: 'offline', startTime: T0, tags: [{ key: 'pipe.journal_id', value: j2.journalId }] }, T0);
  writeTrackingRecord(offlineDir, { run_id: null, experiment_id: null, journal_id: j2.journalId, pid: deadPid, host: hostname(), started_at: T0 });

  // A run whose runner is alive (this process) is left alone.
  const liveDir = join(projectDir, 'runs', 'demo', 'live');
  mkdirSync(liveDir, { recursive: true });
  const j3 = Journal.create(liveDir, { embedded: false, uri: mlflow.uri });
  j3.append({ kind: 'create-run', experimentName: 'tracker-orphans', runName: 'live', startTime: T0, tags: [] }, T0);
  writeTrackingRecord(liveDir, { run_id: null, experiment_id: null, journal_id: j3.journalId, pid: process.pid, host: hostname(), started_at: T0 });

  const marked = await markOrphans(projectDir);
  assert.equal(marked.sort(), [offlineDir, onlineDir].sort());

  const online = await mlflow.client.getRun(j1.run!.runId);
  assert.is(online.info.status, 'KILLED');
  assert.is(online.info.end_time, T0 + 5000);
  const runs = await findRun('tracker-orphans');
  const byName = Object.fromEntries(runs.map((r) => [r.info.run_name, r.info.status]));
  assert.equal(byName, { online: 'KILLED', offline: 'KILLED' });
  assert.equal(await markOrphans(projectDir), [], 'marked once');
  rmSync(liveDir, { recursive: true });
});

test.run();
