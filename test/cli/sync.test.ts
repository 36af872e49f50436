// `pipe sync` with a server that is gone: a run is counted once (not again through runs/<p>/latest),
// its journal can be sent to another server (--to) or dropped (--drop, --drop-all).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';

// Port 9 (discard): fetch refuses it at once, so the server is unreachable without waiting.
const offline = `name: demo
tracking: {uri: "http://127.0.0.1:9"}
stages:
  a:
    run: echo hi > a.txt
    outs: [a.txt]
`;

/** A project with one finished run whose tracking data never reached its server. */
async function runOffline(): Promise<{ dir: string; runId: string }> {
  const dir = project({ 'p.yaml': offline });
  const run = await pipe(dir, ['run', 'p.yaml'], { PIPE_NO_TRACK: '0' });
  assert.is(run.exitCode, 0, run.stderr);
  const runId = readdirSync(path.join(dir, 'runs', 'demo')).find((n) => n !== 'latest') ?? '';
  assert.ok(existsSync(path.join(dir, 'runs', 'demo', runId, 'mlflow-journal.jsonl')));
  return { dir, runId };
}

/** How many requests the run journaled (none was ever answered: all are pending). */
function journaledOps(dir: string, runId: string): number {
  const lines = readFileSync(path.join(dir, 'runs', 'demo', runId, 'mlflow-journal.jsonl'), 'utf8').trim().split('\n');
  const ops = lines.filter((line) => (JSON.parse(line) as { t?: string }).t === 'op').length;
  assert.ok(ops >= 7, `the run journaled ${ops} requests`);
  return ops;
}

let mlflow: TestMlflow | undefined;

test('offline, a run is counted once (runs/<p>/latest is a link to it)', async () => {
  const { dir, runId } = await runOffline();
  const r = await pipe(dir, ['sync']);
  assert.is(r.exitCode, 1);
  const lines = r.stdout.trim().split('\n');
  assert.is(lines.length, 2, r.stdout);
  assert.ok(lines[0]?.startsWith(`runs/demo/${runId}: sent 0 request(s) to http://127.0.0.1:9; ${journaledOps(dir, runId)} still pending: `), r.stdout);
  assert.is(lines[1], 'A server that will not come back: `pipe sync --to URI` sends the runs elsewhere, `pipe sync --drop RUN_DIR` discards them.');
});

test('--drop RUN_DIR says what it drops; nothing is sent afterwards', async () => {
  const { dir, runId } = await runOffline();
  const ops = journaledOps(dir, runId);
  const r = await pipe(dir, ['sync', '--drop', 'runs/demo/latest']);
  assert.is(r.exitCode, 0, r.stderr);
  assert.is(r.stdout.trim(), `runs/demo/${runId}: dropped ${ops} pending request(s) for http://127.0.0.1:9 (kept in mlflow-journal.dropped.jsonl, never sent)`);
  const after = await pipe(dir, ['sync']);
  assert.is(after.exitCode, 0);
  assert.is(after.stdout.trim(), 'Nothing to sync: every run is on its MLflow server.');
  const again = await pipe(dir, ['sync', '--drop-all']);
  assert.is(again.stdout.trim(), 'Nothing to drop: every run is on its MLflow server.');
});

test('--drop-all drops every pending journal; bad --drop and --to arguments are usage errors', async () => {
  const { dir, runId } = await runOffline();
  const bad = await pipe(dir, ['sync', '--drop', 'runs/nope']);
  assert.is(bad.exitCode, 2);
  assert.is(bad.stderr.trim(), 'pipe sync --drop runs/nope: not a run directory with tracking data (expected runs/PIPELINE/RUN_ID, holding mlflow-journal.jsonl)');
  const badTo = await pipe(dir, ['sync', '--to', 'mlflow.example.org']);
  assert.is(badTo.exitCode, 2);
  assert.is(badTo.stderr.trim(), 'pipe sync --to mlflow.example.org: expected an MLflow server URL (http://HOST:PORT)');
  const both = await pipe(dir, ['sync', '--to', 'http://x:1', '--drop-all']);
  assert.is(both.exitCode, 2);
  const ops = journaledOps(dir, runId);
  const r = await pipe(dir, ['sync', '--drop-all']);
  assert.is(r.exitCode, 0, r.stderr);
  assert.is(r.stdout.trim(), `runs/demo/${runId}: dropped ${ops} pending request(s) for http://127.0.0.1:9 (kept in mlflow-journal.dropped.jsonl, never sent)`);
});

test('--to URI sends the run to another server, for good', async () => {
  const { dir, runId } = await runOffline();
  mlflow = await startTestMlflow();
  const r = await pipe(dir, ['sync', '--to', mlflow.uri]);
  assert.is(r.exitCode, 0, r.stdout + r.stderr);
  assert.match(r.stdout.trim(), new RegExp(`^runs/demo/${runId}: sent \\d+ request\\(s\\) to ${mlflow.uri}$`));
  const experiment = await mlflow.client.getExperimentByName('demo');
  assert.ok(experiment);
  const runs = (await mlflow.client.searchRuns({ experimentIds: [experiment.experiment_id] })).runs;
  assert.equal(runs.map((run) => run.info.status), ['FINISHED']);
  const after = await pipe(dir, ['sync']);
  assert.is(after.stdout.trim(), 'Nothing to sync: every run is on its MLflow server.');
});

test.after(async () => {
  await mlflow?.dispose();
});

test.run();
