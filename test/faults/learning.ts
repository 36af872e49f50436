// The small learning pipeline (TensorFlow.js stages) under fewer, heavier faults: the runner killed
// at a random moment, a stage process killed, a signal to the runner or its group, then a resumed
// run whose metrics must equal an undisturbed run's; then corrupt entries (a flipped bit in an
// artifact), which must be recomputed, never used.

import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { project } from '../helpers/cli.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { smallPipeline } from '../helpers/small-pipeline.ts';
import { CORRUPT_ENTRY, log, parseSummary, runnerFaultName, STAGE_KILL, type SharedMlflow } from './command-chain.ts';
import { stageProcessesOf, type ProcessWatch } from './processes.ts';
import type { Random } from './random.ts';
import {
  checkCacheAfter, entryNames, recordLeaks, resultMetrics, settle, signalPid, signalRun, sleep, startPipeRun,
  syncAndCheckRecords, type Ended,
} from './runs.ts';
import type { Tally } from './tally.ts';

export const LEARNING = 'learning: ';

export interface LearningContext {
  watch: ProcessWatch;
  tally: Tally;
  mlflow: SharedMlflow;
}

type LearningFault = { kind: 'runner'; signal: 'SIGKILL' | 'SIGTERM' | 'SIGINT'; group: boolean } | { kind: 'stage' };

export async function learningScenario(ctx: LearningContext, random: Random): Promise<void> {
  const { watch, tally, mlflow } = ctx;
  const images = path.join(project(), 'images');
  await writeImageFolder(images, { classes: { cats: 12, dogs: 12 }, height: 64, width: 80 });
  const env = { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri };
  const args = ['run', 'small.yaml', '--json', '-p', `data=${images}`];

  const referenceDir = project({ 'small.yaml': smallPipeline });
  const referenceRun = startPipeRun(referenceDir, args, env, watch, 'learning-ref');
  const reference = await settle(referenceRun, watch);
  if (reference.ended.exitCode !== 0) throw new Error(`the undisturbed learning run failed: ${reference.ended.stderr}`);
  const referenceMs = reference.ended.endedAt - referenceRun.startedAt;
  const expected = resultMetrics(parseSummary(reference.ended.stdout)!.metrics);
  log(`learning reference: ${referenceMs} ms, ${JSON.stringify(expected)}`);

  const dir = project({ 'small.yaml': smallPipeline });
  const cacheDir = path.join(dir, 'runs', 'cache');
  const faults: LearningFault[] = [
    { kind: 'runner', signal: 'SIGKILL', group: false },
    { kind: 'stage' },
    { kind: 'runner', signal: random.pick(['SIGTERM', 'SIGINT', 'SIGKILL'] as const), group: random.chance(0.5) },
  ];
  let faulted = false;
  for (const fault of faults) {
    const run = startPipeRun(dir, args, env, watch, 'learning');
    let label = 'no fault (it came too late)';
    if (fault.kind === 'runner') {
      await sleep(random.between(0.05, 0.7) * referenceMs);
      if (signalRun(run, fault.signal, fault.group)) label = LEARNING + runnerFaultName(fault.signal, fault.group);
    } else {
      let targets: number[] = [];
      await sleep(random.between(0, 0.3) * referenceMs);
      while (targets.length === 0 && !run.exited) {
        await sleep(100);
        targets = stageProcessesOf(run.marker);
      }
      await sleep(random.between(0, 3000));
      if (targets.length > 0 && signalPid(random.pick(targets), 'SIGKILL')) label = LEARNING + STAGE_KILL;
    }
    if (label !== 'no fault (it came too late)') {
      tally.fault(label);
      faulted = true;
    }
    const { ended, leaks } = await settle(run, watch);
    log(`${label} → exit ${ended.exitCode ?? ended.signal} after ${ended.endedAt - run.startedAt} ms`);
    recordLeaks(tally, label, 'learning', leaks);
    await checkCacheAfter(tally, label, 'learning', cacheDir, ended);
  }

  const resumed = await resumeUntilDone(ctx, dir, args, env, 'learning (resumed)');
  if (resumed) {
    if (faulted) tally.resumed++;
    compare(tally, LEARNING + 'any fault (resumed run)', resumed, expected);
  }

  // Corrupt entries: a flipped bit in an artifact of two random stages.
  const corrupted = corruptEntries(cacheDir, random, 2);
  tally.fault(LEARNING + CORRUPT_ENTRY, corrupted.length);
  const after = await resumeUntilDone(ctx, dir, args, env, 'learning (corrupt entries)', corrupted.map((c) => c.fingerprint));
  if (after) {
    compare(tally, LEARNING + CORRUPT_ENTRY, after, expected);
    const summary = parseSummary(after.stdout);
    for (const c of corrupted) {
      const stage = summary?.stages.find((s) => s.fingerprint === c.fingerprint);
      let now: Buffer | undefined;
      try {
        now = readFileSync(c.file);
      } catch {
        now = undefined;
      }
      if (stage?.status !== 'ran' || (now !== undefined && now.equals(c.corrupt))) {
        tally.problem('entries corrupted (used)', LEARNING + CORRUPT_ENTRY, `learning: stage ${stage?.name ?? c.fingerprint.slice(0, 10)} with a flipped bit in ${path.relative(cacheDir, c.file)}: ${stage?.status ?? 'not reported'}, entry ${now === undefined ? 'gone' : now.equals(c.corrupt) ? 'still corrupt' : 'rewritten'}`);
      }
    }
  }
  // Both projects' records (one experiment), the undisturbed run's too (the server may have been down when it ended).
  await mlflow.ready();
  await syncAndCheckRecords(tally, mlflow.client, mlflow.uri, [referenceDir, dir], 'small', 'small-e2e');
}

async function resumeUntilDone(ctx: LearningContext, dir: string, args: string[], env: Record<string, string>, where: string, corrupted: string[] = []): Promise<Ended | undefined> {
  for (let i = 0; i < 3; i++) {
    const { ended, leaks } = await settle(startPipeRun(dir, args, env, ctx.watch, 'learning'), ctx.watch);
    recordLeaks(ctx.tally, 'no fault (resumed run)', where, leaks);
    await checkCacheAfter(ctx.tally, LEARNING + 'any fault (resumed run)', where, path.join(dir, 'runs', 'cache'), ended, corrupted);
    if (ended.exitCode === 0) return ended;
    log(`${where}: exit ${ended.exitCode}: ${ended.stderr.slice(-300)}`);
  }
  ctx.tally.problem('broken promise', LEARNING + 'any fault (resumed run)', `${where}: three resumed runs without faults failed`);
  return undefined;
}

function compare(tally: Tally, fault: string, ended: Ended, expected: Record<string, number>): void {
  const metrics = resultMetrics(parseSummary(ended.stdout)?.metrics ?? {});
  if (JSON.stringify(metrics) !== JSON.stringify(expected)) {
    tally.problem('broken promise', fault, `learning: resumed metrics ${JSON.stringify(metrics)}, undisturbed ${JSON.stringify(expected)}`);
  }
}

interface Corrupted {
  fingerprint: string;
  file: string;
  corrupt: Buffer;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const file = path.join(dir, name);
    return statSync(file).isDirectory() ? filesUnder(file) : statSync(file).size > 0 ? [file] : [];
  });
}

function corruptEntries(cacheDir: string, random: Random, count: number): Corrupted[] {
  const fps = entryNames(cacheDir);
  const done: Corrupted[] = [];
  for (let i = 0; i < count && fps.length > 0; i++) {
    const fingerprint = fps.splice(random.int(0, fps.length - 1), 1)[0]!;
    const files = filesUnder(path.join(cacheDir, 'entries', fingerprint, 'out'));
    if (files.length === 0) continue;
    const file = random.pick(files);
    const bytes = readFileSync(file);
    const at = random.int(0, bytes.length - 1);
    bytes[at] = bytes[at]! ^ (1 << random.int(0, 7));
    writeFileSync(file, bytes);
    done.push({ fingerprint, file, corrupt: bytes });
  }
  return done;
}
