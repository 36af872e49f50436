// The embedded server: started detached on first use, reused while /health answers, a stale record
// replaced; `pipe ui` prints the experiment URL. One real server for the file.

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MLflowClient } from '../../src/tracking/mlflow-client.ts';
import {
  embeddedPaths,
  ensureEmbeddedServer,
  isHealthy,
  isPidAlive,
  resolveTracking,
  stopEmbeddedServer,
  TrackingServerError,
  type ServerRecord,
} from '../../src/tracking/server.ts';
import { uiCommand } from '../../src/app/ui.ts';

const repoDir = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const mlflowBin = join(repoDir, '.venv', 'bin', 'mlflow');
let projectDir: string;

test.before(() => {
  projectDir = mkdtempSync(join(tmpdir(), 'pipe-server-'));
});

test.after(async () => {
  if (projectDir) {
    await stopEmbeddedServer(projectDir);
    rmSync(projectDir, { recursive: true, force: true });
  }
});

test('a named tracking URI wins; only http(s) is accepted', async () => {
  assert.equal(await resolveTracking({ projectDir, trackingUri: 'http://mlflow.example:5000/', env: {} }), {
    uri: 'http://mlflow.example:5000',
    embedded: false,
  });
  assert.equal(await resolveTracking({ projectDir, env: { MLFLOW_TRACKING_URI: 'https://m.example' } }), {
    uri: 'https://m.example',
    embedded: false,
  });
  const err = await resolveTracking({ projectDir, env: { MLFLOW_TRACKING_URI: 'file:///tmp/mlruns' } }).catch((e: unknown) => e);
  assert.instance(err, TrackingServerError);
  assert.match((err as Error).message, 'Tracking URI file:///tmp/mlruns is not supported');
});

test('a missing venv is a clear error', async () => {
  const err = await ensureEmbeddedServer({ projectDir, mlflowBin: join(projectDir, 'nope', 'mlflow') }).catch((e: unknown) => e);
  assert.instance(err, TrackingServerError);
  assert.is((err as TrackingServerError).reason, 'no-mlflow');
  assert.match((err as Error).message, `Cannot start the MLflow server: ${join(projectDir, 'nope', 'mlflow')} does not exist`);
});

test('the embedded server: started once, detached, on 127.0.0.1, reused, replaced when stale', async () => {
  const paths = embeddedPaths(projectDir);
  // A stale record from a server that is gone.
  mkdirSync(paths.dir, { recursive: true });
  writeFileSync(paths.record, JSON.stringify({ pid: 999_999, port: 1, host: '127.0.0.1', uri: 'http://127.0.0.1:1', startedAt: '' }));

  // Started by a `pipe` process that then exits: the server outlives it.
  const starter = spawnSync(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', `
      import { resolveTracking } from ${JSON.stringify(join(repoDir, 'src', 'tracking', 'server.ts'))};
      const t = await resolveTracking({ projectDir: ${JSON.stringify(projectDir)}, env: {}, mlflowBin: ${JSON.stringify(mlflowBin)} });
      console.log(JSON.stringify(t));`],
    { cwd: repoDir, encoding: 'utf8', timeout: 180_000 },
  );
  assert.is(starter.status, 0, starter.stderr);
  const first = JSON.parse(starter.stdout) as { uri: string; embedded: boolean };
  assert.is(first.embedded, true);
  assert.match(first.uri, /^http:\/\/127\.0\.0\.1:\d+$/);
  const record = JSON.parse(readFileSync(paths.record, 'utf8')) as ServerRecord;
  assert.is(record.uri, first.uri);
  assert.is(record.host, '127.0.0.1');
  assert.ok(isPidAlive(record.pid));
  assert.ok(await isHealthy(first.uri));

  const again = await ensureEmbeddedServer({ projectDir, mlflowBin });
  assert.is(again.reused, true);
  assert.is(again.pid, record.pid);

  // It writes to runs/mlflow/: SQLite store and artifacts.
  const client = new MLflowClient({ uri: first.uri });
  const expId = await client.getOrCreateExperiment('ui-demo');
  const run = await client.createRun({ experimentId: expId });
  await client.uploadArtifact(run.info.artifact_uri!, 'a.txt', 'x');
  assert.is(readFileSync(join(paths.artifacts, expId, run.info.run_id, 'artifacts', 'a.txt'), 'utf8'), 'x');

  const lines: string[] = [];
  assert.is(await uiCommand({ projectDir, experiment: 'ui-demo', env: {}, print: (l) => lines.push(l) }), 'ok');
  assert.equal(lines, [`MLflow server running at ${first.uri} (pid ${record.pid})`, `${first.uri}/#/experiments/${expId}`]);

  assert.is(await stopEmbeddedServer(projectDir), true);
  for (let i = 0; i < 40 && isPidAlive(record.pid); i++) await new Promise((r) => setTimeout(r, 250));
  assert.not.ok(await isHealthy(first.uri));
});

test.run();
