// Sweeps as plans: trials over param values (a grid, explicit combinations, `-S name=v1,v2`) are
// expanded, each planned as an ordinary run, and the plans merged by fingerprint into one DAG, so a
// stage that is the same in several trials runs once. Pure: no I/O (the command is src/app/sweep.ts).

import { convertOverride, type AnalyzedStage } from '../pipeline/analyze.ts';
import type { Diagnostic } from '../core/diagnostics.ts';
import { at } from '../core/diagnostics.ts';
import type { RunEvent, RunListener, RunSummary, StageEndEvent } from '../core/events.ts';
import { canonicalJson } from '../cache/fingerprint.ts';
import { article, checkParamValue, rangeOf, type ParamDecl, type PipelineFile } from '../pipeline/pipeline.ts';
import type { Plan, PlannedStage } from './plan.ts';
import { makeDistribution, parseDistributionArg, readDistribution, sampleAt, type Distribution, type DistributionKind } from './space.ts';

export interface Trial {
  /** t1, t2, …: stable within a sweep definition (grid order, then explicit trials). */
  id: string;
  values: Record<string, unknown>;
  /** `fine_tune_at=60 base_lr=0.0001`. */
  label: string;
}

export interface SampleOptions {
  /** `--samples N`: how many points of the sampled space (overrides `sweep.samples`). */
  samples?: number;
  /** `--seed N`: which design (overrides `sweep.seed`; default 0). */
  seed?: number;
}

/**
 * Expands the sweep section and `-S` flags into trials, or the problems found. Trials are, in this
 * order: each sample of the sampled space (`space:` and `-S NAME=dist(…)`) crossed with every
 * combination of the grid (`grid:` and `-S NAME=V1,V2`) — sample-major, so that `samples: 2N` keeps
 * the first N samples' trials and their ids —, then the explicit `trials:`. Identical combinations
 * are one trial.
 */
export function expandTrials(file: PipelineFile, cliSweeps: string[], options: SampleOptions = {}): { trials: Trial[]; diagnostics: Diagnostic[] } {
  const diagnostics: Diagnostic[] = [];
  const declared = new Map(file.params.map((p) => [p.name, p]));
  const grid = gridOfFile(file, declared, diagnostics);
  const space = spaceOfFile(file, declared, diagnostics);
  addSweepFlags(grid, space, cliSweeps, file, declared, diagnostics);
  const samples = options.samples ?? file.sweep?.samples;
  const seed = options.seed ?? file.sweep?.seed ?? 0;
  if (space.size > 0 && samples === undefined) diagnostics.push(missingSamples(file));
  const combos = space.size > 0 && samples !== undefined ? sampledPoints(space, samples, seed, grid) : grid.size === 0 ? [] : gridPoints(grid);
  for (const [i, explicit] of (file.sweep?.trials ?? []).entries()) {
    checkExplicitTrial(file, declared, i, explicit, diagnostics);
    combos.push(explicit);
  }
  return { trials: distinctTrials(combos), diagnostics };
}

type Declared = Map<string, ParamDecl>;

/** The `sweep.grid` section: param → values, each checked against its declaration. */
function gridOfFile(file: PipelineFile, declared: Declared, diagnostics: Diagnostic[]): Map<string, unknown[]> {
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
  return grid;
}

/** The `sweep.space` section: param → distribution, each checked against its declaration. */
function spaceOfFile(file: PipelineFile, declared: Declared, diagnostics: Diagnostic[]): Map<string, Distribution> {
  const space = new Map<string, Distribution>();
  for (const [name, raw] of Object.entries(file.sweep?.space ?? {})) {
    const decl = declared.get(name);
    const field = `sweep.space.${name}`;
    if (!decl) {
      diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'space', name], 'key'), 'unknown-param', field, `unknown param '${name}' (declared params: ${[...declared.keys()].join(', ')})`));
      continue;
    }
    const dist = readDistribution(raw);
    const problem = typeof dist === 'string' ? dist : distributionProblem(decl, dist);
    if (problem !== undefined) diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'space', name]), 'bad-param-type', field, `param '${name}': ${problem}`));
    else if (typeof dist !== 'string') space.set(name, dist);
  }
  return space;
}

function missingSamples(file: PipelineFile): Diagnostic {
  if (!file.sweep?.space) {
    return { code: 'bad-override', file: '<command line>', line: 0, col: 0, length: 0, field: '-S', message: 'a sampled space needs a number of samples: give --samples N' };
  }
  return at(file.source, rangeOf(file.doc, ['sweep', 'space'], 'key'), 'schema', 'sweep.samples', 'a sampled space needs a number of samples: add `samples: N` to sweep:, or give --samples N');
}

/** `samples` points of the space, each crossed with every grid combination (sample-major). */
function sampledPoints(space: Map<string, Distribution>, samples: number, seed: number, grid: Map<string, unknown[]>): Array<Record<string, unknown>> {
  const names = [...space.keys()];
  const dims = [...space.values()];
  const gridCombos = gridPoints(grid);
  const combos: Array<Record<string, unknown>> = [];
  for (let i = 0; i < samples; i++) {
    const point = sampleAt(dims, i, seed);
    const drawn = Object.fromEntries(names.map((name, d) => [name, point[d]]));
    for (const combo of gridCombos) combos.push({ ...combo, ...drawn });
  }
  return combos;
}

/** Whether distribution `dist` can give values of the param `decl` (type, bounds, enum). */
function distributionProblem(decl: ParamDecl, dist: Distribution): string | undefined {
  if (dist.kind === 'choice') {
    for (const value of dist.values) {
      const problem = checkParamValue(decl, value);
      if (problem) return `choice: ${problem}`;
    }
    return undefined;
  }
  const wanted = dist.kind === 'int' ? ['integer', 'number'] : ['number'];
  if (!wanted.includes(decl.type)) {
    return `${dist.kind} draws ${dist.kind === 'int' ? 'integers' : 'numbers'}, but the param is ${article(decl.type)}${decl.type === 'integer' ? ' (use int or choice)' : ' (use choice)'}`;
  }
  for (const bound of [dist.low, dist.high]) {
    const problem = checkParamValue(decl, bound);
    if (problem) return `${dist.kind}: ${problem}`;
  }
  return undefined;
}

/** A distribution from `-S NAME=kind(args)`: choice values typed by the param, bounds as numbers. */
function cliDistribution(decl: ParamDecl, kind: DistributionKind, args: string[]): Distribution | string {
  const typed: unknown[] = [];
  for (const arg of args) {
    const converted = kind === 'choice' ? convertOverride(decl, arg) : arg !== '' && Number.isFinite(Number(arg)) ? { value: Number(arg) } : { error: `${kind}: expected a number, got '${arg}'` };
    if ('error' in converted) return converted.error;
    typed.push(converted.value);
  }
  return makeDistribution(kind, typed);
}

/**
 * `-S name=v1,v2` replaces the grid's values of `name` (or adds it), converted by the param's type;
 * `-S name=dist(…)` makes `name` a dimension of the sampled space instead.
 */
function addSweepFlags(grid: Map<string, unknown[]>, space: Map<string, Distribution>, cliSweeps: string[], file: PipelineFile, declared: Declared, diagnostics: Diagnostic[]): void {
  for (const arg of cliSweeps) {
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(0, eq) : '';
    const decl = declared.get(name);
    const where = { code: 'bad-override' as const, file: '<command line>', line: 0, col: 0, length: 0, field: `-S ${arg}` };
    if (!decl) {
      diagnostics.push({ ...where, code: 'unknown-param', message: eq > 0 ? `unknown param '${name}' (params of ${file.source.path}: ${[...declared.keys()].join(', ')})` : 'expected NAME=V1,V2,... or NAME=DIST(…)' });
      continue;
    }
    const text = arg.slice(eq + 1);
    const form = parseDistributionArg(text);
    if (form !== undefined) {
      const dist = typeof form === 'string' ? form : cliDistribution(decl, form.kind, form.args);
      const problem = typeof dist === 'string' ? dist : distributionProblem(decl, dist);
      if (problem !== undefined) diagnostics.push({ ...where, message: `param '${name}': ${problem}` });
      else if (typeof dist !== 'string') {
        space.set(name, dist);
        grid.delete(name);
      }
      continue;
    }
    const values: unknown[] = [];
    for (const item of text.split(',')) {
      const converted = convertOverride(decl, item);
      if ('error' in converted) diagnostics.push({ ...where, message: `param '${name}': ${converted.error}` });
      else values.push(converted.value);
    }
    grid.set(name, values);
    space.delete(name);
  }
}

/** Every combination of the grid's values, the first param outermost. */
function gridPoints(grid: Map<string, unknown[]>): Array<Record<string, unknown>> {
  let combos: Array<Record<string, unknown>> = [{}];
  for (const [name, list] of grid) combos = combos.flatMap((combo) => list.map((value) => ({ ...combo, [name]: value })));
  return combos;
}

function checkExplicitTrial(file: PipelineFile, declared: Declared, i: number, explicit: Record<string, unknown>, diagnostics: Diagnostic[]): void {
  for (const [name, value] of Object.entries(explicit)) {
    const decl = declared.get(name);
    if (!decl) diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'trials', i, name], 'key'), 'unknown-param', `sweep.trials.${i}.${name}`, `unknown param '${name}'`));
    else {
      const problem = checkParamValue(decl, value);
      if (problem) diagnostics.push(at(file.source, rangeOf(file.doc, ['sweep', 'trials', i, name]), 'bad-param-type', `sweep.trials.${i}.${name}`, problem));
    }
  }
}

/** t1, t2, … for each distinct combination (same values in any key order: one trial). */
function distinctTrials(combos: Array<Record<string, unknown>>): Trial[] {
  const seen = new Set<string>();
  const trials: Trial[] = [];
  for (const values of combos) {
    const key = canonicalJson(values);
    if (seen.has(key)) continue;
    seen.add(key);
    trials.push({ id: `t${trials.length + 1}`, values, label: Object.entries(values).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ') });
  }
  return trials;
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
  const byFingerprint = groupByFingerprint(trials, plans);
  const nameOf = nodeNames(trials, byFingerprint);
  const nodes = new Map<string, MergedNode>();
  const trialStages = new Map<string, Map<string, string>>();
  const stages: PlannedStage[] = [];
  for (const [fp, node] of byFingerprint) {
    const name = nameOf.get(fp)!;
    const planned: PlannedStage = { ...node.planned, name, stage: renamedStage(node, name, plans, nameOf) };
    stages.push(planned);
    nodes.set(name, { planned, trials: node.trials });
    for (const [trialId, local] of node.trials) {
      if (!trialStages.has(trialId)) trialStages.set(trialId, new Map());
      trialStages.get(trialId)?.set(local, name);
    }
  }
  const first = plans.values().next().value as Plan | undefined;
  if (!first) throw new Error('bug: no trial plans');
  return { plan: { pipeline: first.pipeline, stages }, nodes, trialStages };
}

/** Fingerprint → the stage computing it and its name in each trial, in order of first appearance. */
function groupByFingerprint(trials: Trial[], plans: Map<string, Plan>): Map<string, MergedNode> {
  const byFingerprint = new Map<string, MergedNode>();
  for (const trial of trials) {
    for (const stage of plans.get(trial.id)?.stages ?? []) {
      let node = byFingerprint.get(stage.fingerprint);
      if (!node) {
        node = { planned: stage, trials: new Map() };
        byFingerprint.set(stage.fingerprint, node);
      }
      node.trials.set(trial.id, stage.name);
    }
  }
  return byFingerprint;
}

/**
 * Names each node: the stage name when every trial shares it, else the name with the swept values
 * its trials have in common, e.g. fine-tune[fine_tune_at=60 base_lr=0.0001] (their ids when none).
 */
function nodeNames(trials: Trial[], byFingerprint: Map<string, MergedNode>): Map<string, string> {
  const nameOf = new Map<string, string>();
  const taken = new Set<string>();
  for (const [fp, node] of byFingerprint) {
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
  return nameOf;
}

/** The node's stage under its merged name, its upstream stages renamed to their merged names. */
function renamedStage(node: MergedNode, name: string, plans: Map<string, Plan>, nameOf: Map<string, string>): AnalyzedStage {
  const [firstTrial] = [...node.trials.keys()];
  const trialPlan = firstTrial ? plans.get(firstTrial) : undefined;
  const fpOf = (local: string) => trialPlan?.stages.find((s) => s.name === local)?.fingerprint ?? '';
  const rename = (local: string) => nameOf.get(fpOf(local)) ?? local;
  const original = node.planned.stage;
  return {
    ...original,
    name,
    upstream: original.upstream.map(rename),
    inputs: Object.fromEntries(Object.entries(original.inputs).map(([slot, up]) => [slot, rename(up)])),
  };
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
