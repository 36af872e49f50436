// One stage in its own process, through the real stage process: timeouts and stops end the
// stage's whole process tree, not just the stage process.
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cache } from '../../src/cache/cache.ts';
import type { FingerprintRecord } from '../../src/cache/fingerprint.ts';
import type { RunEvent } from '../../src/core/events.ts';
import { runStage, STOP_GRACE_MS, type RunContext, type StageProcess } from '../../src/exec/run-stage.ts';
import type { StageJob } from '../../src/exec/stage-job.ts';
import { processesWith, sleep, waitFor } from '../helpers/processes.ts';

function commandJob(dir: string, command: string[], timeout?: number): StageJob {
  const record = { schema: 1, kind: 'command', version: 0, params: {}, command, inputs: {} } as unknown as FingerprintRecord;
  return {
    name: 'hang', fingerprint: `f${Date.now()}${Math.random().toString(16).slice(2)}`, record, forced: false, kind: 'command',
    usesTensorflow: false, params: {}, inputs: {}, upstream: [], command, cwd: dir, env: { PATH: process.env['PATH'] ?? '' },
    outs: [], metrics: [], ...(timeout ? { timeout } : {}), cpu: 1, gpu: 0,
  };
}

function context(dir: string, events: RunEvent[] = [], abortReason?: () => string | undefined): RunContext {
  return {
    cache: new Cache(path.join(dir, 'cache')), downloadCacheDir: path.join(dir, 'downloads'), flavour: 'cpu', gpusConfigured: false,
    emit: (event) => events.push(event), children: new Set<StageProcess>(), aborted: abortReason ?? (() => undefined),
  };
}

// The command starts a grandchild (a subshell in the background) that writes a file later, and
// waits for it: the stage process, the shell and the grandchild all have to go at the timeout.
const treeCommand = (marker: string) => ['sh', '-c', `(sleep 40; echo late > late.txt) & sleep 40; echo ${marker}`];

test('a stage timeout stops the whole process tree of the stage and ends the stage at once', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-timeout-'));
  const marker = `PIPE-TEST-TIMEOUT-${process.pid}-${Date.now()}`;
  // The timeout counts from the stage process's start, which takes seconds on a loaded machine:
  // long enough that the command is running when it strikes.
  const timeout = 10;
  const started = Date.now();
  const outcome = await runStage(commandJob(dir, treeCommand(marker), timeout), { cpus: 1, gpus: [] }, context(dir));
  const elapsed = Date.now() - started;
  assert.is(outcome.status, 'failed');
  assert.is(outcome.error, `timed out after ${timeout}s and was killed`);
  assert.ok(elapsed < timeout * 1000 + STOP_GRACE_MS + 4000, `the stage ended ${elapsed} ms after it started (the command sleeps 40 s)`);
  assert.equal(processesWith(marker), [], 'no process of the stage is left');
  await sleep(500);
  assert.not.ok(existsSync(path.join(dir, 'late.txt')));
});

test('stopping a stage (an aborted run) stops its tree, the staging directory is discarded', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-stop-'));
  const marker = `PIPE-TEST-STOP-${process.pid}-${Date.now()}`;
  let reason: string | undefined;
  const run = context(dir, [], () => reason);
  const running = runStage(commandJob(dir, treeCommand(marker)), { cpus: 1, gpus: [] }, run);
  assert.ok(await waitFor(() => processesWith(marker).length >= 2, 60_000), 'the command never started');
  reason = 'interrupted by SIGTERM';
  const stoppedAt = Date.now();
  for (const child of run.children) child.stop(reason);
  const outcome = await running;
  assert.ok(Date.now() - stoppedAt < STOP_GRACE_MS + 3000, `stopping took ${Date.now() - stoppedAt} ms`);
  assert.is(outcome.error, 'stopped: interrupted by SIGTERM');
  assert.equal(processesWith(marker), []);
  assert.equal(await run.cache.list(), []);
  assert.equal(readdirSync(path.join(dir, 'cache', 'tmp')), [], 'the staging directory is discarded');
});

test('a damaged upstream entry is never read by a dependent stage: removed, the stage fails saying so', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-input-'));
  const run = context(dir);
  const upstream = 'a'.repeat(64);
  const staging = await run.cache.stage(upstream, { schema: 1, kind: 'command', version: 0, params: {}, inputs: {} } as unknown as FingerprintRecord);
  await writeFile(path.join(staging.outDir, 'features.bin'), 'features');
  await run.cache.publish(staging, { durationMs: 1, finishedAt: 1, summary: {}, artifacts: [] });
  await writeFile(path.join(run.cache.entryDir(upstream), 'out', 'features.bin'), 'featureZ');
  const job = { ...commandJob(dir, ['true']), inputs: { features: upstream } };
  const outcome = await runStage(job, { cpus: 1, gpus: [] }, { ...run, cache: new Cache(run.cache.root) });
  assert.is(outcome.status, 'failed');
  assert.match(outcome.error ?? '', /^input 'features': cache entry aaaaaaaaaa is damaged: out\/features\.bin has changed since it was published .*; removed it; run again to recompute it$/);
  assert.is(await run.cache.has(upstream), false);
});

/** Runs a command stage that writes the TensorFlow thread variables it got to threads.txt; returns them. */
async function threadsSeen(dir: string, run: RunContext, env: Record<string, string> = {}): Promise<string> {
  const job = commandJob(dir, ['sh', '-c', 'echo "${TF_NUM_INTRAOP_THREADS:-unset}/${TF_NUM_INTEROP_THREADS:-unset}" > threads.txt']);
  const outcome = await runStage({ ...job, env: { ...job.env, ...env } }, { cpus: 1, gpus: [] }, run);
  assert.is(outcome.status, 'ran', outcome.error);
  return readFileSync(path.join(dir, 'threads.txt'), 'utf8').trim();
}

test('a process held to N cores (pipe worker --cpus N) gives its stages TF_NUM_INTRAOP_THREADS=N, TF_NUM_INTEROP_THREADS=1', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-threads-'));
  // The test's own environment must not set them, or it would be what the stage sees.
  assert.is(process.env['TF_NUM_INTRAOP_THREADS'], undefined);
  assert.is(process.env['TF_NUM_INTEROP_THREADS'], undefined);
  assert.is(await threadsSeen(dir, { ...context(dir), tfThreads: 3 }), '3/1');
  // not held (a local run, a worker without --cpus): TensorFlow's own default
  assert.is(await threadsSeen(dir, context(dir)), 'unset/unset');
  // the pipeline's `env:` wins
  assert.is(await threadsSeen(dir, { ...context(dir), tfThreads: 1 }, { TF_NUM_INTRAOP_THREADS: '2' }), '2/1');
});

test.run();
