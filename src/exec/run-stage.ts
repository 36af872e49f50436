// Running one stage: under the cache lock, in a child process (src/exec/stage-process.ts) that
// writes into a private staging directory, published to the cache only on success. Used by the
// local runner and by `pipe worker`.

import { createWriteStream, promises as fs, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import type { Cache, CacheEntry } from '../cache/cache.ts';
import { readMetricsFile } from '../cache/cache.ts';
import type { RunEvent } from '../core/events.ts';
import type { Flavour } from '../core/stage-kind.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import type { PlannedStage } from '../plan/plan.ts';
import { hashPath } from '../util/hash.ts';
import type { ExecuteOptions, Outcome } from './run-book.ts';
import type { StageJob } from './stage-job.ts';
import type { ChildReport, StageSpec } from './stage-process.ts';

const stageProcessPath = fileURLToPath(new URL('./stage-process.ts', import.meta.url));
const tsxLoader = import.meta.resolve('tsx');

/** A cached stage: its recorded metrics and artifacts; command outputs put back in the workspace. */
export async function restore(stage: PlannedStage, entry: CacheEntry, options: Pick<ExecuteOptions, 'plan'>): Promise<Outcome> {
  const t0 = Date.now();
  await restoreOuts(entry, options.plan.pipeline.file.dir);
  return { ...(await cachedOutcome(entry)), durationMs: Date.now() - t0 };
}

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
    const tmp = `${target}.pipe-restore-${process.pid}`;
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
  /** The running child processes, so that an abort can stop them. */
  children: Set<ResultPromise>;
  /** Why the run is stopping, if it is. */
  aborted: () => string | undefined;
}

/**
 * Computes a stage's cache entry under its lock. Ends `cached` when another process published the
 * entry while we waited for the lock; its command outputs then go into `workspace`, if given (a
 * local run's pipeline directory; a worker leaves that to the submitter).
 */
export async function runStage(stage: StageJob, gpus: string[], run: RunContext, workspace?: string): Promise<Outcome> {
  const { cache, emit } = run;
  const release = await cache.lock(stage.fingerprint, (holder) =>
    emit({ type: 'stage-log', stage: stage.name, stream: 'log', line: `waiting: process ${holder.pid} on ${holder.host} is computing this stage` }),
  );
  try {
    // Whoever held the lock may have published the entry meanwhile (unless we are forced).
    const existing = stage.forced ? undefined : await cache.read(stage.fingerprint);
    if (existing) {
      if (workspace !== undefined) await restoreOuts(existing, workspace);
      return await cachedOutcome(existing);
    }
    return await runInChild(stage, gpus, run);
  } finally {
    await release();
  }
}

async function runInChild(stage: StageJob, gpus: string[], run: RunContext): Promise<Outcome> {
  const { cache, emit, children, aborted } = run;
  const t0 = Date.now();
  emit({ type: 'stage-start', stage: stage.name, fingerprint: stage.fingerprint, startedAt: t0 });
  const staging = await cache.stage(stage.fingerprint, stage.record);
  const tmpDir = path.join(staging.dir, 'scratch');
  await fs.mkdir(tmpDir, { recursive: true });
  const log = createWriteStream(path.join(staging.dir, 'log.txt'));
  const metricsFile = createWriteStream(path.join(staging.dir, 'metrics.jsonl'));
  const metrics: MetricPoint[] = [];
  const artifacts = new Set<string>();
  const summary: Record<string, string | number | boolean> = {};
  let doneReport: Extract<ChildReport, { t: 'done' }> | undefined;
  let errorReport: Extract<ChildReport, { t: 'error' }> | undefined;
  const stderrTail: string[] = [];

  const writeLog = (stream: 'stdout' | 'stderr' | 'log', line: string) => {
    log.write(`${new Date().toISOString()} ${stream === 'log' ? '' : `[${stream}] `}${line}\n`);
    emit({ type: 'stage-log', stage: stage.name, stream, line });
  };

  const a = stage;
  const spec: StageSpec = {
    stage: stage.name,
    kind: stage.kind,
    params: a.params,
    inputs: Object.fromEntries(Object.entries(a.inputs).map(([slot, fingerprint]) => [slot, path.join(cache.entryDir(fingerprint), 'out')])),
    outDir: staging.outDir,
    tmpDir,
    downloadCacheDir: run.downloadCacheDir,
    flavour: run.flavour,
    command: a.command,
    cwd: a.cwd,
    env: a.env,
    outs: a.outs,
    metrics: a.metrics,
  };
  const env: Record<string, string> = { TF_CPP_MIN_LOG_LEVEL: process.env['TF_CPP_MIN_LOG_LEVEL'] ?? '2', ...a.env };
  if (a.usesTensorflow) {
    // TensorFlow allocates and frees large tensors constantly; glibc's defaults return them to the
    // kernel each time and page-fault them back in (measured: 9.5 → 1.3 ms of system time per
    // image in the frozen base). Keep freed memory in the process instead.
    env['MALLOC_MMAP_THRESHOLD_'] ??= process.env['MALLOC_MMAP_THRESHOLD_'] ?? '1073741824';
    env['MALLOC_TRIM_THRESHOLD_'] ??= process.env['MALLOC_TRIM_THRESHOLD_'] ?? '2147483648';
  }
  if (gpus.length > 0 || run.gpusConfigured) env['CUDA_VISIBLE_DEVICES'] = gpus.join(',');

  const child = execa(process.execPath, ['--import', tsxLoader, stageProcessPath], {
    ipc: true,
    serialization: 'json',
    cwd: spec.cwd,
    env,
    reject: false,
    buffer: false,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    timeout: a.timeout ? a.timeout * 1000 : undefined,
    killSignal: 'SIGKILL',
    cleanup: true,
  });
  children.add(child);
  child.on('message', (message: unknown) => {
    const report = message as ChildReport;
    switch (report.t) {
      case 'log':
        writeLog('log', report.line);
        break;
      case 'progress':
        emit({ type: 'stage-progress', stage: stage.name, done: report.done, total: report.total, label: report.label });
        break;
      case 'metric': {
        const point: MetricPoint = { key: report.key, value: report.value, step: report.step, timestamp: report.timestamp };
        metrics.push(point);
        metricsFile.write(`${JSON.stringify(point)}\n`);
        emit({ type: 'stage-metric', stage: stage.name, point });
        break;
      }
      case 'artifact':
        artifacts.add(report.path);
        break;
      case 'summary':
        Object.assign(summary, report.facts);
        break;
      case 'done':
        doneReport = report;
        break;
      case 'error':
        errorReport = report;
        break;
    }
  });
  child.send(spec);
  const lines = (stream: NodeJS.ReadableStream | null, name: 'stdout' | 'stderr') =>
    new Promise<void>((resolve) => {
      if (!stream) return resolve();
      const rl = createInterface({ input: stream });
      rl.on('line', (line) => {
        writeLog(name, line);
        if (name === 'stderr') {
          stderrTail.push(line);
          if (stderrTail.length > 20) stderrTail.shift();
        }
      });
      rl.on('close', resolve);
    });
  const [result] = await Promise.all([child, lines(child.stdout, 'stdout'), lines(child.stderr, 'stderr')]);
  children.delete(child);
  await Promise.all([closeStream(log), closeStream(metricsFile)]);

  const durationMs = Date.now() - t0;
  const abortReason = aborted();
  if (doneReport && result.exitCode === 0 && !abortReason) {
    if (stage.forced) await cache.remove(stage.fingerprint);
    const entry = await cache.publish(staging, {
      durationMs,
      finishedAt: Date.now(),
      summary,
      artifacts: [...artifacts],
      outs: doneReport.outs,
    });
    return {
      status: 'ran',
      durationMs,
      metrics,
      artifacts: [...artifacts].map((name) => ({ name, path: path.join(entry.outDir, name) })),
      summary,
      outDir: entry.outDir,
    };
  }
  await cache.discard(staging);
  let error: string;
  if (result.timedOut) error = `timed out after ${a.timeout}s and was killed`;
  else if (abortReason) error = `stopped: ${abortReason}`;
  else if (errorReport) error = errorReport.message;
  else if (result.signal) error = `stage process was killed by ${result.signal}${result.signal === 'SIGKILL' ? ' (out of memory?)' : ''}`;
  else error = `stage process exited with code ${result.exitCode ?? '?'}${stderrTail.length ? `: ${stderrTail.slice(-3).join(' | ')}` : ''}`;
  if (errorReport?.stack) emit({ type: 'stage-log', stage: stage.name, stream: 'log', line: errorReport.stack });
  return { status: 'failed', durationMs, error, metrics, artifacts: [], summary };
}

function closeStream(stream: WriteStream): Promise<void> {
  return new Promise((resolve) => stream.end(resolve));
}
