// Sweeps: trials over param values (a grid, explicit combinations, `-S name=v1,v2`). Every trial
// is planned as an ordinary run; the plans are merged by fingerprint into one DAG, so a stage that
// is the same in several trials (data, split, views, features, head) runs once, and only what
// differs runs per trial. Each trial is still an MLflow run of its own, nested under a parent run.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../core/errors.ts';
import type { CommandStatus, Io } from '../core/io.ts';
import { printDiagnostics } from '../render/diagnostics.ts';
import type { CommandOptions } from './options.ts';
import { executePrepared, interruptedError, prepare, type Prepared } from './run.ts';
import { dedupeDiagnostics } from '../core/diagnostics.ts';
import type { RunListener, RunSummary } from '../core/events.ts';
import { loadPipeline, type PipelineFile } from '../pipeline/pipeline.ts';
import type { SearchSettings, SweepParent } from '../tracking/sweep-parent.ts';
import { formatDuration, outputLinker, runLogWriter } from '../render/render.ts';
import { demultiplex, expandTrials, mergePlans, schedulerOfFile, SweepScheduler, timedTrial, trialSummary, type SweepPlan, type Trial } from '../plan/sweep.ts';
import type { SchedulerConfig } from '../plan/scheduler.ts';
import type { PrunedAt } from '../core/events.ts';

export async function sweepCommand(file: string, values: CommandOptions, io: Io): Promise<CommandStatus> {
  const loaded = loadSweep(file, values, io);
  if (!loaded) return 'invalid';
  const { pipelineFile, trials, scheduler } = loaded;
  const prepared = await prepareTrials(file, values, io, pipelineFile, trials);
  if (!prepared) return 'invalid';
  const plans = new Map([...prepared].map(([id, p]) => [id, p.plan]));
  const sweepPlan = mergePlans(trials, plans);
  const objective = values.objective ?? pipelineFile.sweep?.objective ?? 'test_accuracy';
  const direction = pipelineFile.sweep?.direction ?? (/loss|error/.test(objective) ? 'minimize' : 'maximize');

  if (values['dry-run']) {
    printDryRun(io, trials, sweepPlan, scheduler);
    return 'ok';
  }

  const first = prepared.get(trials[0]?.id ?? '');
  if (!first) return 'invalid';
  const sweepId = `sweep-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-')}`;
  const sweepDir = path.join(first.paths.runsDir, pipelineFile.name, sweepId);
  const trialRunDir = (trial: Trial) => path.join(sweepDir, trial.id);
  for (const trial of trials) await fs.mkdir(trialRunDir(trial), { recursive: true });

  const sweep: Sweep = { id: sweepId, dir: sweepDir, trials, objective, direction, pipelineFile, projectDir: first.paths.projectDir, scheduler, search: searchSettings(pipelineFile, values, scheduler) };
  const recorders = await trialRecorders(sweep, sweepPlan, values, io, trialRunDir);
  const trialMetrics = new Map<string, Record<string, number>>();
  const demux = demultiplex(sweepPlan, trials, recorders.listeners, trialRunDir, prepared, trialMetrics);
  const mergedPrepared: Prepared = { ...first, plan: sweepPlan.plan };
  // Also through a queue: the decisions are made here and sent to the worker running the trial.
  // Pausing (ASHA's promotion form) needs a runner that holds a paused stage back: the local one.
  if (scheduler?.pause && values.queue) io.err('sweep.scheduler.pause: trials on --queue cannot pause and resume; trials below the cut stop, as with pause: false\n');
  const epochGate = scheduler ? new SweepScheduler(scheduler, sweepPlan, !values.queue) : undefined;
  const curves = new Map<string, number[]>();
  const { summary } = await executePrepared(mergedPrepared, { ...values, 'no-track': true }, io, {
    listeners: epochGate ? [epochGate.listener, curveRecorder(epochGate, curves), demux] : [demux], runDir: sweepDir, runId: sweepId, latest: false, summaryMetrics: false, ...(epochGate ? { epochGate } : {}),
  });
  for (const close of recorders.closers) await close().catch(() => undefined);

  const rows = trialRows(sweep, sweepPlan, summary, trialMetrics, curves);
  await reportSweep(sweep, sweepPlan, summary, rows, recorders.parent, values, io);
  await registerBestTrial(sweep, rows, values, io, trialRunDir);
  // Interrupted: the trials' runs and the parent run are recorded KILLED; now exit 130/143/129.
  if (summary.interrupted) throw interruptedError(summary);
  return rows.every((r) => r.status !== 'failed') ? 'ok' : 'failed';
}

/** `--register NAME`: the best trial's model, through its own journal (kept for `pipe sync` when the server is down). */
async function registerBestTrial(sweep: Sweep, rows: TrialResult[], values: CommandOptions, io: Io, trialRunDir: (trial: Trial) => string): Promise<void> {
  const tracking = sweep.pipelineFile.tracking.enabled && !values['no-track'] && process.env['PIPE_NO_TRACK'] !== '1';
  const best = rows[0];
  if (!tracking || values.register === undefined || best?.status !== 'succeeded' || best.objective === undefined) return;
  const { registerFromJournal } = await import('./register.ts');
  const print = (line: string) => io.err(`${line}\n`);
  await registerFromJournal({ projectDir: sweep.projectDir, target: best.trial.id, name: values.register, aliases: values.alias ?? [], print }, trialRunDir(best.trial))
    .catch((error: Error) => io.err(`register: ${error.message}\n`));
}

/** What the parts of a sweep after planning share. */
interface Sweep {
  id: string;
  dir: string;
  trials: Trial[];
  objective: string;
  direction: 'maximize' | 'minimize';
  pipelineFile: PipelineFile;
  projectDir: string;
  /** Early stopping, when the sweep has a scheduler. */
  scheduler: SchedulerConfig | undefined;
  /** What the MLflow parent run records of the search. */
  search: SearchSettings;
}

interface TrialResult {
  trial: Trial;
  /** pruned: the scheduler stopped it early (its learning stage ran `pruned.epoch` epochs; what depends on it did not run). */
  status: 'succeeded' | 'failed' | 'pruned';
  error: string | undefined;
  pruned: (PrunedAt & { stage: string }) | undefined;
  metrics: Record<string, number>;
  objective: number | undefined;
  /** Under a scheduler: the watched metric after each epoch of the watched stage. */
  curve: number[] | undefined;
}

/** Records, per watched stage, its metric after each epoch (ran, pruned or from the cache): the curves of the parent run's picture. */
function curveRecorder(gate: SweepScheduler, curves: Map<string, number[]>): RunListener {
  return (event) => {
    if (event.type !== 'stage-end' || !gate.watches(event.stage)) return;
    const points = event.metrics.filter((p) => p.key === gate.config.metric).sort((a, b) => a.step - b.step);
    curves.set(event.stage, points.map((p) => p.value));
  };
}

/** The search space as written (`-S` distributions replacing the file's), samples, seed and the scheduler's settings. */
function searchSettings(file: PipelineFile, values: CommandOptions, scheduler: SchedulerConfig | undefined): SearchSettings {
  const space: Record<string, string> = {};
  for (const [name, raw] of Object.entries(file.sweep?.space ?? {})) {
    const [kind, args] = Object.entries(raw as Record<string, unknown[]>)[0] ?? ['?', []];
    space[name] = `${kind}(${(args ?? []).map((a) => JSON.stringify(a)).join(', ')})`;
  }
  for (const arg of values.sweep ?? []) {
    const eq = arg.indexOf('=');
    const text = arg.slice(eq + 1);
    if (/^\w+\(.*\)$/.test(text)) space[arg.slice(0, eq)] = text;
    else delete space[arg.slice(0, eq)];
  }
  const samples = values.samples !== undefined ? Number(values.samples) : file.sweep?.samples;
  const seed = values.seed !== undefined ? Number(values.seed) : (file.sweep?.seed ?? 0);
  return { space, ...(samples !== undefined ? { samples } : {}), seed, ...(scheduler ? { scheduler: schedulerJson(scheduler) } : {}) };
}

/** Loads the pipeline and expands its trials; prints every problem and returns undefined when there are any. */
function loadSweep(file: string, values: CommandOptions, io: Io): { pipelineFile: PipelineFile; trials: Trial[]; scheduler: SchedulerConfig | undefined } | undefined {
  const loaded = loadPipeline(file, file);
  if (!loaded.file || loaded.diagnostics.length > 0) {
    printDiagnostics(io, loaded.diagnostics, loaded.source ? { [file]: loaded.source.text } : {});
    return undefined;
  }
  const pipelineFile = loaded.file;
  const sampling = {
    samples: values.samples !== undefined ? wholeNumber('--samples', values.samples, 1) : undefined,
    seed: values.seed !== undefined ? wholeNumber('--seed', values.seed, 0) : undefined,
  };
  const { trials, diagnostics } = expandTrials(pipelineFile, values.sweep ?? [], sampling);
  const { scheduler, diagnostics: schedulerProblems } = schedulerOfFile(pipelineFile);
  diagnostics.push(...schedulerProblems);
  const overridden = new Set((values.param ?? []).map((p) => p.split('=')[0]));
  for (const trial of trials) {
    for (const name of Object.keys(trial.values)) {
      if (overridden.has(name)) diagnostics.push({ code: 'bad-override', file: '<command line>', line: 0, col: 0, length: 0, field: `-p ${name}`, message: `param '${name}' is swept; it cannot also be overridden with -p` });
    }
  }
  if (diagnostics.length) {
    printDiagnostics(io, dedupeDiagnostics(diagnostics), { [file]: pipelineFile.source.text });
    return undefined;
  }
  if (trials.length === 0) throw new UsageError(`pipe sweep ${file}: nothing to sweep: add a sweep: section or -S NAME=V1,V2`);
  return { pipelineFile, trials, scheduler };
}

/** Each trial analyzed and planned as an ordinary run; undefined (problems printed) when one is invalid. */
async function prepareTrials(
  file: string, values: CommandOptions, io: Io, pipelineFile: PipelineFile, trials: Trial[],
): Promise<Map<string, Prepared> | undefined> {
  const prepared = new Map<string, Prepared>();
  for (const trial of trials) {
    const p = await prepare(file, values, io, { values: trial.values, pipelineFile });
    if (!p) return undefined;
    prepared.set(trial.id, p);
  }
  return prepared;
}

/**
 * Per trial, the listener that records it: its MLflow run under the sweep's parent run (unless
 * tracking is off or fails to start), timed as the trial (timedTrial: from its first own stage to
 * its last), its log.txt and its output links.
 */
async function trialRecorders(
  sweep: Sweep, sweepPlan: SweepPlan, values: CommandOptions, io: Io, trialRunDir: (trial: Trial) => string,
): Promise<{ listeners: Map<string, RunListener>; closers: Array<() => Promise<void>>; parent: SweepParent | undefined }> {
  const tracking = sweep.pipelineFile.tracking.enabled && !values['no-track'] && process.env['PIPE_NO_TRACK'] !== '1';
  const { trackers, closers, parent } = tracking ? await startSweepTracking(sweep, io) : { trackers: new Map<string, RunListener>(), closers: [], parent: undefined };
  const listeners = new Map<string, RunListener>();
  for (const trial of sweep.trials) {
    const writer = runLogWriter(path.join(trialRunDir(trial), 'log.txt'));
    closers.push(() => writer.close());
    const tracked = trackers.get(trial.id);
    const tracker = tracked ? timedTrial(sweepPlan, trial.id, tracked) : undefined;
    const linker = outputLinker(trialRunDir(trial), { latest: false });
    listeners.set(trial.id, (event) => {
      void writer.listener(event);
      void linker(event);
      return tracker?.(event);
    });
  }
  return { listeners, closers, parent };
}

/** The sweep's MLflow parent run and one tracker per trial; on failure, the trials tracked so far. */
async function startSweepTracking(
  sweep: Sweep, io: Io,
): Promise<{ trackers: Map<string, RunListener>; closers: Array<() => Promise<void>>; parent: SweepParent | undefined }> {
  const trackers = new Map<string, RunListener>();
  const closers: Array<() => Promise<void>> = [];
  let parent: SweepParent | undefined;
  try {
    const { startSweepParent } = await import('../tracking/sweep-parent.ts');
    const { pipelineFile, projectDir } = sweep;
    parent = await startSweepParent({ projectDir, pipeline: pipelineFile, sweepId: sweep.id, trials: sweep.trials, objective: sweep.objective, direction: sweep.direction, sweepDir: sweep.dir, search: sweep.search });
    const { createTracker } = await import('../tracking/tracker.ts');
    for (const trial of sweep.trials) {
      const tracker = await createTracker({ projectDir, trackingUri: pipelineFile.tracking.uri, parentRunId: parent.runId, log: (line: string) => io.err(`${line}\n`) });
      trackers.set(trial.id, tracker.listener);
      closers.push(async () => {
        await tracker.close();
      });
    }
  } catch (error) {
    io.err(`tracking: ${(error as Error).message} (the sweep goes on untracked)\n`);
  }
  return { trackers, closers, parent };
}

/** How each trial ended (failed when one of its stages did not run or restore), best objective first. */
function trialRows(sweep: Sweep, sweepPlan: SweepPlan, summary: RunSummary, trialMetrics: Map<string, Record<string, number>>, curves: Map<string, number[]>): TrialResult[] {
  const { objective, direction } = sweep;
  const curveOf = (trial: Trial) => (sweep.scheduler ? curves.get(sweepPlan.trialStages.get(trial.id)?.get(sweep.scheduler.stage) ?? '') : undefined);
  const rows = sweep.trials.map((trial): TrialResult => {
    const local = sweepPlan.trialStages.get(trial.id) ?? new Map<string, string>();
    const metrics: Record<string, number> = {};
    let status: 'succeeded' | 'failed' = 'succeeded';
    let error: string | undefined;
    for (const [localName, mergedName] of local) {
      const s = summary.stages.find((x) => x.name === mergedName);
      if (!s || (s.status !== 'ran' && s.status !== 'cached')) {
        status = 'failed';
        error ??= s?.error ? `${localName}: ${s.error}` : `${localName}: ${s?.status ?? 'not run'}`;
      }
    }
    Object.assign(metrics, trialMetrics.get(trial.id) ?? {});
    // Stopped early (and nothing else went wrong): pruned, not failed.
    const ended = trialSummary(trial, sweepPlan, summary);
    const pruned = ended.status === 'succeeded' ? ended.pruned : undefined;
    if (pruned) return { trial, status: 'pruned', error: undefined, pruned, metrics, objective: metrics[objective], curve: curveOf(trial) };
    return { trial, status, error, pruned: undefined, metrics, objective: metrics[objective], curve: curveOf(trial) };
  });
  rows.sort((a, b) => {
    const av = a.objective ?? (direction === 'maximize' ? -Infinity : Infinity);
    const bv = b.objective ?? (direction === 'maximize' ? -Infinity : Infinity);
    return direction === 'maximize' ? bv - av : av - bv;
  });
  return rows;
}

/** The table on stderr, trials.json in the sweep's run directory, the parent run's summary, --json on stdout. */
async function reportSweep(
  sweep: Sweep, sweepPlan: SweepPlan, summary: RunSummary, rows: TrialResult[], parent: SweepParent | undefined, values: CommandOptions, io: Io,
): Promise<void> {
  const { id: sweepId, objective, direction, trials } = sweep;
  const table = formatTrialTable(rows, objective);
  io.err(`\nsweep ${sweepId}: ${trials.length} trials, ${sweepPlan.plan.stages.length} distinct stages (${summary.stages.filter((s) => s.status === 'ran').length} ran, ${summary.stages.filter((s) => s.status === 'cached').length} cached) in ${formatDuration(summary.durationMs)}; sorted by ${objective} (${direction})\n${table}`);
  const json = rows.map((r) => ({ id: r.trial.id, values: r.trial.values, status: r.status, error: r.error, ...(r.pruned ? { pruned: r.pruned } : {}), metrics: r.metrics, ...(r.curve ? { curve: r.curve } : {}) }));
  await fs.writeFile(path.join(sweep.dir, 'trials.json'), JSON.stringify(json, null, 2));
  await parent?.finish(rows.map((r) => ({ id: r.trial.id, label: r.trial.label, values: r.trial.values, status: r.status, error: r.error, ...(r.pruned ? { pruned: r.pruned } : {}), metrics: r.metrics, ...(r.curve ? { curve: r.curve } : {}) })), table, summary.interrupted).catch((error: Error) => io.err(`tracking: ${error.message}\n`));
  const scheduler = sweep.scheduler ? { scheduler: schedulerJson(sweep.scheduler) } : {};
  if (values.json) io.out(`${JSON.stringify({ sweep: sweepId, objective, direction, ...scheduler, trials: json, stages: summary.stages }, null, 2)}\n`);
}

function wholeNumber(flag: string, text: string, min: number): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < min) throw new UsageError(`${flag} ${text}: expected a whole number ≥ ${min}`);
  return n;
}

/** The scheduler's settings under Ray Tune's names, as in the pipeline file. */
export function schedulerJson(config: SchedulerConfig): Record<string, unknown> {
  return {
    type: config.type,
    metric: config.metric,
    mode: config.mode,
    stage: config.stage,
    grace_period: config.gracePeriod,
    ...(config.type === 'asha'
      ? { reduction_factor: config.reductionFactor, ...(config.maxT !== undefined ? { max_t: config.maxT } : {}), ...(config.pause ? { pause: true } : {}) }
      : { min_samples_required: config.minSamplesRequired }),
  };
}

function formatTrialTable(rows: TrialResult[], objective: string): string {
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.trial.values)))];
  const extra = [objective, ...['val_accuracy', 'test_loss', 'accuracy'].filter((k) => k !== objective && rows.some((r) => k in r.metrics))];
  const header = ['trial', ...names, 'status', ...extra];
  const body = rows.map((r) => [
    r.trial.id,
    ...names.map((n) => (n in r.trial.values ? JSON.stringify(r.trial.values[n]) : '')),
    r.pruned ? `pruned@${r.pruned.epoch}` : r.status,
    ...extra.map((k) => (r.metrics[k] === undefined ? '' : (r.metrics[k] as number).toFixed(4))),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  const failures = rows.filter((r) => r.error).map((r) => `  ${r.trial.id} failed: ${r.error}`);
  return `${[line(header), ...body.map(line)].join('\n')}\n${failures.length ? `${failures.join('\n')}\n` : ''}`;
}

function printDryRun(io: Io, trials: Trial[], sweepPlan: SweepPlan, scheduler: SchedulerConfig | undefined): void {
  io.out(`${trials.length} trials:\n`);
  if (scheduler) {
    const settings = Object.entries(schedulerJson(scheduler)).filter(([k]) => !['type', 'metric', 'mode', 'stage'].includes(k)).map(([k, v]) => `${k} ${String(v)}`).join(', ');
    io.out(`early stopping: ${scheduler.type} on ${scheduler.metric} (${scheduler.mode}) after each epoch of stage ${scheduler.stage}; ${settings}\n`);
  }
  for (const trial of trials) io.out(`  ${trial.id}  ${trial.label}\n`);
  io.out(`\n${sweepPlan.plan.stages.length} distinct stages:\n`);
  const width = Math.max(...sweepPlan.plan.stages.map((s) => s.name.length));
  for (const stage of sweepPlan.plan.stages) {
    const node = sweepPlan.nodes.get(stage.name);
    const ids = [...(node?.trials.keys() ?? [])];
    const shared = ids.length === trials.length ? 'all trials' : ids.join(', ');
    io.out(`  ${stage.name.padEnd(width)}  ${stage.cached ? 'cached  ' : 'will run'}  ${shared}\n`);
  }
}
