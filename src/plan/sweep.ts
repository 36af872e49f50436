// Sweeps as plans: trials over param values (a grid, explicit combinations, `-S name=v1,v2`) are
// expanded, each planned as an ordinary run, and the plans merged by fingerprint into one DAG, so a
// stage that is the same in several trials runs once. Pure: no I/O (the command is src/app/sweep.ts).

import { convertOverride, type AnalyzedStage } from '../pipeline/analyze.ts';
import type { Diagnostic } from '../core/diagnostics.ts';
import { at } from '../core/diagnostics.ts';
import type { RunEvent, RunListener, RunSummary, StageEndEvent } from '../core/events.ts';
import { canonicalJson } from '../cache/fingerprint.ts';
import { checkParamValue, rangeOf, type PipelineFile } from '../pipeline/pipeline.ts';
import type { Plan, PlannedStage } from './plan.ts';

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

/** What demultiplexing needs of each trial's prepared run. */
export interface TrialPlan {
  pipeline: { params: Record<string, unknown> };
  plan: Plan;
}

/** Splits the merged run's events into one event stream per trial (for per-trial MLflow runs). */
export function demultiplex(
  sweepPlan: SweepPlan,
  trials: Trial[],
  trialListeners: Map<string, RunListener>,
  trialRunDir: (trial: Trial) => string,
  prepared: Map<string, TrialPlan>,
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
    status: stages.every((s) => s.status === 'ran' || s.status === 'cached') && !merged.interrupted ? 'succeeded' : 'failed',
    ...(merged.interrupted ? { interrupted: merged.interrupted } : {}),
    durationMs: merged.durationMs,
    stages,
    metrics: {},
  };
}
