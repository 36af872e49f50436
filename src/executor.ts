// The executor: runs a plan. Stages start when their upstream stages are done, in parallel within
// the CPU and GPU slots; each runs in its own child process (src/execution/stage-process.ts) and
// writes into a private staging directory that is published to the cache only on success.
// The executor emits events; it never prints.

import { createWriteStream, promises as fs, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import type { Cache, CacheEntry } from './cache.ts';
import type { FingerprintRecord } from './fingerprint.ts';
import { readMetricsFile } from './cache.ts';
import type { StageSpec, ChildReport } from './execution/stage-process.ts';
import type { RunEvent, RunListener, RunStartEvent, RunSummary, StageEndEvent, StageSummary } from './events.ts';
import { hashPath } from './hash.ts';
import { recordState, type Plan, type PlannedStage } from './plan.ts';
import type { MetricPoint } from './stage-kind.ts';
import { Slots } from './slots.ts';

const stageProcessPath = fileURLToPath(new URL('./execution/stage-process.ts', import.meta.url));
const tsxLoader = import.meta.resolve('tsx');

export interface ExecuteOptions {
  plan: Plan;
  cache: Cache;
  /** The run-start event minus what the executor fills in (type, stages). */
  run: Omit<RunStartEvent, 'type' | 'stages'>;
  statePath: string;
  downloadCacheDir: string;
  backend: 'cpu' | 'gpu';
  cpuSlots: number;
  /** Ids of the GPUs this run may hand out (CUDA_VISIBLE_DEVICES values). */
  gpuIds: string[];
  failFast: boolean;
  listeners: RunListener[];
  /** False for a sweep's merged run, whose stages belong to different trials: no run metrics. */
  summaryMetrics?: boolean;
  /** Aborts the run (SIGINT): running stages are stopped, nothing more starts. */
  signal?: AbortSignal;
  /** Run the stages on `pipe worker`s through a Redis queue instead of here. */
  queue?: import('./cluster/submit.ts').QueueTarget;
}

/** How a stage ended: the stage-end event without what the executor adds (its name, fingerprint). */
export type Outcome = Omit<StageEndEvent, 'type' | 'stage' | 'fingerprint'>;

export async function execute(options: ExecuteOptions): Promise<RunSummary> {
  if (options.queue) {
    const { executeOnQueue } = await import('./cluster/submit.ts');
    return executeOnQueue(options, options.queue);
  }
  const { plan, cache } = options;
  const book = new RunBook(options);
  const slots = new Slots(options.cpuSlots, options.gpuIds);
  const done = new Map<string, Promise<Outcome>>();
  const children = new Set<ResultPromise>();
  book.onAbort(() => {
    for (const child of children) child.kill('SIGTERM');
  });

  const runContext: RunContext = {
    cache,
    downloadCacheDir: options.downloadCacheDir,
    backend: options.backend,
    gpusConfigured: options.gpuIds.length > 0,
    emit: book.emit,
    children,
    aborted: () => book.abortReason,
  };

  for (const stage of plan.stages) {
    const upstream = stage.stage.upstream.map((name) => done.get(name) ?? Promise.resolve(skippedOutcome('missing')));
    done.set(stage.name, (async () => {
      const ups = await Promise.all(upstream);
      const broken = stage.stage.upstream.filter((_, i) => ups[i]?.status === 'failed' || ups[i]?.status === 'skipped');
      if (broken.length > 0) return book.finish(stage, skippedOutcome(`upstream stage '${broken.join("', '")}' did not complete`));
      if (book.abortReason) return book.finish(stage, skippedOutcome(`not started: ${book.abortReason}`));
      if (stage.cached) {
        const entry = await cache.read(stage.fingerprint);
        if (entry) return book.finish(stage, await restore(stage, entry, options));
      }
      const job = stageJob(plan, stage, options.backend);
      const grant = await slots.acquire(job.cpu, job.gpu);
      try {
        if (book.abortReason) return book.finish(stage, skippedOutcome(`not started: ${book.abortReason}`));
        return book.finish(stage, await runStage(job, grant.gpus, runContext, plan.pipeline.file.dir));
      } finally {
        grant.release();
      }
    })());
  }

  await Promise.all(done.values());
  return book.close();
}

export function skippedOutcome(error: string): Outcome {
  return { status: 'skipped', durationMs: 0, error, metrics: [], artifacts: [], summary: {} };
}

/**
 * The bookkeeping every way of executing a plan shares (here, or through a queue of workers): the
 * run-start and stage-end events, the per-pipeline state of finished stages, --fail-fast and
 * interruption, and the summary at the end.
 */
export class RunBook {
  private readonly started = Date.now();
  private readonly pending: Promise<unknown>[] = [];
  private readonly outcomes = new Map<string, Outcome>();
  private readonly abortHandlers: Array<(reason: string) => void> = [];
  private stateWrites = Promise.resolve();
  abortReason: string | undefined;

  constructor(private readonly options: ExecuteOptions) {
    options.signal?.addEventListener('abort', () => this.abort('interrupted'));
    this.emit({
      ...options.run,
      type: 'run-start',
      stages: options.plan.stages.map((s) => ({
        name: s.name,
        kind: s.kindName,
        fingerprint: s.fingerprint,
        cached: s.cached,
        reasons: s.reasons,
        params: s.stage.params,
        needs: s.stage.upstream,
      })),
    });
  }

  readonly emit = (event: RunEvent): void => {
    for (const listener of this.options.listeners) {
      try {
        const result = listener(event);
        if (result) this.pending.push(result.catch(() => undefined));
      } catch {
        // A subscriber's failure never fails the run.
      }
    }
  };

  onAbort(handler: (reason: string) => void): void {
    this.abortHandlers.push(handler);
  }

  abort(reason: string): void {
    if (this.abortReason) return;
    this.abortReason = reason;
    for (const handler of this.abortHandlers) handler(reason);
  }

  outcome(stage: string): Outcome | undefined {
    return this.outcomes.get(stage);
  }

  finish(stage: PlannedStage, outcome: Outcome): Outcome {
    this.outcomes.set(stage.name, outcome);
    this.emit({ type: 'stage-end', stage: stage.name, fingerprint: stage.fingerprint, ...outcome });
    if (outcome.status === 'ran' || outcome.status === 'cached') {
      this.stateWrites = this.stateWrites.then(() => recordState(this.options.statePath, stage.name, stage.fingerprint, stage.record)).catch(() => undefined);
    }
    if (outcome.status === 'failed' && this.options.failFast) this.abort(`--fail-fast: stage '${stage.name}' failed`);
    return outcome;
  }

  async close(): Promise<RunSummary> {
    const { options } = this;
    await this.stateWrites;
    const stages: StageSummary[] = options.plan.stages.map((s) => {
      const o = this.outcomes.get(s.name) ?? skippedOutcome('not reached');
      return { name: s.name, kind: s.kindName, status: o.status, durationMs: o.durationMs, fingerprint: s.fingerprint, error: o.error, reasons: s.reasons, summary: o.summary, ...(o.worker ? { worker: o.worker } : {}) };
    });
    const metrics: Record<string, number> = {};
    for (const s of options.summaryMetrics === false ? [] : options.plan.stages) {
      const points = [...(this.outcomes.get(s.name)?.metrics ?? [])].sort((a, b) => a.step - b.step || a.timestamp - b.timestamp);
      for (const point of points) metrics[point.key] = point.value;
    }
    const summary: RunSummary = {
      runId: options.run.runId,
      pipeline: options.run.pipelineName,
      status: stages.every((s) => s.status === 'ran' || s.status === 'cached') ? 'succeeded' : 'failed',
      durationMs: Date.now() - this.started,
      stages,
      metrics,
    };
    this.emit({ type: 'run-end', summary, endedAt: Date.now() });
    await Promise.all(this.pending);
    return summary;
  }
}

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

/**
 * One stage as a self-contained unit of work: everything a process needs to compute its cache
 * entry, whether that process is this runner or a `pipe worker` on another machine (which gets it
 * as JSON). Inputs are named by fingerprint, so each side resolves them in its own view of the cache.
 */
export interface StageJob {
  name: string;
  fingerprint: string;
  record: FingerprintRecord;
  /** Re-run even if the entry exists (--force): the old entry is replaced. */
  forced: boolean;
  kind: string;
  usesTensorflow: boolean;
  params: Record<string, unknown>;
  /** Input slot → the fingerprint of the upstream entry that fills it. */
  inputs: Record<string, string>;
  /** Every upstream stage's fingerprint (a worker restores their command outputs before a command runs). */
  upstream: string[];
  command?: string | string[];
  /** Where a command runs: the pipeline file's directory. */
  cwd: string;
  env: Record<string, string>;
  outs: string[];
  metrics: string[];
  timeout?: number;
  cpu: number | 'all';
  gpu: number;
}

export function stageJob(plan: Plan, stage: PlannedStage, backend: 'cpu' | 'gpu'): StageJob {
  const a = stage.stage;
  return {
    name: stage.name,
    fingerprint: stage.fingerprint,
    record: stage.record,
    forced: stage.forced,
    kind: stage.kindName,
    usesTensorflow: Boolean(a.kind?.usesTensorflow),
    params: a.params,
    inputs: Object.fromEntries(Object.entries(a.inputs).map(([slot, name]) => [slot, upstreamFingerprint(plan, name)])),
    upstream: a.upstream.map((name) => upstreamFingerprint(plan, name)),
    command: a.command,
    cwd: plan.pipeline.file.dir,
    env: a.env,
    outs: a.outs,
    metrics: a.metrics,
    timeout: a.timeout,
    cpu: a.resources.cpu ?? 1,
    gpu: gpusWanted(stage, backend),
  };
}

/** What running one stage needs from the process around it. */
export interface RunContext {
  cache: Cache;
  downloadCacheDir: string;
  backend: 'cpu' | 'gpu';
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
    backend: run.backend,
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

/** A TensorFlow stage on the GPU flavour takes one GPU unless its resources say otherwise. */
function gpusWanted(stage: PlannedStage, backend: 'cpu' | 'gpu'): number {
  const declared = stage.stage.decl.resources.gpu;
  if (declared !== undefined) return declared;
  return stage.stage.kind?.usesTensorflow && backend === 'gpu' ? 1 : (stage.stage.resources.gpu ?? 0);
}

function upstreamFingerprint(plan: Plan, name: string): string {
  const found = plan.stages.find((s) => s.name === name);
  if (!found) throw new Error(`bug: no planned stage ${name}`);
  return found.fingerprint;
}

function closeStream(stream: WriteStream): Promise<void> {
  return new Promise((resolve) => stream.end(resolve));
}
