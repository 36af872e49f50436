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
import { executePrepared, prepare, type Prepared } from './run.ts';
import { dedupeDiagnostics } from '../core/diagnostics.ts';
import type { RunListener } from '../core/events.ts';
import { loadPipeline } from '../pipeline/pipeline.ts';
import { formatDuration, outputLinker, runLogWriter } from '../render/render.ts';
import { demultiplex, expandTrials, mergePlans, type SweepPlan, type Trial } from '../plan/sweep.ts';

export async function sweepCommand(file: string, values: CommandOptions, io: Io): Promise<CommandStatus> {
  const loaded = loadPipeline(file, file);
  if (!loaded.file || loaded.diagnostics.length > 0) {
    printDiagnostics(io, loaded.diagnostics, loaded.file ? { [file]: loaded.file.source.text } : {});
    return 'invalid';
  }
  const pipelineFile = loaded.file;
  const { trials, diagnostics } = expandTrials(pipelineFile, values.sweep ?? []);
  const overridden = new Set((values.param ?? []).map((p) => p.split('=')[0]));
  for (const trial of trials) {
    for (const name of Object.keys(trial.values)) {
      if (overridden.has(name)) diagnostics.push({ code: 'bad-override', file: '<command line>', line: 0, col: 0, length: 0, field: `-p ${name}`, message: `param '${name}' is swept; it cannot also be overridden with -p` });
    }
  }
  if (diagnostics.length) {
    printDiagnostics(io, dedupeDiagnostics(diagnostics), { [file]: pipelineFile.source.text });
    return 'invalid';
  }
  if (trials.length === 0) throw new UsageError(`pipe sweep ${file}: nothing to sweep: add a sweep: section or -S NAME=V1,V2`);

  const prepared = new Map<string, Prepared>();
  for (const trial of trials) {
    const p = await prepare(file, values, io, { values: trial.values, pipelineFile });
    if (!p) return 'invalid';
    prepared.set(trial.id, p);
  }
  const plans = new Map([...prepared].map(([id, p]) => [id, p.plan]));
  const sweepPlan = mergePlans(trials, plans);
  const objective = values.objective ?? pipelineFile.sweep?.objective ?? 'test_accuracy';
  const direction = pipelineFile.sweep?.direction ?? (/loss|error/.test(objective) ? 'minimize' : 'maximize');

  if (values['dry-run']) {
    printDryRun(io, trials, sweepPlan);
    return 'ok';
  }

  const first = prepared.get(trials[0]?.id ?? '');
  if (!first) return 'invalid';
  const sweepId = `sweep-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-')}`;
  const sweepDir = path.join(first.paths.runsDir, pipelineFile.name, sweepId);
  const trialRunDir = (trial: Trial) => path.join(sweepDir, trial.id);
  for (const trial of trials) await fs.mkdir(trialRunDir(trial), { recursive: true });

  const tracking = pipelineFile.tracking.enabled && !values['no-track'] && process.env['PIPE_NO_TRACK'] !== '1';
  const trialListeners = new Map<string, RunListener>();
  const closers: Array<() => Promise<void>> = [];
  let parent: import('../tracking/sweep-parent.ts').SweepParent | undefined;
  if (tracking) {
    try {
      const { startSweepParent } = await import('../tracking/sweep-parent.ts');
      parent = await startSweepParent({ projectDir: first.paths.projectDir, pipeline: pipelineFile, sweepId, trials, objective, direction, sweepDir });
      const { createTracker } = await import('../tracking/tracker.ts');
      for (const trial of trials) {
        const tracker = await createTracker({ projectDir: first.paths.projectDir, trackingUri: pipelineFile.tracking.uri, parentRunId: parent.runId, log: (line: string) => io.err(`${line}\n`) });
        trialListeners.set(trial.id, tracker.listener);
        closers.push(async () => {
          await tracker.close();
        });
      }
    } catch (error) {
      io.err(`tracking: ${(error as Error).message} (the sweep goes on untracked)\n`);
    }
  }
  for (const trial of trials) {
    const writer = runLogWriter(path.join(trialRunDir(trial), 'log.txt'));
    closers.push(() => writer.close());
    const tracker = trialListeners.get(trial.id);
    const linker = outputLinker(trialRunDir(trial), { latest: false });
    trialListeners.set(trial.id, (event) => {
      void writer.listener(event);
      void linker(event);
      return tracker?.(event);
    });
  }
  const trialMetrics = new Map<string, Record<string, number>>();
  const demux = demultiplex(sweepPlan, trials, trialListeners, trialRunDir, prepared, trialMetrics);
  const mergedPrepared: Prepared = { ...first, plan: sweepPlan.plan };
  const { summary } = await executePrepared(mergedPrepared, { ...values, 'no-track': true }, io, { listeners: [demux], runDir: sweepDir, runId: sweepId, latest: false, summaryMetrics: false });
  for (const close of closers) await close().catch(() => undefined);

  const rows = trials.map((trial) => {
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
    return { trial, status, error, metrics, objective: metrics[objective] };
  });
  rows.sort((a, b) => {
    const av = a.objective ?? (direction === 'maximize' ? -Infinity : Infinity);
    const bv = b.objective ?? (direction === 'maximize' ? -Infinity : Infinity);
    return direction === 'maximize' ? bv - av : av - bv;
  });
  const table = formatTrialTable(rows, objective);
  io.err(`\nsweep ${sweepId}: ${trials.length} trials, ${sweepPlan.plan.stages.length} distinct stages (${summary.stages.filter((s) => s.status === 'ran').length} ran, ${summary.stages.filter((s) => s.status === 'cached').length} cached) in ${formatDuration(summary.durationMs)}; sorted by ${objective} (${direction})\n${table}`);
  await fs.writeFile(path.join(sweepDir, 'trials.json'), JSON.stringify(rows.map((r) => ({ id: r.trial.id, values: r.trial.values, status: r.status, error: r.error, metrics: r.metrics })), null, 2));
  await parent?.finish(rows.map((r) => ({ id: r.trial.id, label: r.trial.label, values: r.trial.values, status: r.status, error: r.error, metrics: r.metrics })), table).catch((error: Error) => io.err(`tracking: ${error.message}\n`));
  const best = rows[0];
  if (tracking && values.register !== undefined && best?.status === 'succeeded' && best.objective !== undefined) {
    // The best trial's model, through its own journal (kept for `pipe sync` when the server is down).
    const { registerFromJournal } = await import('./register.ts');
    const print = (line: string) => io.err(`${line}\n`);
    await registerFromJournal({ projectDir: first.paths.projectDir, target: best.trial.id, name: values.register, aliases: values.alias ?? [], print }, trialRunDir(best.trial)).catch((error: Error) => io.err(`register: ${error.message}\n`));
  }
  if (values.json) io.out(`${JSON.stringify({ sweep: sweepId, objective, direction, trials: rows.map((r) => ({ id: r.trial.id, values: r.trial.values, status: r.status, error: r.error, metrics: r.metrics })), stages: summary.stages }, null, 2)}\n`);
  return rows.every((r) => r.status === 'succeeded') ? 'ok' : 'failed';
}

function formatTrialTable(rows: Array<{ trial: Trial; status: string; error?: string; metrics: Record<string, number> }>, objective: string): string {
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.trial.values)))];
  const extra = [objective, ...['val_accuracy', 'test_loss', 'accuracy'].filter((k) => k !== objective && rows.some((r) => k in r.metrics))];
  const header = ['trial', ...names, 'status', ...extra];
  const body = rows.map((r) => [
    r.trial.id,
    ...names.map((n) => (n in r.trial.values ? JSON.stringify(r.trial.values[n]) : '')),
    r.status,
    ...extra.map((k) => (r.metrics[k] === undefined ? '' : (r.metrics[k] as number).toFixed(4))),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  const failures = rows.filter((r) => r.error).map((r) => `  ${r.trial.id} failed: ${r.error}`);
  return `${[line(header), ...body.map(line)].join('\n')}\n${failures.length ? `${failures.join('\n')}\n` : ''}`;
}

function printDryRun(io: Io, trials: Trial[], sweepPlan: SweepPlan): void {
  io.out(`${trials.length} trials:\n`);
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
