// Signals to the runner alone (`kill PID`, a CI cancel), not to its process group: the run stops
// every running stage's whole process tree, saves its state, records the MLflow run KILLED and
// exits 128 + the signal's number; nothing of the run is left running, nothing writes later.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { project, startPipe } from '../helpers/cli.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';
import { processesWith, sleep, waitFor } from '../helpers/processes.ts';

const Signals = suite<{ mlflow?: TestMlflow }>('signals');

Signals.before(async (ctx) => {
  ctx.mlflow = await startTestMlflow();
});

Signals.after(async (ctx) => {
  await ctx.mlflow?.dispose();
});

/** How long the command's processes sleep before they write: the signal comes well before. */
const WRITE_AFTER_S = 6;

// `fast` finishes; `slow` starts a grandchild in the background and waits, and both write a file
// after WRITE_AFTER_S unless they are stopped. The marker is in their environment (and inherited by
// every process they start), so that the test finds them all.
function pipelineText(name: string, marker: string, params = ''): string {
  return `name: ${name}
${params}stages:
  fast:
    run: "echo fast > fast.txt"
    outs: [fast.txt]
  slow:
    run: "echo started > started.txt; (sleep ${WRITE_AFTER_S}; echo late > late-grandchild.txt) & sleep ${WRITE_AFTER_S}; echo late > late.txt"
    env: {PIPE_TEST_MARK: ${marker}}
    needs: [fast]
`;
}

/** Starts the CLI, waits until the slow stage's command runs, signals the runner process only. */
async function interrupt(dir: string, args: string[], signal: NodeJS.Signals, marker: string, env: Record<string, string> = {}) {
  const child = startPipe(dir, args, env);
  assert.ok(await waitFor(() => processesWith(marker).length >= 2, 90_000), 'the slow stage never started');
  const commandStarted = Date.now();
  process.kill(child.pid!, signal);
  const result = await child;
  return { result, commandStarted };
}

/** Nothing of the run is left, now or when its command would have written its files. */
async function assertNothingLeft(dir: string, marker: string, commandStarted: number) {
  assert.ok(await waitFor(() => processesWith(marker).length === 0, 5_000), `left running: ${JSON.stringify(processesWith(marker))}`);
  await sleep(Math.max(0, commandStarted + (WRITE_AFTER_S + 1) * 1000 - Date.now()));
  assert.not.ok(existsSync(path.join(dir, 'late.txt')), 'the command wrote after the run ended');
  assert.not.ok(existsSync(path.join(dir, 'late-grandchild.txt')), "the command's child wrote after the run ended");
  const tmp = path.join(dir, 'runs', 'cache', 'tmp');
  assert.equal(existsSync(tmp) ? readdirSync(tmp) : [], [], 'the staging directory is discarded');
}

const markerFor = (what: string) => `PIPE-TEST-${what}-${process.pid}-${Date.now()}`;

Signals('SIGTERM to `pipe run` alone: exit 143, nothing left, state saved, the MLflow run KILLED', async (ctx) => {
  const mlflow = ctx.mlflow!;
  const marker = markerFor('SIGTERM');
  const dir = project({ 'p.yaml': pipelineText('sigterm', marker) });
  const { result, commandStarted } = await interrupt(dir, ['run', 'p.yaml', '--json'], 'SIGTERM', marker, { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  await assertNothingLeft(dir, marker, commandStarted);
  assert.is(result.exitCode, 143, String(result.stderr));
  assert.match(String(result.stderr), /slow\s+failed.*stopped: interrupted by SIGTERM/);
  assert.match(String(result.stderr), /interrupted by SIGTERM/);
  const summary = JSON.parse(String(result.stdout)) as { interrupted?: string; stages: Array<{ name: string; status: string }> };
  assert.is(summary.interrupted, 'SIGTERM');
  // The state holds the stage that finished: the next run resumes after it.
  const state = JSON.parse(readFileSync(path.join(dir, 'runs', 'state', 'sigterm.json'), 'utf8')) as { stages: Record<string, unknown> };
  assert.equal(Object.keys(state.stages), ['fast']);
  const experiment = await mlflow.client.getExperimentByName('sigterm');
  const runs = (await mlflow.client.searchRuns({ experimentIds: [experiment!.experiment_id] })).runs;
  assert.equal(runs.map((r) => r.info.status), ['KILLED']);
});

Signals('SIGINT to `pipe run` alone: exit 130, nothing left', async () => {
  const marker = markerFor('SIGINT');
  const dir = project({ 'p.yaml': pipelineText('sigint', marker) });
  const { result, commandStarted } = await interrupt(dir, ['run', 'p.yaml'], 'SIGINT', marker);
  await assertNothingLeft(dir, marker, commandStarted);
  assert.is(result.exitCode, 130, String(result.stderr));
});

Signals('SIGHUP to `pipe run` alone: exit 129, nothing left', async () => {
  const marker = markerFor('SIGHUP');
  const dir = project({ 'p.yaml': pipelineText('sighup', marker) });
  const { result, commandStarted } = await interrupt(dir, ['run', 'p.yaml'], 'SIGHUP', marker);
  await assertNothingLeft(dir, marker, commandStarted);
  assert.is(result.exitCode, 129, String(result.stderr));
});

Signals('SIGKILL of `pipe run`: its stages notice and stop their whole tree', async () => {
  const marker = markerFor('SIGKILL');
  const dir = project({ 'p.yaml': pipelineText('sigkill', marker) });
  const { result, commandStarted } = await interrupt(dir, ['run', 'p.yaml'], 'SIGKILL', marker);
  assert.is(result.signal, 'SIGKILL');
  assert.ok(await waitFor(() => processesWith(marker).length === 0, 5_000), `left running: ${JSON.stringify(processesWith(marker))}`);
  await sleep(Math.max(0, commandStarted + (WRITE_AFTER_S + 1) * 1000 - Date.now()));
  assert.not.ok(existsSync(path.join(dir, 'late.txt')));
  assert.not.ok(existsSync(path.join(dir, 'late-grandchild.txt')));
});

Signals('SIGTERM to `pipe sweep` alone: exit 143, nothing left, the trials and the parent run KILLED', async (ctx) => {
  const mlflow = ctx.mlflow!;
  const marker = markerFor('SWEEP');
  const dir = project({ 'p.yaml': pipelineText('sigsweep', marker, 'params:\n  lr: 1\n').replace('echo fast > fast.txt', 'echo ${params.lr} > fast.txt') });
  const { result, commandStarted } = await interrupt(dir, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--jobs', '1'], 'SIGTERM', marker, { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  await assertNothingLeft(dir, marker, commandStarted);
  assert.is(result.exitCode, 143, String(result.stderr));
  const experiment = await mlflow.client.getExperimentByName('sigsweep');
  const runs = (await mlflow.client.searchRuns({ experimentIds: [experiment!.experiment_id] })).runs;
  assert.equal(runs.map((r) => r.info.status), ['KILLED', 'KILLED', 'KILLED'], runs.map((r) => `${r.info.run_name} ${r.info.status}`).join(', '));
});

Signals.run();
