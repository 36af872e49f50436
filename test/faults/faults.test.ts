// Faults by the hundred (issue 15): signals to the runner and to its process group, stage processes
// killed, stage timeouts, the MLflow server killed and restarted, a disk that fills, corrupt cache
// entries, and Redis and workers killed under --queue; on fast command pipelines (most faults) and
// on the small learning pipeline. After each fault: no process of the run is left, no tmp directory
// or half entry remains or is reused, every MLflow run ends terminal, and the resumed run's metrics
// equal an undisturbed run's.
//
// Seeded: the seed is printed; PIPE_FAULT_SEED=<n> replays the same choices (the moments are real
// time, so a loaded machine still shifts where a fault lands). PIPE_FAULT_VERBOSE=1 prints a line
// per fault.
//
// The phases collect what they saw into the tally; the tests after them assert one property each,
// so that a failure names the property and the faults that broke it.

import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { project } from '../helpers/cli.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';
import {
  COMMAND_KILL, CommandChain, commandPipeline, CORRUPT_ENTRY, log, MLFLOW_RESTART, OUTPUTS, parseSummary, STAGE_KILL, STAGE_TIMEOUT,
  type Reference, type SharedMlflow,
} from './command-chain.ts';
import { DISK_FULL, diskFullScenario, unmountAll } from './disk-full.ts';
import { learningScenario } from './learning.ts';
import { MARK_VARIABLE, ProcessWatch, scanMarked } from './processes.ts';
import { REDIS_RESTART, queueScenario, WORKER_KILL } from './queue.ts';
import { Random, suiteSeed } from './random.ts';
import { resultMetrics, settle, signalPid, sleep, startPipeRun, SUITE_MARK, syncAndCheckRecords } from './runs.ts';
import { Tally } from './tally.ts';

/** How much the suite does: sized for a few minutes on a loaded 2-core machine. */
const BUDGET = {
  /** Command pipelines faulted side by side, and the faulted runs of each. */
  chains: 3,
  /** The first chains record to MLflow; the others run untracked (the server's time is shared). */
  trackedChains: 2,
  /** The chains go on until they injected this many faults (or made maxAttemptsPerChain runs each). */
  chainFaults: 190,
  maxAttemptsPerChain: 60,
  mlflowRestarts: 2,
  diskRounds: 3,
  queueRounds: 2,
  /** The least number of faults a full run of the suite must inject. */
  minimumFaults: 200,
};

/** PIPE_FAULT_ONLY=commands,disk,queue,learning runs only those phases (while working on one). */
const only = process.env['PIPE_FAULT_ONLY']?.split(',');
const phase = (name: string) => !only || only.includes(name);

// Services the suite starts (MLflow, Redis, `pipe sync`) carry a marker too, so that whatever an
// interrupted suite leaves behind can be found and stopped.
process.env[MARK_VARIABLE] = `${SUITE_MARK}-service`;
function stopEverything(): void {
  for (const p of scanMarked()) if (p.marker.startsWith(SUITE_MARK)) signalPid(p.pid, 'SIGKILL');
  unmountAll();
}
process.once('exit', stopEverything);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    stopEverything();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  });
}

const seed = suiteSeed();
const random = new Random(seed);
const tally = new Tally();
const watch = new ProcessWatch();
const startedAt = Date.now();
console.log(`fault suite: PIPE_FAULT_SEED=${seed}`);

type BouncingMlflow = SharedMlflow & { bounce(downMs: number): Promise<void> };

interface Context {
  server?: TestMlflow;
  mlflow?: BouncingMlflow;
  reference?: Promise<Reference>;
  /** The undisturbed run's project: its MLflow record counts like any other. */
  referenceDir?: string;
  learning?: Promise<unknown>;
  disk?: Promise<unknown>;
  queue?: Promise<unknown>;
}

const Faults = suite<Context>('faults', {});

/** The suite's one MLflow server, which the command phase kills and restarts. */
function bouncing(server: TestMlflow): BouncingMlflow {
  let epoch = 0;
  let up = true;
  let waiting: Array<() => void> = [];
  return {
    uri: server.uri,
    client: server.client,
    epoch: () => epoch,
    up: () => up,
    ready: () => (up ? Promise.resolve() : new Promise<void>((r) => waiting.push(r))),
    async bounce(downMs: number) {
      up = false;
      epoch++;
      await server.kill();
      await sleep(downMs);
      await server.start();
      up = true;
      epoch++;
      for (const wake of waiting) wake();
      waiting = [];
    },
  };
}

Faults.before(async (ctx) => {
  ctx.server = await startTestMlflow();
  ctx.mlflow = bouncing(ctx.server);
  log(`MLflow server up after ${Date.now() - startedAt} ms`);
});

Faults.after(async (ctx) => {
  await ctx.server?.dispose();
  // Whatever a failed phase left running goes now.
  stopEverything();
});

/** An undisturbed run of the command pipeline: what every resumed run must give. */
function commandReference(ctx: Context): Promise<Reference> {
  ctx.reference ??= runCommandReference(ctx);
  return ctx.reference;
}

async function runCommandReference(ctx: Context): Promise<Reference> {
  const dir = project({ 'p.yaml': commandPipeline('chain-reference', 'faults-reference') });
  const run = startPipeRun(dir, ['run', 'p.yaml', '--json', '--jobs', '5'], { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: ctx.mlflow!.uri }, watch, 'reference');
  const { ended, leaks } = await settle(run, watch);
  assert.is(ended.exitCode, 0, ended.stderr);
  assert.equal(leaks, []);
  const summary = parseSummary(ended.stdout)!;
  ctx.referenceDir = dir;
  const reference = {
    metrics: resultMetrics(summary.metrics),
    outputs: Object.fromEntries(OUTPUTS.map((f) => [f, readFileSync(path.join(dir, f), 'utf8')])),
    fingerprints: Object.fromEntries(summary.stages.map((s) => [s.name, s.fingerprint])),
    durationMs: ended.endedAt - run.startedAt,
  };
  assert.equal(Object.keys(reference.metrics), ['bytes', 'lines', 'salt']);
  log(`command reference: ${reference.durationMs} ms, ${JSON.stringify(reference.metrics)}`);
  return reference;
}

/** A phase running in the background: its error is kept for the test that awaits it. */
function background(work: () => Promise<unknown>): Promise<unknown> {
  const done = work().then(() => undefined, (error: unknown) => error);
  return done.then((error) => {
    if (error !== undefined) throw error;
  });
}

Faults('command pipelines: signals to the runner and its group, stage kills, timeouts, corrupt entries, MLflow restarts', async (ctx) => {
  const mlflow = ctx.mlflow!;
  // The learning pipeline runs alongside the command chains: it mostly computes in one process at
  // a time, they mostly wait (for a stage to time out, a server to restart). More side by side
  // would only load the machine without finishing sooner.
  ctx.learning = background(async () => phase('learning') && learningScenario({ watch, tally, mlflow }, random.fork('learning')));
  if (phase('commands')) await commandChains(ctx, mlflow);
  ctx.disk = background(async () => {
    if (!phase('disk')) return;
    const skipped = await diskFullScenario({ watch, tally, mlflow }, random.fork('disk'), BUDGET.diskRounds);
    if (skipped) console.log(skipped);
  });
  ctx.queue = background(async () => phase('queue') && queueScenario({ watch, tally, mlflow, reference: await commandReference(ctx) }, random.fork('queue'), BUDGET.queueRounds));
});

async function commandChains(ctx: Context, mlflow: BouncingMlflow): Promise<void> {
  const reference = await commandReference(ctx);
  const chains = Array.from({ length: BUDGET.chains }, (_, i) => new CommandChain(`c${i + 1}`, { watch, tally, mlflow, reference }, random.fork(`chain ${i + 1}`), i < BUDGET.trackedChains));
  let running = true;
  const bounces = (async () => {
    const r = random.fork('mlflow');
    for (let n = 0; n < BUDGET.mlflowRestarts; n++) {
      await sleep(r.between(10_000, 40_000));
      if (!running) return;
      const t0 = Date.now();
      await mlflow.bounce(r.between(200, 3000));
      tally.fault(MLFLOW_RESTART);
      log(`MLflow server killed and restarted in ${Date.now() - t0} ms`);
    }
  })();
  let injected = 0;
  await Promise.all(chains.map(async (chain) => {
    for (let i = 0; i < BUDGET.maxAttemptsPerChain && injected < BUDGET.chainFaults; i++) {
      const n = await chain.attempt(chain.randomFault()); // (not `injected += await …`: that adds to a stale value)
      injected += n;
    }
  }));
  running = false;
  await bounces;
  await Promise.all(chains.map((chain) => chain.finish()));
  await syncAndCheckRecords(tally, mlflow.client, mlflow.uri, [ctx.referenceDir!], 'chain-reference', 'faults-reference');
}

Faults('a disk that fills: the cache on a small tmpfs', async (ctx) => {
  await ctx.disk;
});

Faults('--queue: a worker killed, Redis killed and restarted', async (ctx) => {
  await ctx.queue;
});

Faults('the small learning pipeline: runner and stage killed, signals, corrupt entries', async (ctx) => {
  await ctx.learning;
});

// ---- the properties, each over every fault that could break it ----

const signals = (f: string) => /runner alone|process group/.test(f);
const noLeaks = (fault: (f: string) => boolean) => assert.is(tally.count('processes leaked', fault), 0, tally.evidence(fault));

Faults('SIGKILL to the runner or its group: nothing of the run is left', () => {
  noLeaks((f) => signals(f) && f.endsWith('SIGKILL'));
});

Faults('SIGINT or SIGTERM to the runner or its group: nothing of the run is left', () => {
  noLeaks((f) => signals(f) && !f.endsWith('SIGKILL'));
});

Faults('a stage process SIGKILLed: its command does not outlive it', () => {
  noLeaks((f) => f.endsWith(STAGE_KILL));
});

Faults("a stage's command SIGKILLed: what it started does not outlive the stage", () => {
  noLeaks((f) => f === COMMAND_KILL);
});

Faults('a stage that times out: its command is stopped with it', () => {
  noLeaks((f) => f === STAGE_TIMEOUT);
});

Faults('a run without a fault (or whose fault came too late) leaves nothing running', () => {
  noLeaks((f) => f.startsWith('no fault'));
});

Faults('a corrupt cache entry is detected, recomputed, never used', () => {
  const corrupt = (f: string) => f.endsWith(CORRUPT_ENTRY);
  assert.is(tally.count('entries corrupted (used)', corrupt), 0, tally.evidence(corrupt));
});

Faults('after SIGINT or SIGTERM the run\'s MLflow record is terminal; after a resumed run or pipe sync, every record', () => {
  const any = () => true;
  assert.is(tally.count('records lost', any), 0, tally.evidence(any));
  const signalled = (f: string) => signals(f) && !f.endsWith('SIGKILL');
  assert.is(tally.count('broken promise', signalled), 0, tally.evidence(signalled));
});

Faults('a full disk fails the run cleanly (exit 1, no half entry, nothing left), and the resumed run completes', () => {
  const found = tally.problems.filter((p) => p.fault === DISK_FULL && !p.detail.includes('stack trace'));
  assert.is(found.length, 0, found.map((p) => p.detail).join('\n'));
});

Faults('a full disk is reported with a message, not a stack trace', () => {
  const found = tally.problems.filter((p) => p.fault === DISK_FULL && p.detail.includes('stack trace'));
  assert.is(found.length, 0, found.map((p) => p.detail).join('\n'));
});

Faults('--queue: a killed worker or Redis loses and leaks nothing; the resumed submit completes', () => {
  const queue = (f: string) => f === WORKER_KILL || f === REDIS_RESTART;
  assert.is(tally.problems.filter((p) => queue(p.fault)).length, 0, tally.evidence(queue));
});

Faults('every other check: no half entry, no tmp left, resumed results equal undisturbed ones', () => {
  const rest = (f: string) => f !== DISK_FULL && f !== WORKER_KILL && f !== REDIS_RESTART && !(signals(f) && !f.endsWith('SIGKILL'));
  assert.is(tally.count('broken promise', rest), 0, tally.evidence(rest));
});

Faults('tally: faults injected, runs resumed; processes leaked, entries corrupted (used), records lost are 0', () => {
  console.log(tally.report(seed, Date.now() - startedAt));
  if (!only) assert.ok(tally.injected >= BUDGET.minimumFaults, `${tally.injected} faults injected, expected at least ${BUDGET.minimumFaults}`);
  assert.ok(tally.faults.size > 0 || only !== undefined, 'no fault was injected');
  assert.is(tally.count('processes leaked'), 0);
  assert.is(tally.count('entries corrupted (used)'), 0);
  assert.is(tally.count('records lost'), 0);
});

Faults.run();
