// `pipe run` and `pipe status`: load → analyze → plan → execute, with the terminal, the run log
// and the MLflow tracker subscribed to the executor's events.

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isMap, isScalar } from 'yaml';
import { analyze, parseOverride, type AnalyzedPipeline, type Override } from '../pipeline/analyze.ts';
import { InterruptedError, UsageError } from '../core/errors.ts';
import type { CommandStatus, Io } from '../core/io.ts';
import type { Flavour, RequestedFlavour } from '../core/stage-kind.ts';
import { printDiagnostics } from '../render/diagnostics.ts';
import type { CommandOptions } from './options.ts';
import { dedupeDiagnostics, type Diagnostic } from '../core/diagnostics.ts';
import type { RunListener, RunSummary } from '../core/events.ts';
import { stageKinds } from '../stages/index.ts';
import { localRunner } from '../exec/local-runner.ts';
import type { EpochGate, ExecuteOptions, Runner } from '../exec/run-book.ts';
import { shortFingerprint } from '../cache/fingerprint.ts';
import { loadPipeline, type PipelineFile } from '../pipeline/pipeline.ts';
import { planPipeline, type Plan } from '../plan/plan.ts';
import { formatBytes } from '../util/format.ts';
import { hashIndexPath, newRunId, openCache, projectPaths, statePath, type ProjectPaths } from '../cache/project.ts';
import { outputLinker, plainRenderer, runLogWriter, ttyRenderer } from '../render/render.ts';
import { gpuIds, resolveFlavour, runtimeFingerprint } from '../exec/runtime.ts';

export interface Prepared {
  paths: ProjectPaths;
  file: PipelineFile;
  pipeline: AnalyzedPipeline;
  plan: Plan;
  flavour: Flavour;
}

export function overridesFrom(values: CommandOptions): Override[] {
  const overrides: Override[] = [];
  for (const arg of values.param ?? []) {
    const override = parseOverride(arg);
    if (!override) throw new UsageError(`-p ${arg}: expected NAME=VALUE`);
    overrides.push(override);
  }
  return overrides;
}

/** Loads, analyzes and plans; prints every problem and returns undefined when there are any. */
export async function prepare(
  file: string,
  values: CommandOptions,
  io: Io,
  extra: { values?: Record<string, unknown>; pipelineFile?: PipelineFile } = {},
): Promise<Prepared | undefined> {
  const paths = projectPaths();
  const texts: Record<string, string> = {};
  const loaded = extra.pipelineFile ? { file: extra.pipelineFile, diagnostics: [] } : loadPipeline(file, file);
  if (loaded.source) texts[file] = loaded.source.text;
  if (!loaded.file) {
    printDiagnostics(io, loaded.diagnostics, texts);
    return undefined;
  }
  const pipelineFile = loaded.file;
  texts[file] = pipelineFile.source.text;
  const cacheDir = values.cache ?? pipelineFile.cache;
  if (cacheDir) paths.cacheDir = path.resolve(cacheDir);
  const analyzed = await analyze(pipelineFile, { kinds: stageKinds, overrides: overridesFrom(values), values: extra.values });
  const problems = [...loaded.diagnostics, ...(analyzed.ok ? [] : analyzed.diagnostics)];
  if (!analyzed.ok || problems.length > 0) {
    printDiagnostics(io, dedupeDiagnostics(problems), texts);
    return undefined;
  }
  const requested = (values.backend as RequestedFlavour | undefined) ?? pipelineFile.flavour;
  if (!['auto', 'cpu', 'gpu'].includes(requested)) throw new UsageError(`--backend ${requested}: expected auto, cpu or gpu`);
  let flavour: Flavour;
  try {
    flavour = resolveFlavour(requested);
  } catch (error) {
    io.err(`${file}: backend: ${(error as Error).message}\n`);
    return undefined;
  }
  const force = new Set(values.force ?? []);
  const unknownForced = [...force].filter((name) => !analyzed.value.stages.some((s) => s.name === name));
  if (unknownForced.length) {
    const diagnostics: Diagnostic[] = unknownForced.map((name) => ({
      code: 'missing-stage', file: '<command line>', line: 0, col: 0, length: 0, field: `--force ${name}`,
      message: `no stage named '${name}' (stages: ${analyzed.value.stages.map((s) => s.name).join(', ')})`,
    }));
    printDiagnostics(io, diagnostics, texts);
    return undefined;
  }
  const planned = await planPipeline(analyzed.value, {
    cache: openCache(paths),
    statePath: statePath(paths, pipelineFile.name),
    hashIndexPath: hashIndexPath(paths),
    runtime: runtimeFingerprint(flavour),
    force,
  });
  if (!planned.ok) {
    printDiagnostics(io, planned.diagnostics, texts);
    return undefined;
  }
  return { paths, file: pipelineFile, pipeline: analyzed.value, plan: planned.plan, flavour };
}


export async function statusCommand(file: string, values: CommandOptions, io: Io): Promise<CommandStatus> {
  const prepared = await prepare(file, values, io);
  if (!prepared) return 'invalid';
  const { plan } = prepared;
  // What the cached stages' entries take (a file several entries share, counted once in the total).
  const usage = await openCache(prepared.paths).usage(plan.stages.filter((s) => s.cached).map((s) => s.fingerprint));
  const bytesOf = (fingerprint: string) => usage.entries.get(fingerprint);
  if (values.json) {
    io.out(`${JSON.stringify({
      pipeline: prepared.file.name,
      stages: plan.stages.map((s) => {
        const entry = s.cached ? bytesOf(s.fingerprint) : undefined;
        return {
          name: s.name,
          kind: s.kindName,
          fingerprint: s.fingerprint,
          status: s.cached ? 'cached' : 'will-run',
          reasons: s.reasons,
          ...(entry ? { cacheBytes: entry.bytes, cacheLinkedBytes: entry.linkedBytes } : {}),
        };
      }),
      cacheBytes: usage.uniqueBytes,
    }, null, 2)}\n`);
    return 'ok';
  }
  const width = Math.max(5, ...plan.stages.map((s) => s.name.length));
  for (const s of plan.stages) {
    const entry = bytesOf(s.fingerprint);
    const size = entry ? `  ${formatBytes(entry.bytes)}${entry.linkedBytes ? ` (${formatBytes(entry.linkedBytes)} linked)` : ''}` : '';
    if (s.cached) io.out(`${s.name.padEnd(width)}  cached    ${shortFingerprint(s.fingerprint)}${size}\n`);
    else io.out(`${s.name.padEnd(width)}  will run  ${shortFingerprint(s.fingerprint)}  ${s.reasons.join('; ')}\n`);
  }
  const toRun = plan.stages.filter((s) => !s.cached).length;
  io.out(toRun === 0 ? 'up to date: every stage is cached' : `${toRun} of ${plan.stages.length} stages would run`);
  io.out(usage.entries.size > 0 ? `; the cached stages take ${formatBytes(usage.uniqueBytes)} in the cache\n` : '\n');
  return 'ok';
}

/** The pipeline YAML as run: params set to the values this run used. */
export function yamlAsRun(file: PipelineFile, params: Record<string, unknown>): string {
  const doc = file.doc.clone();
  const node = doc.get('params', true);
  if (isMap(node)) {
    for (const pair of node.items) {
      const name = isScalar(pair.key) ? String(pair.key.value) : undefined;
      if (!name || !(name in params)) continue;
      const value = params[name];
      if (isMap(pair.value) && pair.value.has('default')) pair.value.set('default', value);
      else pair.value = doc.createNode(value);
    }
  }
  return doc.toString();
}

export interface RunOutcome {
  summary: RunSummary;
  runDir: string;
}

/** What a sweep (or a caller other than `pipe run`) changes about executing a prepared run. */
export interface ExecuteExtra {
  sweep?: { id: string; trial: string };
  parentRunId?: string;
  listeners?: RunListener[];
  quiet?: boolean;
  runId?: string;
  runDir?: string;
  latest?: boolean;
  summaryMetrics?: boolean;
  /** A sweep's early stopping (its scheduler). */
  epochGate?: EpochGate;
}

export async function executePrepared(prepared: Prepared, values: CommandOptions, io: Io, extra: ExecuteExtra = {}): Promise<RunOutcome> {
  const { paths, file, pipeline, plan, flavour } = prepared;
  const runId = extra.runId ?? newRunId();
  const runDir = extra.runDir ?? path.join(paths.runsDir, file.name, runId);
  await fs.mkdir(runDir, { recursive: true });
  const pipelineYaml = yamlAsRun(file, pipeline.params);
  await fs.writeFile(path.join(runDir, 'pipeline.yaml'), pipelineYaml);
  const cache = openCache(paths);
  await cache.cleanStale();

  const { listeners, logWriter } = runListeners(values, io, extra, runDir);
  const tracker = await startTracker(prepared, values, io, extra.parentRunId);
  if (tracker) listeners.push(tracker.listener);

  const interruption = stopOnSignals();
  let summary: RunSummary;
  try {
    const runner = await chooseRunner(values, paths, io);
    summary = await runner({
      plan,
      cache,
      run: runStartOf(prepared, { runId, runDir, pipelineYaml, sweep: extra.sweep }),
      statePath: statePath(paths, file.name),
      downloadCacheDir: paths.downloadsDir,
      flavour,
      cpuSlots: values.jobs ? Math.max(1, Number(values.jobs)) : os.availableParallelism(),
      gpuIds: gpuIds(),
      failFast: Boolean(values['fail-fast']),
      summaryMetrics: extra.summaryMetrics,
      ...(extra.epochGate ? { epochGate: extra.epochGate } : {}),
      listeners,
      signal: interruption.signal,
    });
  } finally {
    // The handlers stay until the MLflow run is closed: a signal that comes while the final status
    // is being sent must not end this process before it is (the run itself is over by then).
    await closeTracker(tracker, io);
    interruption.dispose();
    await logWriter.close();
  }
  await fs.writeFile(path.join(runDir, 'summary.json'), JSON.stringify(summary, null, 2));
  return { summary, runDir };
}

/** The signals that stop a run: its stages are stopped, its state and records written, then it exits. */
export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * While a run executes, SIGINT, SIGTERM and SIGHUP (sent to this process alone, as `kill PID` or a
 * CI cancel does, or to its group, as Ctrl-C does) abort it with the signal's name as the reason,
 * instead of ending this process at once and leaving its stages running.
 */
function stopOnSignals(): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const handlers = STOP_SIGNALS.map((name) => {
    const handler = () => controller.abort(name);
    process.on(name, handler);
    return [name, handler] as const;
  });
  return { signal: controller.signal, dispose: () => handlers.forEach(([name, handler]) => process.removeListener(name, handler)) };
}

/** The error that ends a command whose run a signal interrupted (exit 128 + the signal's number). */
export function interruptedError(summary: RunSummary): InterruptedError {
  const signal = summary.interrupted ?? 'SIGINT';
  const finished = summary.stages.filter((s) => s.status === 'ran' || s.status === 'cached').length;
  return new InterruptedError(signal, `interrupted by ${signal}: running stages stopped; ${finished} of ${summary.stages.length} stages finished and are cached`, {
    hint: 'run the same command again to resume',
  });
}

/** The terminal renderer (unless quiet), the run's log.txt and output links, and the caller's listeners. */
function runListeners(values: CommandOptions, io: Io, extra: ExecuteExtra, runDir: string): { listeners: RunListener[]; logWriter: ReturnType<typeof runLogWriter> } {
  const verbose = Boolean(values.verbose);
  const listeners: RunListener[] = [];
  if (!extra.quiet) {
    const write = values.json ? io.err : io.err;
    listeners.push(io.isTTY ? ttyRenderer(write, { verbose }) : plainRenderer(write, { verbose }));
  }
  const logWriter = runLogWriter(path.join(runDir, 'log.txt'));
  listeners.push(logWriter.listener, outputLinker(runDir, { latest: extra.latest ?? true }), ...(extra.listeners ?? []));
  return { listeners, logWriter };
}

type Tracker = import('../tracking/tracker.ts').Tracker;

/** The MLflow tracker of the run, unless tracking is off; a tracker that cannot start does not stop the run. */
async function startTracker(prepared: Prepared, values: CommandOptions, io: Io, parentRunId: string | undefined): Promise<Tracker | undefined> {
  const { file, paths } = prepared;
  if (!file.tracking.enabled || values['no-track'] || process.env['PIPE_NO_TRACK'] === '1') return undefined;
  try {
    const { createTracker } = await import('../tracking/tracker.ts');
    return createTracker({
      projectDir: paths.projectDir,
      trackingUri: file.tracking.uri,
      parentRunId,
      log: (line: string) => io.err(`${line}\n`),
      ...(values.register !== undefined ? { register: { name: values.register, aliases: values.alias ?? [] } } : {}),
    });
  } catch (error) {
    io.err(`tracking: ${(error as Error).message} (the run goes on; \`pipe sync\` sends it later)\n`);
    return undefined;
  }
}

/** Flushes the tracker and says where the MLflow runs are, and what is left for `pipe sync`. */
async function closeTracker(tracker: Tracker | undefined, io: Io): Promise<void> {
  const tracked = await tracker?.close().catch((error: Error) => {
    io.err(`tracking: ${error.message}\n`);
    return undefined;
  });
  for (const run of tracked?.runs ?? []) {
    if (run.url) io.err(`MLflow run: ${run.url}\n`);
    if (run.pending > 0) io.err(`tracking: ${run.pending} request(s) could not be sent yet; \`pipe sync\` sends them\n`);
  }
}

/** `--queue URL`: the stages go to `pipe worker`s; else they run here. */
async function chooseRunner(values: CommandOptions, paths: ProjectPaths, io: Io): Promise<Runner> {
  if (!values.queue) return localRunner;
  const { queueRunner } = await import('../queue/submit.ts');
  return queueRunner({
    url: values.queue,
    retries: values.retries !== undefined ? retriesOf(values.retries) : 1,
    shards: values.shards !== undefined ? shardsOf(values.shards) : 1,
    projectDir: paths.projectDir,
    log: (line) => io.err(`${line}\n`),
  });
}

function runStartOf(prepared: Prepared, run: { runId: string; runDir: string; pipelineYaml: string; sweep: ExecuteExtra['sweep'] }): ExecuteOptions['run'] {
  const { paths, file, pipeline, flavour } = prepared;
  return {
    runId: run.runId,
    runDir: run.runDir,
    pipelineName: file.name,
    pipelineFile: path.relative(paths.projectDir, path.resolve(file.dir, path.basename(file.source.path))) || file.source.path,
    experiment: file.experiment,
    pipelineYaml: run.pipelineYaml,
    pipelineHash: createHash('sha256').update(file.source.text).digest('hex'),
    params: pipeline.params,
    backend: flavour === 'gpu' ? 'tensorflow-gpu' : 'tensorflow',
    sweep: run.sweep,
    startedAt: Date.now(),
  };
}

function shardsOf(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--shards ${text}: expected a whole number ≥ 1`);
  return n;
}

function retriesOf(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--retries ${text}: expected a whole number ≥ 0`);
  return n;
}

export async function runCommand(file: string, values: CommandOptions, io: Io): Promise<CommandStatus> {
  const prepared = await prepare(file, values, io);
  if (!prepared) return 'invalid';
  const { summary } = await executePrepared(prepared, values, io);
  if (values.json) io.out(`${JSON.stringify(summary, null, 2)}\n`);
  if (summary.interrupted) throw interruptedError(summary);
  return summary.status === 'succeeded' ? 'ok' : 'failed';
}
