// Sweeps: trials over param values (a grid, explicit combinations, `-S name=v1,v2`). Every trial
// is planned as an ordinary run; the plans are merged by fingerprint into one DAG, so a stage that
// is the same in several trials (data, split, views, features, head) runs once, and only what
// differs runs per trial. Each trial is still an MLflow run of its own, nested under a parent run.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { convertOverride, type AnalyzedStage } from './analyze.ts';
import { EXIT_FAILED, EXIT_INVALID, EXIT_OK, printDiagnostics, UsageError, type CliOptions, type Io } from './cli.ts';
import { executePrepared, prepare, type Prepared } from './commands.ts';
import type { Diagnostic } from './diagnostics.ts';
import { at, dedupeDiagnostics } from './diagnostics.ts';
import type { RunEvent, RunListener, RunSummary, StageEndEvent } from './events.ts';
import { canonicalJson } from './fingerprint.ts';
import { checkParamValue, loadPipeline, rangeOf, type PipelineFile } from './pipeline.ts';
import type { Plan, PlannedStage } from './plan.ts';
import { formatDuration, outputLinker, runLogWriter } from './render.ts';

export interface Trial {
  /** t1, t2, …: stable within a sweep definition (grid order, then explicit trials). */
  id: string;
  values: Record<string, unknown>;
  /** `fine_tune_at=60 base_lr=0.0001`. */
  label: string;
}

/** Expands the sweep section and `-S` flags into trials, or the problems found. */
export function expandTrials(file: PipelineFile, cliSweeps: string[]): { trials: Trial[]; diagnostics: Diagnostic[] } {
  const diagnostics: Diagnostic[] = [];
  const declared = new Map(file.params.map((p) => [p.name, p]));
  const grid = new Map<string, unknown[]>();
  for (const [name, list] of Object.entries(file.sweep?.grid ?? {})) {
    const decl = declared.get(name);
    if (!decl) {
      diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'grid', name], 'key'), 'unknown-param', `sweep.grid.${name}`, `unknown param '${name}' (declared params: ${[...declared.keys()].join(', ')})`));
      continue;
    }
    list.forEach((value, i) => {
      const problem = checkParamValue(decl, value);
      if (problem) diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'grid', name, i]), 'bad-param-type', `sweep.grid.${name}.${i}`, problem));
    });
    grid.set(name, list);
  }
  for (const arg of cliSweeps) {
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(0, eq) : '';
    const decl = declared.get(name);
    const where = { code: 'bad-override' as const, file: '<command line>', line: 0, col: 0, length: 0, field: `-S ${arg}` };
    if (!decl) {
      diagnostics.push({ ...where, code: 'unknown-param', message: eq > 0 ? `unknown param '${name}' (params of ${file.source.path}: ${[...declared.keys()].join(', ')})` : 'expected NAME=V1,V2,...' });
      continue;
    }
    const values: unknown[] = [];
    for (const text of arg.slice(eq + 1).split(',')) {
      const converted = convertOverride(decl, text);
      if ('error' in converted) diagnostics.push({ ...where, message: `param '${name}': ${converted.error}` });
      else values.push(converted.value);
    }
    grid.set(name, values);
  }

  const combos: Array<Record<string, unknown>> = [{}];
  for (const [name, list] of grid) {
    const next: Array<Record<string, unknown>> = [];
    for (const combo of combos) for (const value of list) next.push({ ...combo, [name]: value });
    combos.splice(0, combos.length, ...next);
  }
  if (grid.size === 0) combos.splice(0, combos.length);
  for (const [i, explicit] of (file.sweep?.trials ?? []).entries()) {
    for (const [name, value] of Object.entries(explicit)) {
      const decl = declared.get(name);
      if (!decl) diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'trials', i, name], 'key'), 'unknown-param', `sweep.trials.${i}.${name}`, `unknown param '${name}'`));
      else {
        const problem = checkParamValue(decl, value);
        if (problem) diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'trials', i, name]), 'bad-param-type', `sweep.trials.${i}.${name}`, problem));
      }
    }
    combos.push(explicit);
  }
  const seen = new Set<string>();
  const trials: Trial[] = [];
  for (const values of combos) {
    const key = canonicalJson(values);
    if (seen.has(key)) continue;
    seen.add(key);
    trials.push({ id: `t${trials.length + 1}`, values, label: Object.entries(values).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ') });
  }
  return { trials, diagnostics };
}

interface MergedNode {
  planned: PlannedStage;
  /** Trial id → the stage's name in that trial. */
  trials: Map<string, string>;
}

export interface SweepPlan {
  plan: Plan;
  nodes: Map<string, MergedNode>;
  /** Trial id → (stage name in the trial → merged node name). */
  trialStages: Map<string, Map<string, string>>;
}

/** Merges per-trial plans by fingerprint: one node per distinct stage computation. */
export function mergePlans(trials: Trial[], plans: Map<string, Plan>): SweepPlan {
  const byFingerprint = new Map<string, { planned: PlannedStage; trials: Map<string, string> }>();
  const order: string[] = [];
  for (const trial of trials) {
    const plan = plans.get(trial.id);
    if (!plan) continue;
    for (const stage of plan.stages) {
      let node = byFingerprint.get(stage.fingerprint);
      if (!node) {
        node = { planned: stage, trials: new Map() };
        byFingerprint.set(stage.fingerprint, node);
        order.push(stage.fingerprint);
      }
      node.trials.set(trial.id, stage.name);
    }
  }
  // Name each node: the stage name when every trial shares it, else the name with the swept
  // values its trials have in common, e.g. fine-tune[fine_tune_at=60 base_lr=0.0001].
  const nameOf = new Map<string, string>();
  const taken = new Set<string>();
  for (const fp of order) {
    const node = byFingerprint.get(fp);
    if (!node) continue;
    const sharers = trials.filter((t) => node.trials.has(t.id));
    let name = node.planned.name;
    if (sharers.length < trials.length) {
      const common = Object.keys(sharers[0]?.values ?? {}).filter((k) => sharers.every((t) => canonicalJson(t.values[k]) === canonicalJson(sharers[0]?.values[k])));
      const label = common.map((k) => `${k}=${typeof sharers[0]?.values[k] === 'string' ? String(sharers[0]?.values[k]) : JSON.stringify(sharers[0]?.values[k])}`).join(' ');
      name = `${name}[${label || sharers.map((t) => t.id).join(',')}]`;
    }
    while (taken.has(name)) name = `${name}'`;
    taken.add(name);
    nameOf.set(fp, name);
  }
  const nodes = new Map<string, MergedNode>();
  const trialStages = new Map<string, Map<string, string>>();
  const stages: PlannedStage[] = [];
  for (const fp of order) {
    const node = byFingerprint.get(fp);
    const name = nameOf.get(fp);
    if (!node || !name) continue;
    const [firstTrial, localName] = [...node.trials.entries()][0] ?? [];
    const trialPlan = firstTrial ? plans.get(firstTrial) : undefined;
    const fpOf = (local: string) => trialPlan?.stages.find((s) => s.name === local)?.fingerprint ?? '';
    const rename = (local: string) => nameOf.get(fpOf(local)) ?? local;
    const original = node.planned.stage;
    const stage: AnalyzedStage = {
      ...original,
      name,
      upstream: original.upstream.map(rename),
      inputs: Object.fromEntries(Object.entries(original.inputs).map(([slot, up]) => [slot, rename(up)])),
    };
    const planned: PlannedStage = { ...node.planned, name, stage };
    stages.push(planned);
    nodes.set(name, { planned, trials: node.trials });
    for (const [trialId, local] of node.trials) {
      if (!trialStages.has(trialId)) trialStages.set(trialId, new Map());
      trialStages.get(trialId)?.set(local, name);
    }
    void localName;
  }
  const first = plans.values().next().value as Plan | undefined;
  if (!first) throw new Error('bug: no trial plans');
  return { plan: { pipeline: first.pipeline, stages }, nodes, trialStages };
}

/** Splits the merged run's events into one event stream per trial (for per-trial MLflow runs). */
export function demultiplex(
  sweepPlan: SweepPlan,
  trials: Trial[],
  trialListeners: Map<string, RunListener>,
  trialRunDir: (trial: Trial) => string,
  prepared: Map<string, Prepared>,
  trialMetrics: Map<string, Record<string, number>>,
): RunListener {
  const ends = new Map<string, StageEndEvent>();
  return (event: RunEvent) => {
    const forward = (stageName: string, make: (trialId: string, local: string) => RunEvent) => {
      const node = sweepPlan.nodes.get(stageName);
      if (!node) return;
      for (const [trialId, local] of node.trials) trialListeners.get(trialId)?.(make(trialId, local));
    };
    switch (event.type) {
      case 'run-start':
        for (const trial of trials) {
          const p = prepared.get(trial.id);
          const listener = trialListeners.get(trial.id);
          if (!p || !listener) continue;
          const local = sweepPlan.trialStages.get(trial.id) ?? new Map<string, string>();
          listener({
            ...event,
            runId: `${event.runId}-${trial.id}`,
            runDir: trialRunDir(trial),
            params: p.pipeline.params,
            sweep: { id: event.runId, trial: trial.id },
            stages: p.plan.stages.map((s) => {
              const merged = sweepPlan.nodes.get(local.get(s.name) ?? '');
              return { name: s.name, kind: s.kindName, fingerprint: s.fingerprint, cached: merged?.planned.cached ?? s.cached, reasons: merged?.planned.reasons ?? s.reasons, params: s.stage.params, needs: s.stage.upstream };
            }),
          });
        }
        break;
      case 'stage-start':
      case 'stage-progress':
      case 'stage-log':
      case 'stage-metric':
        forward(event.stage, (_t, local) => ({ ...event, stage: local }));
        break;
      case 'stage-end':
        ends.set(event.stage, event);
        forward(event.stage, (trialId, local) => {
          const metrics = trialMetrics.get(trialId) ?? {};
          for (const point of [...event.metrics].sort((a, b) => a.step - b.step || a.timestamp - b.timestamp)) metrics[point.key] = point.value;
          trialMetrics.set(trialId, metrics);
          return { ...event, stage: local };
        });
        break;
      case 'run-end':
        for (const trial of trials) {
          const listener = trialListeners.get(trial.id);
          if (listener) listener({ type: 'run-end', endedAt: event.endedAt, summary: { ...trialSummary(trial, sweepPlan, event.summary), metrics: trialMetrics.get(trial.id) ?? {} } });
        }
        break;
    }
  };
}

export function trialSummary(trial: Trial, sweepPlan: SweepPlan, merged: RunSummary): RunSummary {
  const local = sweepPlan.trialStages.get(trial.id) ?? new Map<string, string>();
  const stages = [...local.entries()].map(([localName, mergedName]) => {
    const s = merged.stages.find((x) => x.name === mergedName);
    return { ...(s ?? { kind: '?', status: 'skipped' as const, durationMs: 0, fingerprint: '', reasons: [], summary: {} }), name: localName };
  });
  return {
    runId: `${merged.runId}-${trial.id}`,
    pipeline: merged.pipeline,
    status: stages.every((s) => s.status === 'ran' || s.status === 'cached') ? 'succeeded' : 'failed',
    durationMs: merged.durationMs,
    stages,
    metrics: {},
  };
}

export async function sweepCommand(file: string, values: CliOptions, io: Io): Promise<number> {
  const loaded = loadPipeline(file, file);
  if (!loaded.file || loaded.diagnostics.length > 0) {
    printDiagnostics(io, loaded.diagnostics, loaded.file ? { [file]: loaded.file.source.text } : {});
    return EXIT_INVALID;
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
    return EXIT_INVALID;
  }
  if (trials.length === 0) throw new UsageError(`pipe sweep ${file}: nothing to sweep: add a sweep: section or -S NAME=V1,V2`);

  const prepared = new Map<string, Prepared>();
  for (const trial of trials) {
    const p = await prepare(file, values, io, { values: trial.values, pipelineFile });
    if (!p) return EXIT_INVALID;
    prepared.set(trial.id, p);
  }
  const plans = new Map([...prepared].map(([id, p]) => [id, p.plan]));
  const sweepPlan = mergePlans(trials, plans);
  const objective = values.objective ?? pipelineFile.sweep?.objective ?? 'test_accuracy';
  const direction = pipelineFile.sweep?.direction ?? (/loss|error/.test(objective) ? 'minimize' : 'maximize');

  if (values['dry-run']) {
    printDryRun(io, trials, sweepPlan);
    return EXIT_OK;
  }

  const first = prepared.get(trials[0]?.id ?? '');
  if (!first) return EXIT_INVALID;
  const sweepId = `sweep-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-')}`;
  const sweepDir = path.join(first.paths.runsDir, pipelineFile.name, sweepId);
  const trialRunDir = (trial: Trial) => path.join(sweepDir, trial.id);
  for (const trial of trials) await fs.mkdir(trialRunDir(trial), { recursive: true });

  const tracking = pipelineFile.tracking.enabled && !values['no-track'] && process.env['PIPE_NO_TRACK'] !== '1';
  const trialListeners = new Map<string, RunListener>();
  const closers: Array<() => Promise<void>> = [];
  let parent: import('./tracking/sweep-parent.ts').SweepParent | undefined;
  if (tracking) {
    try {
      const { startSweepParent } = await import('./tracking/sweep-parent.ts');
      parent = await startSweepParent({ projectDir: first.paths.projectDir, pipeline: pipelineFile, sweepId, trials, objective, direction, sweepDir });
      const { createTracker } = await import('./tracking/tracker.ts');
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
  if (values.json) io.out(`${JSON.stringify({ sweep: sweepId, objective, direction, trials: rows.map((r) => ({ id: r.trial.id, values: r.trial.values, status: r.status, error: r.error, metrics: r.metrics })), stages: summary.stages }, null, 2)}\n`);
  return rows.every((r) => r.status === 'succeeded') ? EXIT_OK : EXIT_FAILED;
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
