// The write-ahead journal of a run's MLflow requests: what it keeps on disk and reads back, its
// lock, and replay against a real MLflow server (one for the file): in order, with the recorded
// times, past a rejected request, stopped by an unreachable server, and exactly once after a crash.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, utimesSync, writeFileSync, appendFileSync, existsSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  Journal, JOURNAL_FILE, JOURNAL_LOCK_FILE, lockJournal, replayJournal, ReplaySession, unlockJournal, type JournalOp,
} from '../../src/tracking/journal.ts';
import { MLflowClient, type Metric } from '../../src/tracking/mlflow-client.ts';
import { freePort } from '../../src/tracking/server.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';

const T0 = Date.UTC(2026, 1, 1, 9, 0, 0);
const tracking = { embedded: false as const, uri: 'http://127.0.0.1:1' };
const newDir = () => mkdtempSync(join(tmpdir(), 'pipe-journal-'));
const point = (step: number, value: number): Metric => ({ key: 'loss', value, step, timestamp: T0 + 1000 * step });
const createRun = (journal: Journal, runName: string, experimentName: string): JournalOp => ({
  kind: 'create-run', experimentName, runName, startTime: T0, tags: [{ key: 'pipe.journal_id', value: journal.journalId }],
});
const createRunWithId = (journalId: string): JournalOp => ({
  kind: 'create-run', experimentName: 'exp', runName: 'run', startTime: T0, tags: [{ key: 'pipe.journal_id', value: journalId }],
});
const lines = (dir: string) =>
  readFileSync(join(dir, JOURNAL_FILE), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { t: string; seqs?: number[]; seq?: number; op: JournalOp });

// ---- on disk ----

test('a journal is created once per run directory, header first', () => {
  const dir = newDir();
  assert.is(Journal.open(dir), undefined);
  const journal = Journal.create(dir, tracking);
  assert.equal(lines(dir), [{ t: 'header', version: 1, journalId: journal.journalId, tracking, createdAt: journal.header.createdAt }]);
  assert.throws(() => Journal.create(dir, tracking), /EEXIST/);
  assert.is(Journal.open(dir)?.journalId, journal.journalId);
});

test('a journal appears whole with its first ops (the create-run among them), never as a bare header', () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking, (id) => [
    { op: createRunWithId(id), at: T0 },
    { op: { kind: 'log-batch', params: [{ key: 'lr', value: '0.1' }] }, at: T0 },
  ]);
  const written = lines(dir);
  assert.is(written.length, 3);
  assert.equal(written.slice(1).map((l) => [l.t, l.seq, l.op.kind]), [['op', 1, 'create-run'], ['op', 2, 'log-batch']]);
  assert.equal((written[1]!.op as { tags: Array<{ key: string; value: string }> }).tags, [{ key: 'pipe.journal_id', value: journal.journalId }]);
  assert.equal(readdirSync(dir), ['mlflow-journal.jsonl'], 'no temporary file is left');
  assert.is(journal.append({ kind: 'update-run', status: 'FINISHED', endTime: T0 + 1 }), 3, 'numbering goes on after the first ops');
  assert.equal(Journal.open(dir)!.pending().map((e) => e.op.kind), ['create-run', 'log-batch', 'update-run']);
  assert.throws(() => Journal.create(dir, tracking, (id) => [{ op: createRunWithId(id) }]), /EEXIST/);
  assert.equal(readdirSync(dir), ['mlflow-journal.jsonl'], 'a refused create leaves nothing behind');
});

test('ops, acks and rejections read back: what is pending, the run, the rejections; numbering goes on', () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking);
  const run = { runId: 'r1', experimentId: '7', artifactUri: 'mlflow-artifacts:/7/r1/artifacts' };
  const s1 = journal.append(createRun(journal, 'run', 'exp'), T0);
  const s2 = journal.append({ kind: 'log-batch', metrics: [point(0, 1)] }, T0 + 1);
  const s3 = journal.append({ kind: 'log-batch', params: [{ key: 'lr', value: '0.1' }] }, T0 + 2);
  const s4 = journal.append({ kind: 'update-run', status: 'RUNNING' }, T0 + 3);
  journal.ack([s1], { run });
  journal.reject([s3], 'INVALID_PARAMETER_VALUE');
  assert.equal([s1, s2, s3, s4], [1, 2, 3, 4]);
  assert.is(journal.hasTerminalStatus(), false, 'RUNNING is not an end');

  const reopened = Journal.open(dir)!;
  assert.equal(reopened.pending().map((e) => [e.seq, e.at, e.op.kind]), [[2, T0 + 1, 'log-batch'], [4, T0 + 3, 'update-run']]);
  assert.equal(reopened.run, run);
  assert.equal(reopened.rejected, [{ seqs: [3], error: 'INVALID_PARAMETER_VALUE' }]);
  assert.is(reopened.all().length, 4);
  assert.is(reopened.append({ kind: 'update-run', status: 'FINISHED', endTime: T0 + 9 }), 5);
  assert.is(reopened.hasTerminalStatus(), true);
  assert.equal(Journal.open(dir)!.pending().map((e) => e.seq), [2, 4, 5]);
});

test('a torn last line (a crash mid-write) is ignored; a file without a header is no journal', () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking);
  journal.append({ kind: 'log-batch', metrics: [point(0, 1)] });
  appendFileSync(join(dir, JOURNAL_FILE), '{"t":"op","seq":2,"at":1,"op":{"kind":"log-b');
  assert.equal(Journal.open(dir)!.pending().map((e) => e.seq), [1]);

  const headless = newDir();
  writeFileSync(join(headless, JOURNAL_FILE), '{"t":"op","seq":1,"at":1,"op":{"kind":"update-run","status":"FINISHED"}}\n');
  assert.is(Journal.open(headless), undefined);
});

test('the lock: one sender per journal; a dead holder on this host or an old torn lock is taken over', () => {
  const dir = newDir();
  const lockFile = join(dir, JOURNAL_LOCK_FILE);
  assert.is(lockJournal(dir), true);
  assert.is(lockJournal(dir), false, 'held by a live process (this one)');
  unlockJournal(dir);
  assert.is(existsSync(lockFile), false);

  const deadPid = spawnSync(process.execPath, ['-e', '']).pid!;
  writeFileSync(lockFile, JSON.stringify({ pid: deadPid, host: hostname(), at: T0 }));
  assert.is(lockJournal(dir), true, 'its holder died');
  unlockJournal(dir);

  writeFileSync(lockFile, JSON.stringify({ pid: 1, host: 'another-host', at: T0 }));
  assert.is(lockJournal(dir), false, "another host's holder cannot be checked");
  unlockJournal(dir);
  assert.is(existsSync(lockFile), true, 'unlock leaves a lock this process does not hold');

  writeFileSync(lockFile, '{"pid":');
  assert.is(lockJournal(dir), false, 'a torn lock may be one being written');
  const old = new Date(Date.now() - 60_000);
  utimesSync(lockFile, old, old);
  assert.is(lockJournal(dir), true, 'a torn lock nobody finished is taken over');
  unlockJournal(dir);
});

// ---- replay against a real server ----

let mlflow: TestMlflow;
test.before(async () => {
  mlflow = await startTestMlflow();
});
test.after(async () => {
  await mlflow?.dispose();
});

async function runsNamed(experiment: string, name: string) {
  const experimentId = (await mlflow.client.getExperimentByName(experiment))!.experiment_id;
  return (await mlflow.client.searchRuns({ experimentIds: [experimentId] })).runs.filter((r) => r.info.run_name === name);
}
const history = async (runId: string) => (await mlflow.client.getMetricHistory(runId, 'loss')).map((m) => [m.step, m.value, m.timestamp]);

test('replay sends the pending ops in order, with the times they were recorded at, then has nothing left', async () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking);
  journal.append(createRun(journal, 'in-order', 'journal-replay'), T0);
  journal.append({ kind: 'log-batch', params: [{ key: 'lr', value: '0.1' }], metrics: [point(0, 1), point(1, 0.5)] });
  journal.append({ kind: 'log-batch', metrics: [point(2, 0.25)], tags: [{ key: 'stage', value: 'train' }] });
  journal.append({ kind: 'upload-artifact', path: 'notes/readme.txt', text: 'twelve bytes' });
  journal.append({ kind: 'update-run', status: 'FINISHED', endTime: T0 + 5000 });

  const result = await replayJournal(journal, mlflow.client, new ReplaySession(false));
  assert.equal(result, { sent: 5, deduplicated: 0, rejected: 0, pending: 0 });
  const runId = journal.run!.runId;
  const run = await mlflow.client.getRun(runId);
  assert.equal([run.info.run_name, run.info.start_time, run.info.end_time, run.info.status], ['in-order', T0, T0 + 5000, 'FINISHED']);
  assert.equal(run.data.params, [{ key: 'lr', value: '0.1' }]);
  assert.ok(run.data.tags?.some((t) => t.key === 'pipe.journal_id' && t.value === journal.journalId));
  assert.equal(await history(runId), [[0, 1, T0], [1, 0.5, T0 + 1000], [2, 0.25, T0 + 2000]]);
  assert.equal((await mlflow.client.listArtifactsRecursive(runId)).map((f) => [f.path, f.file_size]), [['notes/readme.txt', 12]]);

  assert.equal(Journal.open(dir)!.pending(), [], 'the acks are on disk');
  assert.equal(await replayJournal(Journal.open(dir)!, mlflow.client, new ReplaySession(true)), { sent: 0, deduplicated: 0, rejected: 0, pending: 0 });
});

test('a rejected op is recorded and skipped; the ops around it are still sent', async () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking);
  journal.append(createRun(journal, 'rejections', 'journal-replay'), T0);
  journal.append({ kind: 'log-batch', params: [{ key: 'lr', value: '0.1' }] });
  // MLflow refuses to change a logged param: this op fails, and with it the batch it was merged into.
  const changed = journal.append({ kind: 'log-batch', params: [{ key: 'lr', value: '0.2' }] });
  journal.append({ kind: 'log-batch', metrics: [point(0, 1)] });
  const missing = journal.append({ kind: 'upload-artifact', path: 'gone.txt', file: join(dir, 'gone.txt') });
  journal.append({ kind: 'update-run', status: 'FINISHED', endTime: T0 + 10 });

  const result = await replayJournal(journal, mlflow.client, new ReplaySession(false));
  assert.equal([result.sent, result.rejected, result.pending, result.error], [4, 2, 0, undefined]);
  assert.equal(Journal.open(dir)!.rejected.map((r) => r.seqs), [[changed], [missing]]);
  assert.match(journal.rejected[1]!.error, /gone\.txt does not exist/);
  const run = await mlflow.client.getRun(journal.run!.runId);
  assert.equal([run.data.params, run.info.status], [[{ key: 'lr', value: '0.1' }], 'FINISHED']);
  assert.equal(await history(journal.run!.runId), [[0, 1, T0]]);
});

test('an unreachable server stops replay with everything still pending; a later replay sends it once', async () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking);
  journal.append(createRun(journal, 'offline-first', 'journal-replay'), T0);
  journal.append({ kind: 'log-batch', metrics: [point(0, 1)] });
  const nowhere = new MLflowClient({ uri: `http://127.0.0.1:${await freePort()}`, retry: { retries: 0, timeoutMs: 2000 } });
  const session = new ReplaySession(false);

  const offline = await replayJournal(journal, nowhere, session);
  assert.is(offline.error?.kind, 'unavailable');
  assert.equal([offline.sent, offline.pending], [0, 2]);
  assert.is(journal.run, undefined);

  // The failed attempt may have reached a server: the session treats it as in doubt.
  const online = await replayJournal(journal, mlflow.client, session);
  assert.equal([online.sent, online.pending, online.error], [2, 0, undefined]);
  assert.is((await runsNamed('journal-replay', 'offline-first')).length, 1);
  assert.equal(await history(journal.run!.runId), [[0, 1, T0]]);
});

test('exactly once: ops sent but never acknowledged (a crash) are found on the server, not sent again', async () => {
  const dir = newDir();
  const journal = Journal.create(dir, tracking);
  journal.append(createRun(journal, 'crashed', 'journal-replay'), T0);
  journal.append({ kind: 'log-batch', metrics: [point(0, 1), point(1, 0.5)] });
  await replayJournal(journal, mlflow.client, new ReplaySession(false));
  const runId = journal.run!.runId;

  // The sender died after the server applied the requests but before it wrote the acks; the
  // run went on recording meanwhile.
  const path = join(dir, JOURNAL_FILE);
  writeFileSync(path, readFileSync(path, 'utf8').split('\n').filter((l) => !l.includes('"t":"ack"')).join('\n'));
  const recovered = Journal.open(dir)!;
  recovered.append({ kind: 'log-batch', metrics: [point(2, 0.25), point(1, 0.5)] });
  assert.is(recovered.pending().length, 3);

  const result = await replayJournal(recovered, mlflow.client, new ReplaySession(true));
  assert.equal([result.sent, result.deduplicated, result.pending, result.error], [3, 3, 0, undefined]);
  assert.is(recovered.run?.runId, runId, 'the run was found by its pipe.journal_id tag');
  assert.is((await runsNamed('journal-replay', 'crashed')).length, 1);
  assert.equal(await history(runId), [[0, 1, T0], [1, 0.5, T0 + 1000], [2, 0.25, T0 + 2000]]);
});

test.run();
