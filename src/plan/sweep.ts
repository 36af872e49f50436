// Sweeps as plans: trials over param values (a grid, explicit combinations, `-S name=v1,v2`) are
// expanded, each planned as an ordinary run, and the plans merged by fingerprint into one DAG, so a
// stage that is the same in several trials runs once. Pure: no I/O (the command is src/app/sweep.ts).

import { convertOverride, type AnalyzedStage } from '../pipeline/analyze.ts';
import type { Diagnostic } from '../core/diagnostics.ts';
import { at } from '../core/diagnostics.ts';
import type { PrunedAt, RunEvent, RunListener, RunStartEvent, RunSummary, StageEndEvent, StageSummary } from '../core/events.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import { canonicalJson } from '../cache/fingerprint.ts';
import { article, checkParamValue, rangeOf, type ParamDecl, type PipelineFile } from '../pipeline/pipeline.ts';
import type { Plan, PlannedStage } from './plan.ts';
import { makeDistribution, parseDistributionArg, readDistribution, sampleAt, type Distribution, type DistributionKind } from './space.ts';
import { createScheduler, PausingAsha, type Scheduler, type SchedulerConfig } from './scheduler.ts';

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

/** The stage kinds that report per-epoch metrics and stop when a scheduler says so. */
export const SCHEDULED_KINDS: readonly string[] = ['fine-tune', 'train-head'];
/** The metrics those kinds report after every epoch. */
export const EPOCH_METRICS: readonly string[] = ['val_accuracy', 'val_loss', 'accuracy', 'loss'];

/**
 * `sweep.scheduler` with Ray Tune's defaults filled in (grace_period 1, reduction_factor 4,
 * min_samples_required 3, metric val_accuracy, mode by the metric's name), or the problems found,
 * each at its line. Undefined when the sweep has none (early stopping is off by default).
 */
export function schedulerOfFile(file: PipelineFile): { scheduler?: SchedulerConfig; diagnostics: Diagnostic[] } {
  const decl = file.sweep?.scheduler;
  if (!decl) return { diagnostics: [] };
  const diagnostics: Diagnostic[] = [];
  const where = (key: string, which: 'key' | 'value' = 'value') => rangeOf(file.doc, ['sweep', 'scheduler', key], which);
  const problem = (key: string, message: string, which: 'key' | 'value' = 'value') =>
    diagnostics.push(at(file.source, where(key, which) ?? rangeOf(file.doc, ['sweep', 'scheduler'], 'key'), 'schema', `sweep.scheduler.${key}`, message));
  const learning = file.stages.filter((s) => s.kind !== undefined && SCHEDULED_KINDS.includes(s.kind));
  const stageName = decl.stage ?? (learning.find((s) => s.kind === 'fine-tune') ?? learning.find((s) => s.kind === 'train-head'))?.name;
  const stage = file.stages.find((s) => s.name === stageName);
  if (decl.stage !== undefined && !stage) {
    problem('stage', `no stage '${decl.stage}' in the pipeline (stages: ${file.stages.map((s) => s.name).join(', ')})`);
  } else if (!stage) {
    problem('type', `early stopping watches the epochs of a ${SCHEDULED_KINDS.join(' or ')} stage, and the pipeline has none`, 'key');
  } else if (!SCHEDULED_KINDS.includes(stage.kind ?? '')) {
    problem('stage', `stage '${stage.name}' (${stage.kind ? `kind ${stage.kind}` : 'a command stage'}) reports no epochs: early stopping watches a ${SCHEDULED_KINDS.join(' or ')} stage`);
  }
  const metric = decl.metric ?? 'val_accuracy';
  if (!EPOCH_METRICS.includes(metric)) problem('metric', `'${metric}' is not reported per epoch (expected one of: ${EPOCH_METRICS.join(', ')})`);
  if (decl.type === 'median' && decl.reduction_factor !== undefined) problem('reduction_factor', 'reduction_factor is for type: asha (the median rule has none)', 'key');
  if (decl.type === 'median' && decl.max_t !== undefined) problem('max_t', 'max_t is for type: asha (the median rule has none)', 'key');
  if (decl.type === 'asha' && decl.min_samples_required !== undefined) problem('min_samples_required', 'min_samples_required is for type: median (asha has none)', 'key');
  if (decl.type === 'median' && decl.pause !== undefined) problem('pause', 'pause is for type: asha (the median rule stops trials)', 'key');
  if (diagnostics.length > 0 || !stage) return { diagnostics };
  const scheduler: SchedulerConfig = {
    type: decl.type,
    metric,
    mode: decl.mode ?? (/loss|error/.test(metric) ? 'min' : 'max'),
    stage: stage.name,
    gracePeriod: decl.grace_period ?? 1,
    reductionFactor: decl.reduction_factor ?? 4,
    minSamplesRequired: decl.min_samples_required ?? 3,
    ...(decl.max_t !== undefined ? { maxT: decl.max_t } : {}),
    ...(decl.pause ? { pause: true } : {}),
  };
  return { scheduler, diagnostics };
}

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

/**
 * A trial's event stream timed as the trial, not as the sweep (for its MLflow run, whose duration is
 * end_time − start_time and whose start_time is set only when it is created): the run starts when
 * the first of the trial's own stages starts — one that not every trial shares; a shared stage, or
 * one restored from the cache (it has no stage-start), started nothing of this trial's — else at the
 * sweep's start, and ends when the last of its stages ends (else at the sweep's end). The trial's
 * events before its start are held and passed on after its run-start. `now` times the stage-ends,
 * which carry only a duration.
 */
export function timedTrial(sweepPlan: SweepPlan, trialId: string, listener: RunListener, now: () => number = Date.now): RunListener {
  const own = ownStages(sweepPlan, trialId);
  let start: RunStartEvent | undefined;
  /** The events before the trial's start; undefined once it has started. */
  let held: RunEvent[] | undefined = [];
  let lastEnd: number | undefined;
  // Synchronous, as the run's emitter calls it: the events reach the listener in their order.
  const pass = (events: RunEvent[]): void | Promise<void> => {
    const pending = events.map((e) => listener(e)).filter((r): r is Promise<void> => r instanceof Promise);
    return pending.length > 0 ? Promise.all(pending).then(() => undefined) : undefined;
  };
  const begin = (startedAt: number, event: RunEvent): void | Promise<void> => {
    if (start) start = { ...start, startedAt };
    const events = [...(start ? [start] : []), ...(held ?? []), event];
    held = undefined;
    return pass(events);
  };
  return (event) => {
    switch (event.type) {
      case 'run-start':
        start = event;
        return;
      case 'stage-start':
        if (held && own.has(event.stage)) return begin(event.startedAt, event);
        break;
      case 'stage-end':
        lastEnd = now();
        break;
      case 'run-end': {
        const startedAt = start?.startedAt ?? event.endedAt;
        const endedAt = lastEnd !== undefined && lastEnd >= startedAt ? lastEnd : event.endedAt;
        const end: RunEvent = { ...event, endedAt, summary: { ...event.summary, durationMs: endedAt - startedAt } };
        return held ? begin(startedAt, end) : pass([end]);
      }
      default:
        break;
    }
    if (held) held.push(event);
    else return pass([event]);
  };
}

/** The trial's stages (by their names in the trial) that not every trial of the sweep shares. */
function ownStages(sweepPlan: SweepPlan, trialId: string): Set<string> {
  const trialCount = sweepPlan.trialStages.size;
  const own = new Set<string>();
  for (const [local, merged] of sweepPlan.trialStages.get(trialId) ?? []) {
    if ((sweepPlan.nodes.get(merged)?.trials.size ?? trialCount) < trialCount) own.add(local);
  }
  return own;
}

export function trialSummary(trial: Trial, sweepPlan: SweepPlan, merged: RunSummary): RunSummary {
  const local = sweepPlan.trialStages.get(trial.id) ?? new Map<string, string>();
  const stages = [...local.entries()].map(([localName, mergedName]): StageSummary => {
    const s = merged.stages.find((x) => x.name === mergedName);
    return { ...(s ?? { kind: '?', status: 'skipped' as const, durationMs: 0, fingerprint: '', reasons: [], summary: {} }), name: localName };
  });
  const prunedStage = stages.find((s) => s.status === 'pruned' && s.pruned);
  // Pruned (a stage stopped early, what depends on it held back) is an end of the trial, not a failure.
  const complete = stages.every((s) => s.status === 'ran' || s.status === 'cached' || s.status === 'pruned' || s.afterPruned);
  return {
    runId: `${merged.runId}-${trial.id}`,
    pipeline: merged.pipeline,
    status: complete && !merged.interrupted ? 'succeeded' : 'failed',
    ...(merged.interrupted ? { interrupted: merged.interrupted } : {}),
    durationMs: merged.durationMs,
    stages,
    metrics: {},
    ...(prunedStage?.pruned ? { pruned: { stage: prunedStage.name, ...prunedStage.pruned } } : {}),
  };
}

/**
 * A sweep's early stopping as the runner asks it (an EpochGate of src/exec/run-book.ts): the
 * scheduler's trials are the merged nodes of the watched stage (trials that share one computation
 * of it stop together). Decisions are made here, in the process that runs the sweep, in the order
 * the epochs arrive.
 *
 * With `pause: true` (and a runner that can resume, `pausing`), a stage told to stop is paused: the
 * runner asks `resumeAfterPause` and waits. The answer comes when results make it one of the best
 * of its rung (resume from its checkpoint), or when every watched stage has ended or is paused, at
 * which point the best paused trial of the highest rung short of its quota resumes, and once no
 * rung has one, every paused stage ends (pruned where it paused).
 */
export class SweepScheduler {
  private scheduler: Scheduler | undefined;
  private readonly watched: Set<string>;
  /** Paused stages waiting for the answer, and how to give it. */
  private readonly waiting = new Map<string, (resume: boolean) => void>();
  /** Watched stages that ended (any status): they will report nothing more. */
  private readonly ended = new Set<string>();

  /** `pausing`: the runner resumes paused stages (the local one); otherwise `pause: true` is ignored and trials stop. */
  constructor(readonly config: SchedulerConfig, sweepPlan: SweepPlan, pausing = false) {
    if (!pausing && config.pause) this.config = { ...config, pause: false };
    this.watched = new Set([...sweepPlan.nodes].filter(([, node]) => [...node.trials.values()].includes(config.stage)).map(([name]) => name));
  }

  watches(stage: string): boolean {
    return this.watched.has(stage);
  }

  /** Whether a stage told to stop pauses (and the runner asks resumeAfterPause) rather than ends. */
  pauses(stage: string): boolean {
    return this.watched.has(stage) && this.config.pause === true;
  }

  /** After `epoch` of `of` epochs of merged stage `stage`: true stops it. Its metric is the latest point of that key. */
  decide(stage: string, epoch: number, of: number, metrics: readonly MetricPoint[]): boolean {
    if (!this.watched.has(stage)) return false;
    // max_t defaults to the watched stage's epochs (of the first trial to report).
    this.scheduler ??= createScheduler(this.config, of);
    const value = [...metrics].reverse().find((p) => p.key === this.config.metric)?.value ?? Number.NaN;
    const stop = this.scheduler.onResult(stage, epoch, value) === 'stop' && epoch < of;
    // A new result can put a paused trial among the best of its rung.
    this.promote();
    return stop;
  }

  /**
   * A paused stage waits here: true when it is promoted (it runs again, from its checkpoint),
   * false when the sweep is done with it (it ends pruned where it paused).
   */
  resumeAfterPause(stage: string): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      this.waiting.set(stage, resolve);
      this.promote();
    });
  }

  /** Ends every pause (the run is interrupted): the paused stages end where they are. */
  releaseAll(): void {
    for (const [stage, resolve] of [...this.waiting]) {
      this.waiting.delete(stage);
      resolve(false);
    }
  }

  /**
   * A watched stage that came from the cache ran in an earlier sweep: its epochs are results the
   * scheduler compares the running trials with, as if they had just arrived (the decisions about
   * it are moot: it is complete).
   */
  replay(stage: string, metrics: readonly MetricPoint[], of: number): void {
    if (!this.watched.has(stage)) return;
    this.scheduler ??= createScheduler(this.config, of);
    const points = metrics.filter((p) => p.key === this.config.metric).sort((a, b) => a.step - b.step);
    points.forEach((point, i) => this.scheduler?.onResult(stage, i + 1, point.value));
  }

  /** The listener that replays the watched stages restored from the cache, and notes which ended. */
  readonly listener = (event: RunEvent): void => {
    if (event.type !== 'stage-end' || !this.watched.has(event.stage)) return;
    this.ended.add(event.stage);
    if (event.status === 'cached') {
      const epochs = event.metrics.filter((p) => p.key === this.config.metric).length;
      this.replay(event.stage, event.metrics, epochs);
    }
    this.promote();
  };

  /** Resumes the paused stages that are due, or ends them all when nothing else can run. */
  private promote(): void {
    const asha = this.scheduler;
    if (!(asha instanceof PausingAsha) || this.waiting.size === 0) return;
    const paused = new Set(this.waiting.keys());
    let next = asha.promotion(paused, false);
    if (next === undefined) {
      // A promoted stage left `waiting` when it was promoted: it counts as running until it pauses again.
      const idle = [...this.watched].every((s) => this.ended.has(s) || this.waiting.has(s));
      if (!idle) return;
      next = asha.promotion(paused, true);
      if (next === undefined) return this.releaseAll();
    }
    const resolve = this.waiting.get(next);
    this.waiting.delete(next);
    resolve?.(true);
  }
}
