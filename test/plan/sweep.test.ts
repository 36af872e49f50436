// Sweeps as plans, without running anything: trials from a grid, explicit trials and -S flags; the
// per-trial plans merged by fingerprint; the merged run's events split back into one stream per trial.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { RunEvent, RunStartEvent, RunSummary, StageEndEvent } from '../../src/core/events.ts';
import { analyze } from '../../src/pipeline/analyze.ts';
import { parsePipeline, type PipelineFile } from '../../src/pipeline/pipeline.ts';
import { decide, fingerprintStages, type Plan } from '../../src/plan/plan.ts';
import { demultiplex, expandTrials, mergePlans, timedTrial, trialSummary, type Trial, type TrialPlan } from '../../src/plan/sweep.ts';
import { stageKinds } from '../../src/stages/index.ts';

const pipelineText = (sweep: string) => `name: s
params:
  depth: 1
  lr: 0.1
  note: plain
stages:
  data:
    run: echo data > data.txt
    outs: [data.txt]
  head:
    run: cat data.txt > head-\${params.depth}.txt
    deps: [data.txt]
    outs: ["head-\${params.depth}.txt"]
  tune:
    run: echo \${params.lr} > tune.txt
    deps: ["head-\${params.depth}.txt"]
    outs: [tune.txt]
${sweep}`;

const gridSweep = `sweep:
  grid:
    depth: [1, 2]
    lr: [0.1, 0.01]
`;

function load(text: string): PipelineFile {
  const loaded = parsePipeline(text, 's.yaml', '/project');
  assert.equal(loaded.diagnostics, []);
  return loaded.file!;
}

async function planOf(file: PipelineFile, values: Record<string, unknown>): Promise<Plan> {
  const analyzed = await analyze(file, { kinds: stageKinds, values });
  assert.ok(analyzed.ok);
  const stages = decide(fingerprintStages(analyzed.value, {}, {}), new Set(), { stages: {} }, new Set());
  return { pipeline: analyzed.value, stages };
}

async function plansOf(file: PipelineFile, trials: Trial[]): Promise<Map<string, Plan>> {
  const plans = new Map<string, Plan>();
  for (const trial of trials) plans.set(trial.id, await planOf(file, trial.values));
  return plans;
}

const brief = (trials: Trial[]) => trials.map((t) => [t.id, t.label]);

test('expandTrials: a grid is the product in the order written (first param outermost), then the explicit trials', () => {
  const file = load(pipelineText(`${gridSweep}  trials:\n    - {depth: 3, lr: 0.5}\n`));
  const { trials, diagnostics } = expandTrials(file, []);
  assert.equal(diagnostics, []);
  assert.equal(brief(trials), [
    ['t1', 'depth=1 lr=0.1'],
    ['t2', 'depth=1 lr=0.01'],
    ['t3', 'depth=2 lr=0.1'],
    ['t4', 'depth=2 lr=0.01'],
    ['t5', 'depth=3 lr=0.5'],
  ]);
  assert.equal(trials[4]?.values, { depth: 3, lr: 0.5 });
});

test('expandTrials: an explicit trial equal to a grid point (in any key order) is not run twice', () => {
  const file = load(pipelineText(`${gridSweep}  trials:\n    - {lr: 0.01, depth: 2}\n    - {depth: 9}\n`));
  const { trials } = expandTrials(file, []);
  assert.equal(brief(trials).map(([, label]) => label), ['depth=1 lr=0.1', 'depth=1 lr=0.01', 'depth=2 lr=0.1', 'depth=2 lr=0.01', 'depth=9']);
});

test('expandTrials: -S replaces a grid param in place, adds new ones last, and converts values by the param type', () => {
  const file = load(pipelineText(gridSweep));
  const { trials, diagnostics } = expandTrials(file, ['depth=5,6', 'note=x,y']);
  assert.equal(diagnostics, []);
  assert.equal(trials.length, 8);
  assert.equal(trials[0]?.values, { depth: 5, lr: 0.1, note: 'x' });
  assert.equal(trials[1]?.label, 'depth=5 lr=0.1 note=y');
  assert.equal(trials[7]?.values, { depth: 6, lr: 0.01, note: 'y' });
  assert.is(typeof trials[0]?.values['depth'], 'number');
});

test('expandTrials: -S alone sweeps a pipeline without a sweep section; nothing swept means no trials', () => {
  const file = load(pipelineText(''));
  assert.equal(brief(expandTrials(file, ['lr=0.5,0.25']).trials), [['t1', 'lr=0.5'], ['t2', 'lr=0.25']]);
  assert.equal(expandTrials(file, []), { trials: [], diagnostics: [] });
});

test('expandTrials: every problem at once, located in the file or on the command line', () => {
  const sweep = `sweep:
  grid:
    depht: [1, 2]
    lr: [0.1, "fast"]
  trials:
    - {depth: "deep"}
    - {colour: red}
`;
  const file = load(pipelineText(sweep));
  const { diagnostics } = expandTrials(file, ['lr=0.1,x', 'bogus=1', 'novalue']);
  const where = (d: { file: string; line: number; col: number }) => `${d.file}:${d.line}:${d.col}`;
  assert.equal(diagnostics.map((d) => [where(d), d.code, d.field, d.message]), [
    ['s.yaml:20:5', 'unknown-param', 'sweep.grid.depht', "unknown param 'depht' (declared params: depth, lr, note)"],
    ['s.yaml:21:15', 'bad-param-type', 'sweep.grid.lr.1', 'expected a number, got string "fast"'],
    ['<command line>:0:0', 'bad-override', '-S lr=0.1,x', "param 'lr': expected a number, got 'x'"],
    ['<command line>:0:0', 'unknown-param', '-S bogus=1', "unknown param 'bogus' (params of s.yaml: depth, lr, note)"],
    ['<command line>:0:0', 'unknown-param', '-S novalue', 'expected NAME=V1,V2,... or NAME=DIST(…)'],
    ['s.yaml:23:15', 'bad-param-type', 'sweep.trials.0.depth', 'expected an integer, got string "deep"'],
    ['s.yaml:24:8', 'unknown-param', 'sweep.trials.1.colour', "unknown param 'colour'"],
  ]);
});

test('mergePlans: one node per fingerprint, named by the swept values its trials share, dependencies renamed', async () => {
  const file = load(pipelineText(gridSweep));
  const { trials } = expandTrials(file, []);
  const plans = await plansOf(file, trials);
  const merged = mergePlans(trials, plans);

  assert.equal(merged.plan.stages.map((s) => s.name), [
    'data',
    'head[depth=1]',
    'tune[depth=1 lr=0.1]',
    'tune[depth=1 lr=0.01]',
    'head[depth=2]',
    'tune[depth=2 lr=0.1]',
    'tune[depth=2 lr=0.01]',
  ]);
  const node = (name: string) => merged.nodes.get(name)!;
  assert.equal([...node('data').trials.keys()], ['t1', 't2', 't3', 't4']);
  assert.equal([...node('head[depth=2]').trials], [['t3', 'head'], ['t4', 'head']]);
  assert.equal(node('tune[depth=2 lr=0.01]').planned.stage.upstream, ['head[depth=2]']);
  assert.equal(node('head[depth=1]').planned.stage.upstream, ['data']);
  // Every node keeps the fingerprint the trials computed for it.
  assert.is(node('head[depth=2]').planned.fingerprint, plans.get('t4')!.stages.find((s) => s.name === 'head')!.fingerprint);
  assert.equal([...merged.trialStages.get('t2')!], [['data', 'data'], ['head', 'head[depth=1]'], ['tune', 'tune[depth=1 lr=0.01]']]);
  assert.is(merged.plan.pipeline, plans.get('t1')!.pipeline);
});

test('mergePlans: a stage of one trial carries all its values; one shared by trials with no value in common, their ids', async () => {
  // t1 and t2 compute the same head and tune (depth defaults to 1, lr to 0.1), though no swept value is common to both.
  const file = load(pipelineText('sweep:\n  trials:\n    - {depth: 1}\n    - {lr: 0.1}\n    - {depth: 2, lr: 0.5}\n'));
  const { trials } = expandTrials(file, []);
  const merged = mergePlans(trials, await plansOf(file, trials));
  assert.equal(merged.plan.stages.map((s) => s.name), ['data', 'head[t1,t2]', 'tune[t1,t2]', 'head[depth=2 lr=0.5]', 'tune[depth=2 lr=0.5]']);
  assert.equal(merged.nodes.get('tune[t1,t2]')?.planned.stage.upstream, ['head[t1,t2]']);

  // Trials that differ only in a param no stage reads share every stage.
  const plain = load(pipelineText(''));
  const same = expandTrials(plain, ['note=a,b']).trials;
  assert.equal(mergePlans(same, await plansOf(plain, same)).plan.stages.map((s) => s.name), ['data', 'head', 'tune']);
});

function endEvent(stage: string, status: StageEndEvent['status'], metrics: Array<[string, number, number]> = []): StageEndEvent {
  return {
    type: 'stage-end', stage, status, fingerprint: 'f', durationMs: 5, artifacts: [], summary: {},
    metrics: metrics.map(([key, value, step]) => ({ key, value, step, timestamp: 1000 + step })),
    ...(status === 'failed' ? { error: 'boom' } : {}),
  };
}

test('demultiplex: each trial sees its own run: local stage names, its params, its metrics, its summary', async () => {
  const file = load(pipelineText(gridSweep));
  const { trials } = expandTrials(file, ['depth=1,2', 'lr=0.1']);
  assert.equal(brief(trials), [['t1', 'depth=1 lr=0.1'], ['t2', 'depth=2 lr=0.1']]);
  const plans = await plansOf(file, trials);
  const merged = mergePlans(trials, plans);
  const prepared = new Map<string, TrialPlan>([...plans].map(([id, plan]) => [id, { pipeline: plan.pipeline, plan }]));
  const seen = new Map<string, RunEvent[]>(trials.map((t) => [t.id, []]));
  const listeners = new Map(trials.map((t) => [t.id, (e: RunEvent) => void seen.get(t.id)!.push(e)]));
  const trialMetrics = new Map<string, Record<string, number>>();
  const nameIn = (trial: string, local: string) => merged.trialStages.get(trial)!.get(local)!;
  assert.equal([nameIn('t1', 'head'), nameIn('t2', 'tune')], ['head[depth=1 lr=0.1]', 'tune[depth=2 lr=0.1]']);
  const listener = demultiplex(merged, trials, listeners, (t) => `/runs/sweep/${t.id}`, prepared, trialMetrics);

  const start: RunStartEvent = {
    type: 'run-start', runId: 'sweep-1', runDir: '/runs/sweep', pipelineName: 's', pipelineFile: 's.yaml', experiment: 's',
    pipelineYaml: '', pipelineHash: 'h', params: {}, backend: 'cpu', stages: [], startedAt: 0,
  };
  void listener(start);
  void listener({ type: 'stage-start', stage: 'data', fingerprint: 'f', startedAt: 1 });
  void listener(endEvent('data', 'ran'));
  void listener({ type: 'stage-log', stage: nameIn('t2', 'head'), stream: 'stdout', line: 'two' });
  void listener(endEvent(nameIn('t1', 'head'), 'ran', [['loss', 0.5, 1], ['loss', 0.9, 0]]));
  void listener(endEvent(nameIn('t2', 'head'), 'failed'));
  void listener(endEvent(nameIn('t1', 'tune'), 'cached', [['acc', 0.7, 0]]));
  void listener(endEvent(nameIn('t2', 'tune'), 'skipped'));
  const summary: RunSummary = {
    runId: 'sweep-1', pipeline: 's', status: 'failed', durationMs: 42, metrics: {},
    stages: merged.plan.stages.map((s, i) => ({
      name: s.name, kind: 'command', fingerprint: s.fingerprint, durationMs: i, reasons: [], summary: {},
      status: s.name === nameIn('t2', 'head') ? 'failed' : s.name === nameIn('t2', 'tune') ? 'skipped' : 'ran',
    })),
  };
  void listener({ type: 'run-end', summary, endedAt: 99 });

  const t1 = seen.get('t1')!;
  const t2 = seen.get('t2')!;
  const t1Start = t1[0] as RunStartEvent;
  assert.is(t1Start.runId, 'sweep-1-t1');
  assert.is(t1Start.runDir, '/runs/sweep/t1');
  assert.equal(t1Start.sweep, { id: 'sweep-1', trial: 't1' });
  assert.equal(t1Start.params, { depth: 1, lr: 0.1, note: 'plain' });
  assert.equal(t1Start.stages.map((s) => [s.name, s.needs]), [['data', []], ['head', ['data']], ['tune', ['head']]]);
  assert.equal(t1.slice(1, -1).map((e) => [e.type, 'stage' in e ? e.stage : '']), [
    ['stage-start', 'data'], ['stage-end', 'data'], ['stage-end', 'head'], ['stage-end', 'tune'],
  ]);
  assert.equal(t2.slice(1, -1).map((e) => [e.type, 'stage' in e ? e.stage : '']), [
    ['stage-start', 'data'], ['stage-end', 'data'], ['stage-log', 'head'], ['stage-end', 'head'], ['stage-end', 'tune'],
  ]);
  // The last point by step wins, whatever order the stage reported them in.
  assert.equal(trialMetrics.get('t1'), { loss: 0.5, acc: 0.7 });
  assert.equal(trialMetrics.get('t2'), {});

  const t1End = t1.at(-1) as Extract<RunEvent, { type: 'run-end' }>;
  const t2End = t2.at(-1) as Extract<RunEvent, { type: 'run-end' }>;
  assert.is(t1End.endedAt, 99);
  assert.equal([t1End.summary.runId, t1End.summary.status, t1End.summary.metrics], ['sweep-1-t1', 'succeeded', { loss: 0.5, acc: 0.7 }]);
  assert.equal(t2End.summary.stages.map((s) => [s.name, s.status]), [['data', 'ran'], ['head', 'failed'], ['tune', 'skipped']]);
  assert.is(t2End.summary.status, 'failed');
});

test('timedTrial: a trial starts with its first own stage, ends with its last stage; what came before waits for its start', async () => {
  const file = load(pipelineText(gridSweep));
  const { trials } = expandTrials(file, ['depth=1', 'lr=0.1,0.01']);
  const merged = mergePlans(trials, await plansOf(file, trials));
  // data and head are shared by both trials; each has its own tune.
  assert.equal(merged.plan.stages.map((s) => s.name), ['data', 'head', 'tune[depth=1 lr=0.1]', 'tune[depth=1 lr=0.01]']);
  const seen: RunEvent[] = [];
  let clock = 0;
  const timed = timedTrial(merged, 't1', (e) => void seen.push(e), () => clock);
  const start: RunStartEvent = {
    type: 'run-start', runId: 'sweep-1-t1', runDir: '/runs/sweep/t1', pipelineName: 's', pipelineFile: 's.yaml', experiment: 's',
    pipelineYaml: '', pipelineHash: 'h', params: {}, backend: 'cpu', stages: [], startedAt: 100, sweep: { id: 'sweep-1', trial: 't1' },
  };
  const summary: RunSummary = { runId: 'sweep-1-t1', pipeline: 's', status: 'succeeded', durationMs: 900, metrics: {}, stages: [] };
  const kinds = () => seen.map((e) => `${e.type}${'stage' in e ? ` ${e.stage}` : ''}`);

  void timed(start);
  void timed({ type: 'stage-start', stage: 'data', fingerprint: 'f', startedAt: 110 });
  clock = 200;
  void timed(endEvent('data', 'ran'));
  void timed(endEvent('head', 'cached'));
  assert.equal(seen, [], 'nothing of the trial has started: shared stages only');
  void timed({ type: 'stage-start', stage: 'tune', fingerprint: 'f', startedAt: 300 });
  assert.equal(kinds(), ['run-start', 'stage-start data', 'stage-end data', 'stage-end head', 'stage-start tune']);
  assert.is((seen[0] as RunStartEvent).startedAt, 300);
  void timed({ type: 'stage-log', stage: 'tune', stream: 'stdout', line: 'live' });
  assert.is(seen.length, 6, 'after its start, events pass at once');
  clock = 700;
  void timed(endEvent('tune', 'ran'));
  clock = 950;
  void timed({ type: 'run-end', summary, endedAt: 1000 });
  const end = seen.at(-1) as Extract<RunEvent, { type: 'run-end' }>;
  assert.equal([end.endedAt, end.summary.durationMs], [700, 400]);

  // Every stage of the trial from the cache or shared: the sweep's start, the last stage's end.
  seen.length = 0;
  const cached = timedTrial(merged, 't2', (e) => void seen.push(e), () => 250);
  void cached({ ...start, runId: 'sweep-1-t2' });
  void cached({ type: 'stage-start', stage: 'data', fingerprint: 'f', startedAt: 110 });
  void cached(endEvent('tune', 'cached'));
  assert.equal(seen, []);
  void cached({ type: 'run-end', summary, endedAt: 1000 });
  assert.equal(kinds(), ['run-start', 'stage-start data', 'stage-end tune', 'run-end']);
  assert.is((seen[0] as RunStartEvent).startedAt, 100);
  assert.equal([(seen[3] as Extract<RunEvent, { type: 'run-end' }>).endedAt, (seen[3] as Extract<RunEvent, { type: 'run-end' }>).summary.durationMs], [250, 150]);
});

test('trialSummary: a stage missing from the merged summary counts as skipped, so the trial failed', async () => {
  const file = load(pipelineText(''));
  const trials = expandTrials(file, ['depth=1']).trials;
  const merged = mergePlans(trials, await plansOf(file, trials));
  const summary: RunSummary = {
    runId: 'sw', pipeline: 's', status: 'failed', durationMs: 7, metrics: { x: 1 },
    stages: [{ name: 'data', kind: 'command', status: 'cached', durationMs: 1, fingerprint: 'f', reasons: [], summary: {} }],
  };
  const result = trialSummary(trials[0]!, merged, summary);
  assert.equal(result.stages.map((s) => [s.name, s.status]), [['data', 'cached'], ['head', 'skipped'], ['tune', 'skipped']]);
  assert.equal([result.runId, result.status, result.durationMs, result.metrics], ['sw-t1', 'failed', 7, {}]);
});

test.run();
