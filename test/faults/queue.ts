// --queue under faults: a Redis server of the test's own (never the shared one of
// PIPE_TEST_REDIS_URL: it is killed) and two `pipe worker`s on one shared cache. A worker SIGKILLed
// in the middle of a run (its stage processes must go with it, its job moves to the other worker)
// or Redis killed and restarted empty (the submitter must fail or finish, never hang; a resumed
// submit completes); the results must equal an undisturbed local run's.

import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { project } from '../helpers/cli.ts';
import { startPrivateRedis, type PrivateRedis } from '../helpers/redis.ts';
import { commandPipeline, log, OUTPUTS, parseSummary, type Reference, type SharedMlflow } from './command-chain.ts';
import { stageProcessesOf, type ProcessWatch } from './processes.ts';
import type { Random } from './random.ts';
import {
  checkCacheAfter, recordLeaks, resultMetrics, settle, signalRun, sleep, startPipeRun, syncAndCheckRecords,
  type StartedRun,
} from './runs.ts';
import type { Tally } from './tally.ts';

export const WORKER_KILL = 'queue: worker SIGKILL';
export const REDIS_RESTART = 'queue: Redis SIGKILL + restart';
/** A submit that outlives this after its fault has hung. */
const SUBMIT_LIMIT_MS = 180_000;

export interface QueueContext {
  watch: ProcessWatch;
  tally: Tally;
  mlflow: SharedMlflow;
  reference: Reference;
}

interface RunningWorker {
  name: string;
  run: StartedRun;
  output: () => string;
}

class Workers {
  private n = 0;
  readonly live: RunningWorker[] = [];

  constructor(private readonly ctx: QueueContext, private readonly url: string, private readonly cache: string) {}

  async add(): Promise<RunningWorker> {
    const name = `w${++this.n}`;
    const dir = mkdtempSync(path.join(os.tmpdir(), `pipe-faults-${name}-`));
    const args = ['worker', '--queue', this.url, '--cache', this.cache, '--cpus', '2', '--name', name];
    const run = startPipeRun(dir, args, { PIPE_QUEUE_LOCK_MS: '2000' }, this.ctx.watch, `worker-${name}`);
    let text = '';
    run.child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
    const worker = { name, run, output: () => text };
    this.live.push(worker);
    const deadline = Date.now() + 120_000;
    while (!/taking stage jobs/.test(text)) {
      if (run.exited || Date.now() > deadline) throw new Error(`worker ${name} did not start: ${text}`);
      await sleep(100);
    }
    return worker;
  }

  /** SIGKILLs a worker (one that runs a stage, if any does) and starts another in its place. */
  async killOne(random: Random, where: string): Promise<boolean> {
    const busy = this.live.filter((w) => stageProcessesOf(w.run.marker).length > 0);
    const victim = random.pick(busy.length > 0 ? busy : this.live);
    if (!signalRun(victim.run, 'SIGKILL', false)) return false;
    this.live.splice(this.live.indexOf(victim), 1);
    const { leaks } = await settle(victim.run, this.ctx.watch);
    recordLeaks(this.ctx.tally, WORKER_KILL, `${where}: worker ${victim.name}`, leaks);
    await this.add();
    return true;
  }

  async stop(where: string): Promise<void> {
    for (const w of this.live) signalRun(w.run, 'SIGTERM', false);
    for (const w of this.live.splice(0)) recordLeaks(this.ctx.tally, 'no fault (worker stopped)', `${where}: worker ${w.name}`, (await settle(w.run, this.ctx.watch)).leaks);
  }
}

export async function queueScenario(ctx: QueueContext, random: Random, rounds: number): Promise<void> {
  const redis = await startPrivateRedis();
  const cache = mkdtempSync(path.join(os.tmpdir(), 'pipe-faults-shared-cache-'));
  const workers = new Workers(ctx, redis.url, cache);
  try {
    await Promise.all([workers.add(), workers.add()]);
    const dir = project({ 'p.yaml': commandPipeline('queue', 'faults-queue') });
    for (let round = 1; round <= rounds; round++) {
      await queueRound(ctx, random, { redis, workers, cache, dir, where: `queue round ${round}`, kind: round % 2 === 1 ? 'worker' : 'redis' });
    }
    await ctx.mlflow.ready();
    await syncAndCheckRecords(ctx.tally, ctx.mlflow.client, ctx.mlflow.uri, [dir], 'queue', 'faults-queue');
  } finally {
    await workers.stop('queue');
    await redis.stop();
    rmSync(cache, { recursive: true, force: true });
  }
}

interface Round {
  redis: PrivateRedis;
  workers: Workers;
  cache: string;
  dir: string;
  where: string;
  kind: 'worker' | 'redis';
}

async function queueRound(ctx: QueueContext, random: Random, round: Round): Promise<void> {
  const { tally, watch, mlflow, reference } = ctx;
  const { redis, workers, cache, dir, where } = round;
  // Every stage has to run again, on the workers.
  rmSync(path.join(cache, 'entries'), { recursive: true, force: true });
  const env = { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri };
  const args = ['run', 'p.yaml', '--json', '--queue', redis.url, '--cache', cache];
  const submit = startPipeRun(dir, args, env, watch, 'submit');
  await sleep(random.between(0.2, 1.2) * reference.durationMs);
  let label = 'no fault (it came too late)';
  if (!submit.exited && round.kind === 'worker' && (await workers.killOne(random, where))) label = WORKER_KILL;
  if (!submit.exited && round.kind === 'redis') {
    await redis.kill();
    await sleep(random.between(200, 1500));
    await redis.start();
    label = REDIS_RESTART;
  }
  if (label !== 'no fault (it came too late)') tally.fault(label);
  const hung = setTimeout(() => signalRun(submit, 'SIGKILL', true), SUBMIT_LIMIT_MS);
  const first = await settle(submit, watch);
  clearTimeout(hung);
  log(`${where}: ${label} → submit exited ${first.ended.exitCode ?? first.ended.signal} after ${first.ended.endedAt - submit.startedAt} ms`);
  recordLeaks(tally, label, `${where} (submitter)`, first.leaks);
  if (first.ended.signal === 'SIGKILL') tally.problem('broken promise', label, `${where}: the submitter hung for ${SUBMIT_LIMIT_MS} ms: ${first.ended.stderr.slice(-300)}`);
  // It finishes (0) or fails with its stage table (1); anything else is a crash.
  else if (first.ended.exitCode !== 0 && first.ended.exitCode !== 1) {
    tally.problem('broken promise', label, `${where}: the submitter exited ${first.ended.exitCode ?? first.ended.signal}: ${first.ended.stderr.slice(-400)}`);
  }
  // A submitter that failed (a worker killed, Redis gone) no longer waits for the stages the
  // workers still run: their staging directories are theirs to publish or discard, and the check
  // after the resumed submit below finds any that stayed.
  await checkCacheAfter(tally, label, where, cache, first.ended, [], label === WORKER_KILL || label === REDIS_RESTART);

  // Resumed until it succeeds; then once more, all from the cache, which must find nothing stale.
  let last = first.ended;
  for (let resume = 0; resume < 4 && (last.exitCode !== 0 || resume === 0); resume++) {
    const again = await settle(startPipeRun(dir, args, env, watch, 'submit'), watch);
    recordLeaks(tally, label, `${where} (resumed submitter)`, again.leaks);
    last = again.ended;
  }
  if (last.exitCode !== 0) {
    tally.problem('broken promise', label, `${where}: the resumed submit exited ${last.exitCode}: ${last.stderr.slice(-400)}\n${workers.live.map((w) => w.output().slice(-300)).join('\n')}`);
    return;
  }
  if (label !== 'no fault (it came too late)') tally.resumed++;
  await checkCacheAfter(tally, label, `${where} (resumed)`, cache, last);
  const metrics = resultMetrics(parseSummary(last.stdout)?.metrics ?? {});
  if (JSON.stringify(metrics) !== JSON.stringify(reference.metrics)) {
    tally.problem('broken promise', label, `${where}: metrics ${JSON.stringify(metrics)}, undisturbed ${JSON.stringify(reference.metrics)}`);
  }
  for (const file of OUTPUTS) {
    const text = existsSync(path.join(dir, file)) ? readFileSync(path.join(dir, file), 'utf8') : '(missing)';
    if (text !== reference.outputs[file]) tally.problem('entries corrupted (used)', label, `${where}: ${file} differs from the undisturbed run's`);
  }
}
