// Running one stage: under the cache lock, in a child process (src/exec/stage-process.ts) that
// writes into a private staging directory, published to the cache only on success. Used by the
// local runner and by `pipe worker`.

import { createWriteStream, promises as fs, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import type { Cache, CacheEntry, Staging } from '../cache/cache.ts';
import { cacheWriteProblem, prunedKey, readMetricsFile } from '../cache/cache.ts';
import { messageOf } from '../core/errors.ts';
import type { RunEvent } from '../core/events.ts';
import type { Flavour } from '../core/stage-kind.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import type { PlannedStage } from '../plan/plan.ts';
import { hashPath } from '../util/hash.ts';
import type { EpochGate, ExecuteOptions, Outcome } from './run-book.ts';
import type { Granted } from './slots.ts';
import type { StageJob } from './stage-job.ts';
import type { ChildReport, EpochDecision, StageSpec } from './stage-process.ts';

const stageProcessPath = fileURLToPath(new URL('./stage-process.ts', import.meta.url));
const tsxLoader = import.meta.resolve('tsx');

/** A cached stage: its recorded metrics and artifacts; command outputs put back in the workspace. */
export async function restore(stage: PlannedStage, entry: CacheEntry, options: Pick<ExecuteOptions, 'plan'>): Promise<Outcome> {
  const t0 = Date.now();
  await restoreOuts(entry, options.plan.pipeline.file.dir);
  return { ...(await cachedOutcome(entry)), durationMs: Date.now() - t0 };
}

/** Distinguishes concurrent restores of one output by this process (sweeps restore trials in parallel). */
let restoreCount = 0;

/** Puts a command stage's declared outputs back into the workspace `dir`, where they differ. */
export async function restoreOuts(entry: CacheEntry, dir: string): Promise<void> {
  for (const [out, hash] of Object.entries(entry.result.outs ?? {})) {
    const target = path.resolve(dir, out);
    let current: string | undefined;
    try {
      current = await hashPath(target);
    } catch {
      current = undefined;
    }
    if (current === hash) continue;
    // Copy next to the target, then swap it in, so a reader never sees half a file.
    const tmp = `${target}.pipe-restore-${process.pid}-${++restoreCount}`;
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.cp(path.join(entry.outDir, out), tmp, { recursive: true });
    await fs.rm(target, { recursive: true, force: true });
    await fs.rename(tmp, target);
  }
}

/** How a stage ends when its entry is already in the cache. */
async function cachedOutcome(entry: CacheEntry): Promise<Outcome> {
  return {
    status: 'cached',
    durationMs: 0,
    metrics: await readMetricsFile(path.join(entry.dir, 'metrics.jsonl')),
    artifacts: entry.result.artifacts.map((name) => ({ name, path: path.join(entry.outDir, name) })),
    summary: { ...entry.result.summary, original_duration_s: Math.round(entry.result.durationMs / 100) / 10 },
    outDir: entry.outDir,
  };
}

/** What running one stage needs from the process around it. */
export interface RunContext {
  cache: Cache;
  downloadCacheDir: string;
  flavour: Flavour;
  /** This process hands out GPUs: every child gets CUDA_VISIBLE_DEVICES (empty when it got none). */
  gpusConfigured: boolean;
  emit: (event: RunEvent) => void;
  /** The running stage processes, so that an abort can stop them. */
  children: Set<StageProcess>;
  /** Why the run is stopping, if it is. */
  aborted: () => string | undefined;
  /** A sweep's early stopping, when it has a scheduler. */
  epochGate?: EpochGate;
  /**
   * TensorFlow's intra-op threads in each stage process (inter-op: 1), when this process is held to
   * a number of cores (`pipe worker --cpus N`); unset, TensorFlow sizes its pools to every core.
   */
  tfThreads?: number;
}

/** How long a stopped stage's processes get between SIGTERM and SIGKILL. */
export const STOP_GRACE_MS = Number(process.env['PIPE_STOP_GRACE_MS'] ?? 2000);

/**
 * A running stage process. It leads a process group of its own, which holds everything the stage
 * started (its command, the command's children and theirs), so that stopping the group stops the
 * whole tree; nothing of a stage outlives it, not even processes a command left in the background.
 */
export class StageProcess {
  /** Why the stage is being stopped (a timeout, an interrupted run), once it is. */
  stopReason: string | undefined;
  private killTimer: NodeJS.Timeout | undefined;

  constructor(readonly child: ResultPromise) {}

  /** SIGTERM to the whole group; SIGKILL to what is left of it after STOP_GRACE_MS. */
  stop(reason: string): void {
    if (this.stopReason !== undefined) return;
    this.stopReason = reason;
    this.signalGroup('SIGTERM');
    this.killTimer = setTimeout(() => this.signalGroup('SIGKILL'), STOP_GRACE_MS);
  }

  /** The stage process has exited: whatever it left running goes too. */
  reap(): void {
    if (this.killTimer) clearTimeout(this.killTimer);
    this.signalGroup('SIGKILL');
  }

  private signalGroup(signal: NodeJS.Signals): void {
    if (this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      // the group is gone already
    }
  }
}

/**
 * Computes a stage's cache entry under its lock. Ends `cached` when another process published the
 * entry while we waited for the lock; its command outputs then go into `workspace`, if given (a
 * local run's pipeline directory; a worker leaves that to the submitter).
 */
export async function runStage(stage: StageJob, granted: Granted, run: RunContext, workspace?: string): Promise<Outcome> {
  try {
    return await computeEntry(stage, granted, run, workspace);
  } catch (error) {
    // The cache (or the workspace) cannot be written: this stage fails with why, the run goes on
    // and its stage table says so.
    const problem = (await cacheWriteProblem(run.cache.root, error)) ?? messageOf(error);
    return { status: 'failed', durationMs: 0, error: problem, metrics: [], artifacts: [], summary: {} };
  }
}

async function computeEntry(stage: StageJob, granted: Granted, run: RunContext, workspace?: string): Promise<Outcome> {
  const { cache, emit } = run;
  const say = (line: string) => emit({ type: 'stage-log', stage: stage.name, stream: 'log', line });
  const release = await cache.lock(stage.fingerprint, (holder) => say(`waiting: process ${holder.pid} on ${holder.host} is computing this stage`), run.aborted);
  try {
    // Whoever held the lock may have published the entry meanwhile (unless we are forced).
    const existing = stage.forced ? undefined : await cache.readIntact(stage.fingerprint, (problem) => say(`${problem}: the stage runs again`));
    if (existing) {
      if (workspace !== undefined) await restoreOuts(existing, workspace);
      return await cachedOutcome(existing);
    }
    // The inputs are held while the stage reads them: pipe gc (--max-size) leaves them alone.
    const releaseInputs = await cache.hold([...Object.values(stage.inputs), ...(stage.parts ?? [])]);
    try {
      const damagedInput = (await damagedInputs(stage, cache)) ?? (await missingParts(stage, cache));
      if (damagedInput) return { status: 'failed', durationMs: 0, error: damagedInput, metrics: [], artifacts: [], summary: {} };
      const outcome = await runInChild(stage, granted, run);
      // The parts of a sharded pass are in the merged entry now.
      if (outcome.status === 'ran') for (const part of stage.parts ?? []) await cache.remove(part);
      return outcome;
    } finally {
      await releaseInputs();
    }
  } finally {
    await release();
  }
}

/**
 * Checks the upstream entries a stage reads before it reads them (each once per run: a local run
 * checked them when it restored them). A damaged one is removed; this stage fails, and the next
 * run recomputes the upstream stage.
 */
async function damagedInputs(stage: StageJob, cache: Cache): Promise<string | undefined> {
  for (const [slot, fingerprint] of Object.entries(stage.inputs)) {
    let problem: string | undefined;
    const entry = await cache.readIntact(fingerprint, (why) => (problem = why));
    if (problem) return `input '${slot}': ${problem}; run again to recompute it`;
    if (!entry) return `input '${slot}': cache entry ${fingerprint.slice(0, 10)} is missing; run again to recompute it`;
  }
  return undefined;
}

/**
 * The merge of a sharded pass needs every part intact. A part that is missing or damaged fails the
 * merge (a shard job that ran lost its part, e.g. to a concurrent `pipe gc`): the next run of the
 * stage computes it again.
 */
async function missingParts(stage: StageJob, cache: Cache): Promise<string | undefined> {
  for (const [index, fingerprint] of (stage.parts ?? []).entries()) {
    let problem: string | undefined;
    const entry = await cache.readIntact(fingerprint, (why) => (problem = why));
    if (!entry) return `part ${index + 1} of ${stage.parts!.length}: ${problem ?? `cache entry ${fingerprint.slice(0, 10)} is missing`}; run again to recompute it`;
  }
  return undefined;
}

/** What a stage process reported and printed while it ran. */
interface StageReports {
  metrics: MetricPoint[];
  artifacts: Set<string>;
  summary: Record<string, string | number | boolean>;
  done?: Extract<ChildReport, { t: 'done' }>;
  error?: Extract<ChildReport, { t: 'error' }>;
  /** The last lines of its stderr, for the error message of a crash. */
  stderrTail: string[];
}

/** How the stage process ended. */
interface StageExit {
  exitCode?: number;
  signal?: string;
  timedOut: boolean;
}

async function runInChild(stage: StageJob, granted: Granted, run: RunContext): Promise<Outcome> {
  const t0 = Date.now();
  run.emit({ type: 'stage-start', stage: stage.name, fingerprint: stage.fingerprint, startedAt: t0 });
  const staging = await run.cache.stage(stage.fingerprint, stage.record);
  try {
    return await runInStaging(stage, granted, run, staging, t0);
  } catch (error) {
    // A full disk, a cache gone read-only: nothing half-written stays behind.
    await run.cache.discard(staging).catch(() => undefined);
    throw error;
  }
}

async function runInStaging(stage: StageJob, granted: Granted, run: RunContext, staging: Staging, t0: number): Promise<Outcome> {
  const tmpDir = path.join(staging.dir, 'scratch');
  await fs.mkdir(tmpDir, { recursive: true });
  const log = createWriteStream(path.join(staging.dir, 'log.txt'));
  const metricsFile = createWriteStream(path.join(staging.dir, 'metrics.jsonl'));
  const writeLog = (stream: 'stdout' | 'stderr' | 'log', line: string) => {
    log.write(`${new Date().toISOString()} ${stream === 'log' ? '' : `[${stream}] `}${line}\n`);
    run.emit({ type: 'stage-log', stage: stage.name, stream, line });
  };
  const reports: StageReports = { metrics: [], artifacts: new Set(), summary: {}, stderrTail: [] };
  const exit = await spawnStage(stage, stageSpec(stage, granted, run, staging, tmpDir), granted.gpus, run, {
    onReport: (report) => handleReport(report, reports, stage.name, { writeLog, metricsFile, emit: run.emit }),
    onEpoch: async (epoch, of) => {
      const stop = (await run.epochGate?.decide(stage.name, epoch, of, reports.metrics)) ?? false;
      if (stop && epoch < of) writeLog('log', `early stopping: the sweep's scheduler ${run.epochGate?.pauses?.(stage.name) ? 'pauses' : 'stops'} this trial after epoch ${epoch} of ${of}`);
      return stop;
    },
    onLine: (stream, line) => {
      writeLog(stream, line);
      if (stream === 'stderr') {
        reports.stderrTail.push(line);
        if (reports.stderrTail.length > 20) reports.stderrTail.shift();
      }
    },
  });
  await Promise.all([closeStream(log), closeStream(metricsFile)]);
  const durationMs = Date.now() - t0;
  const abortReason = run.aborted();
  if (reports.done && exit.exitCode === 0 && !abortReason) {
    return reports.done.pruned ? publishPruned(stage, staging, reports, durationMs, run.cache) : publishOutcome(stage, staging, reports, durationMs, run.cache);
  }
  await run.cache.discard(staging);
  // The stack of a stage that was stopped only says that it was.
  const stopped = exit.timedOut || abortReason !== undefined;
  if (reports.error?.stack && !stopped) run.emit({ type: 'stage-log', stage: stage.name, stream: 'log', line: reports.error.stack });
  const error = failureMessage(exit, reports, { timeout: stage.timeout, abortReason });
  return { status: 'failed', durationMs, error, metrics: reports.metrics, artifacts: [], summary: reports.summary };
}

/** What the stage process is told to do. */
function stageSpec(stage: StageJob, granted: Granted, run: RunContext, staging: Staging, tmpDir: string): StageSpec {
  return {
    stage: stage.name,
    kind: stage.kind,
    cpus: granted.cpus,
    params: stage.params,
    inputs: Object.fromEntries(Object.entries(stage.inputs).map(([slot, fingerprint]) => [slot, path.join(run.cache.entryDir(fingerprint), 'out')])),
    outDir: staging.outDir,
    tmpDir,
    downloadCacheDir: run.downloadCacheDir,
    flavour: run.flavour,
    command: stage.command,
    cwd: stage.cwd,
    env: stage.env,
    outs: stage.outs,
    metrics: stage.metrics,
    ...(run.epochGate?.watches(stage.name) ? { scheduled: true } : {}),
    checkpointDir: run.cache.checkpointDir(stage.fingerprint),
    ...(stage.shard ? { shard: stage.shard } : {}),
    ...(stage.parts ? { parts: stage.parts.map((fingerprint) => path.join(run.cache.entryDir(fingerprint), 'out')) } : {}),
  };
}

function stageEnv(stage: StageJob, gpus: string[], run: RunContext): Record<string, string> {
  const env: Record<string, string> = { TF_CPP_MIN_LOG_LEVEL: process.env['TF_CPP_MIN_LOG_LEVEL'] ?? '2', ...stage.env };
  if (stage.usesTensorflow) {
    // TensorFlow allocates and frees large tensors constantly; glibc's defaults return them to the
    // kernel each time and page-fault them back in (measured: 9.5 → 1.3 ms of system time per
    // image in the frozen base). Keep freed memory in the process instead.
    env['MALLOC_MMAP_THRESHOLD_'] ??= process.env['MALLOC_MMAP_THRESHOLD_'] ?? '1073741824';
    env['MALLOC_TRIM_THRESHOLD_'] ??= process.env['MALLOC_TRIM_THRESHOLD_'] ?? '2147483648';
  }
  if (run.tfThreads !== undefined && (stage.usesTensorflow || stage.command !== undefined)) {
    // Without these TensorFlow starts a thread per core of the machine in every stage process, so
    // a worker given one core would still spread over all of them. A command may run TensorFlow
    // itself (a Python script); other programs ignore the variables. The pipeline's `env:` and the
    // worker's own environment win.
    env['TF_NUM_INTRAOP_THREADS'] ??= process.env['TF_NUM_INTRAOP_THREADS'] ?? String(run.tfThreads);
    env['TF_NUM_INTEROP_THREADS'] ??= process.env['TF_NUM_INTEROP_THREADS'] ?? '1';
  }
  if (gpus.length > 0 || run.gpusConfigured) env['CUDA_VISIBLE_DEVICES'] = gpus.join(',');
  return env;
}

/**
 * Starts the stage process (the leader of a new process group), sends it the spec, and waits until
 * it and everything it started are gone. A stage `timeout:` stops the whole group.
 */
async function spawnStage(
  stage: StageJob,
  spec: StageSpec,
  gpus: string[],
  run: RunContext,
  on: {
    onReport: (report: ChildReport) => void;
    onLine: (stream: 'stdout' | 'stderr', line: string) => void;
    /** A watched stage finished an epoch: whether it stops. */
    onEpoch: (epoch: number, of: number) => Promise<boolean>;
  },
): Promise<StageExit> {
  const child = execa(process.execPath, ['--import', tsxLoader, stageProcessPath], {
    ipc: true,
    serialization: 'json',
    cwd: spec.cwd,
    env: stageEnv(stage, gpus, run),
    reject: false,
    buffer: false,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    // A group of its own (stopped as one); the runner's signal handling stops it, and the stage
    // process stops itself when the runner goes away without doing so (see stage-process.ts).
    detached: true,
    cleanup: false,
  });
  const processHandle = new StageProcess(child);
  run.children.add(processHandle);
  const timeoutReason = `timed out after ${stage.timeout}s`;
  const timer = stage.timeout ? setTimeout(() => processHandle.stop(timeoutReason), stage.timeout * 1000) : undefined;
  // Leftovers of the group die with the stage process, before its output pipes are waited for.
  child.on('exit', () => processHandle.reap());
  child.on('message', (message: unknown) => {
    const report = message as ChildReport;
    if (report.t !== 'epoch') return on.onReport(report);
    // A scheduler's failure never stops a stage: it goes on.
    void on.onEpoch(report.epoch, report.of).catch(() => false).then((stop) => {
      const decision: EpochDecision = { t: 'decision', epoch: report.epoch, stop };
      try {
        child.send(decision);
      } catch {
        // the stage process is gone: nobody waits for the answer
      }
    });
  });
  child.send(spec);
  try {
    const [result] = await Promise.all([child, readLines(child.stdout, (line) => on.onLine('stdout', line)), readLines(child.stderr, (line) => on.onLine('stderr', line))]);
    return { exitCode: result.exitCode, signal: result.signal, timedOut: processHandle.stopReason === timeoutReason };
  } finally {
    if (timer) clearTimeout(timer);
    run.children.delete(processHandle);
  }
}

function readLines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!stream) return resolve();
    const rl = createInterface({ input: stream });
    rl.on('line', onLine);
    rl.on('close', resolve);
  });
}

/** Records one report of the stage process. */
function handleReport(
  report: ChildReport,
  reports: StageReports,
  stageName: string,
  out: { writeLog: (stream: 'log', line: string) => void; metricsFile: WriteStream; emit: (event: RunEvent) => void },
): void {
  switch (report.t) {
    case 'log':
      out.writeLog('log', report.line);
      break;
    case 'progress':
      out.emit({ type: 'stage-progress', stage: stageName, done: report.done, total: report.total, label: report.label });
      break;
    case 'metric': {
      const point: MetricPoint = { key: report.key, value: report.value, step: report.step, timestamp: report.timestamp };
      reports.metrics.push(point);
      out.metricsFile.write(`${JSON.stringify(point)}\n`);
      out.emit({ type: 'stage-metric', stage: stageName, point });
      break;
    }
    case 'artifact':
      reports.artifacts.add(report.path);
      break;
    case 'summary':
      Object.assign(reports.summary, report.facts);
      break;
    case 'done':
      reports.done = report;
      break;
    case 'error':
      reports.error = report;
      break;
  }
}

/** Publishes a finished stage's staging directory as its cache entry. */
async function publishOutcome(stage: StageJob, staging: Staging, reports: StageReports, durationMs: number, cache: Cache): Promise<Outcome> {
  if (stage.forced) await cache.remove(stage.fingerprint);
  const artifacts = [...reports.artifacts];
  const entry = await cache.publish(staging, { durationMs, finishedAt: Date.now(), summary: reports.summary, artifacts, outs: reports.done?.outs });
  // Complete: the training checkpoints that led here are of no more use.
  await cache.removeCheckpoints(stage.fingerprint);
  return {
    status: 'ran',
    durationMs,
    metrics: reports.metrics,
    artifacts: artifacts.map((name) => ({ name, path: path.join(entry.outDir, name) })),
    summary: reports.summary,
    outDir: entry.outDir,
  };
}

/**
 * Publishes a pruned stage's staging directory apart from the full result: under the key of its
 * fingerprint and the epoch it stopped at, so that the stage still misses the cache as a whole
 * and a later run that lets it train on never takes the pruned result for the full one.
 */
async function publishPruned(stage: StageJob, staging: Staging, reports: StageReports, durationMs: number, cache: Cache): Promise<Outcome> {
  const pruned = reports.done?.pruned;
  if (!pruned) throw new Error('bug: publishPruned of a stage that was not pruned');
  const key = prunedKey(stage.fingerprint, pruned.epoch);
  await cache.remove(key);
  const artifacts = [...reports.artifacts];
  const entry = await cache.publish({ ...staging, fingerprint: key }, { durationMs, finishedAt: Date.now(), summary: reports.summary, artifacts, pruned });
  return {
    status: 'pruned',
    durationMs,
    metrics: reports.metrics,
    artifacts: artifacts.map((name) => ({ name, path: path.join(entry.outDir, name) })),
    summary: reports.summary,
    outDir: entry.outDir,
    pruned,
  };
}

/** The stage table's line for a stage that did not finish. */
function failureMessage(exit: StageExit, reports: StageReports, context: { timeout?: number; abortReason?: string }): string {
  if (exit.timedOut) return `timed out after ${context.timeout}s and was killed`;
  if (context.abortReason) return `stopped: ${context.abortReason}`;
  if (reports.error) return reports.error.message;
  if (exit.signal) return `stage process was killed by ${exit.signal}${exit.signal === 'SIGKILL' ? ' (out of memory?)' : ''}`;
  const tail = reports.stderrTail.length ? `: ${reports.stderrTail.slice(-3).join(' | ')}` : '';
  return `stage process exited with code ${exit.exitCode ?? '?'}${tail}`;
}

function closeStream(stream: WriteStream): Promise<void> {
  return new Promise((resolve) => stream.end(resolve));
}
