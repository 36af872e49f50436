// The MLflow parent run of a sweep: it holds the sweep definition, the table of trials, the best
// trial's metrics and a picture of the objective against the swept params. Trial runs nest under
// it through `mlflow.parentRunId`.

import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { lineChart, type Series } from '../ml/chart.ts';
import { rungEpochs } from '../plan/scheduler.ts';
import type { PipelineFile } from '../pipeline/pipeline.ts';
import type { Trial } from '../plan/sweep.ts';
import { authFromEnv, MLflowClient, type KeyValue } from './mlflow-client.ts';
import { resolveTracking } from './server.ts';

export interface TrialRow {
  id: string;
  label: string;
  values: Record<string, unknown>;
  /** pruned: stopped early by the sweep's scheduler. */
  status: 'succeeded' | 'failed' | 'pruned';
  error?: string;
  /** Where a pruned trial stopped: its learning stage ran `epoch` of `of` epochs. */
  pruned?: { stage: string; epoch: number; of: number };
  metrics: Record<string, number>;
  /** Under a scheduler: the watched metric after each epoch of the watched stage (epoch 1 first). */
  curve?: number[];
}

/** What the parent run records of a sweep's search: its space and its early stopping. */
export interface SearchSettings {
  /** Sampled dimensions as written, e.g. {lr: 'loguniform(1e-06, 0.0001)'}. */
  space: Record<string, string>;
  samples?: number;
  seed?: number;
  /** The scheduler's settings under Ray Tune's names (type, metric, mode, stage, grace_period, …). */
  scheduler?: Record<string, unknown>;
}

export interface SweepParent {
  runId: string;
  /** Records the trials and ends the parent run: KILLED when a signal `interrupted` the sweep. */
  finish(rows: TrialRow[], table: string, interrupted?: string): Promise<void>;
}

export async function startSweepParent(options: {
  projectDir: string;
  pipeline: PipelineFile;
  sweepId: string;
  trials: Trial[];
  objective: string;
  direction: 'maximize' | 'minimize';
  sweepDir: string;
  search?: SearchSettings;
}): Promise<SweepParent> {
  const target = await resolveTracking({ projectDir: options.projectDir, trackingUri: options.pipeline.tracking.uri });
  const client = new MLflowClient({ uri: target.uri, auth: authFromEnv() });
  const experimentId = await client.getOrCreateExperiment(options.pipeline.experiment);
  const swept = [...new Set(options.trials.flatMap((t) => Object.keys(t.values)))];
  const tags: KeyValue[] = [
    { key: 'mlflow.runName', value: `${options.pipeline.name} ${options.sweepId}` },
    { key: 'mlflow.source.name', value: options.pipeline.source.path },
    { key: 'mlflow.source.type', value: 'LOCAL' },
    { key: 'mlflow.user', value: os.userInfo().username },
    { key: 'pipe.sweep', value: options.sweepId },
  ];
  const run = await client.createRun({ experimentId, runName: tags[0]?.value, startTime: Date.now(), tags });
  const runId = run.info.run_id;
  const artifactUri = run.info.artifact_uri ?? '';
  const params: KeyValue[] = [
    { key: 'sweep.objective', value: options.objective },
    { key: 'sweep.direction', value: options.direction },
    { key: 'sweep.trials', value: String(options.trials.length) },
    ...swept.map((name) => ({ key: `sweep.${name}`, value: JSON.stringify([...new Set(options.trials.map((t) => JSON.stringify(t.values[name])))].map((v) => JSON.parse(v))) })),
    ...searchParams(options.search),
  ];
  await client.logBatch(runId, { params });

  return {
    runId,
    async finish(rows, table, interrupted) {
      const best = rows.find((r) => r.status === 'succeeded' && r.metrics[options.objective] !== undefined);
      const now = Date.now();
      const metrics = best ? Object.entries(best.metrics).map(([key, value]) => ({ key: `best.${key}`, value, timestamp: now, step: 0 })) : [];
      const compare = await compareLink(client, experimentId, runId);
      const note = [
        `## Sweep ${options.sweepId}`,
        '',
        `${rows.length} trials over ${swept.join(', ')}; objective **${options.objective}** (${options.direction}).`,
        ...(compare ? ['', `[Compare the trials](${compare}) (parallel coordinates: the swept params and ${options.objective}).`] : []),
        ...earlyStoppingNote(rows, options.search?.scheduler),
        best ? `Best: **${best.id}** (${best.label}) with ${options.objective} = ${best.metrics[options.objective]?.toFixed(4)}.` : 'No trial succeeded.',
        '',
        '```',
        table.trimEnd(),
        '```',
      ].join('\n');
      await client.logBatch(runId, {
        metrics,
        tags: [
          { key: 'mlflow.note.content', value: note.slice(0, 8000) },
          ...(best ? [{ key: 'pipe.best_trial', value: `${best.id} ${best.label}` }] : []),
          ...(compare ? [{ key: 'pipe.compare_url', value: compare }] : []),
        ],
      });
      await client.uploadArtifact(artifactUri, 'trials.json', JSON.stringify(rows, null, 2));
      await client.uploadArtifact(artifactUri, 'trials.txt', table);
      const chart = await objectiveChart(rows, swept, options.objective);
      if (chart) {
        await fs.writeFile(path.join(options.sweepDir, 'objective.png'), chart);
        await client.uploadArtifact(artifactUri, 'objective.png', chart);
      }
      const curves = options.search?.scheduler ? await schedulerCurvesChart(rows, options.search.scheduler) : undefined;
      if (curves) {
        await fs.writeFile(path.join(options.sweepDir, 'curves.png'), curves);
        await client.uploadArtifact(artifactUri, 'curves.png', curves);
      }
      const status = interrupted ? 'KILLED' : rows.every((r) => r.status !== 'failed') ? 'FINISHED' : 'FAILED';
      await client.updateRun(runId, { status, endTime: Date.now() });
    },
  };
}

/** A line on early stopping for the parent run's note: the rule, and how many trials it stopped. */
function earlyStoppingNote(rows: TrialRow[], scheduler: Record<string, unknown> | undefined): string[] {
  if (!scheduler) return [];
  const pruned = rows.filter((r) => r.pruned);
  const settings = Object.entries(scheduler).filter(([k]) => !['type', 'metric', 'mode', 'stage'].includes(k)).map(([k, v]) => `${k} ${String(v)}`).join(', ');
  return [
    '',
    `Early stopping: **${String(scheduler['type'])}** on ${String(scheduler['metric'])} (${String(scheduler['mode'])}) after each epoch of ${String(scheduler['stage'])} (${settings}); ` +
      `${pruned.length} of ${rows.length} trials stopped early (${pruned.map((r) => `${r.id} @${r.pruned?.epoch}`).join(', ') || 'none'}). The curves: \`curves.png\`.`,
    '',
  ];
}

/** The search space and the scheduler's settings as params: `sweep.space.<name>`, `sweep.scheduler.<setting>`. */
function searchParams(search: SearchSettings | undefined): KeyValue[] {
  if (!search) return [];
  return [
    ...Object.entries(search.space).map(([name, dist]) => ({ key: `sweep.space.${name}`, value: dist })),
    ...(search.samples !== undefined ? [{ key: 'sweep.samples', value: String(search.samples) }] : []),
    ...(search.seed !== undefined && Object.keys(search.space).length > 0 ? [{ key: 'sweep.seed', value: String(search.seed) }] : []),
    ...Object.entries(search.scheduler ?? {}).map(([key, value]) => ({ key: `sweep.scheduler.${key}`, value: String(value) })),
  ];
}

/**
 * Every trial's curve of the scheduler's metric over the watched stage's epochs, a cross where a
 * trial was stopped, and (asha) a dashed line at each rung: where the search spent its epochs.
 */
export async function schedulerCurvesChart(rows: TrialRow[], scheduler: Record<string, unknown>): Promise<Buffer | undefined> {
  const series: Series[] = rows
    .filter((r) => (r.curve?.length ?? 0) > 0)
    .map((r) => ({
      name: `${r.id}${r.pruned ? ` (stopped @${r.pruned.epoch})` : ''}`,
      points: (r.curve ?? []).map((y, i) => ({ x: i + 1, y })),
      ...(r.pruned ? { stoppedAt: true } : {}),
    }));
  if (series.length === 0) return undefined;
  let metric = String(scheduler['metric']);
  // A diverging trial's loss (1e6 beside 0.5) would flatten every other curve: log scale then.
  const values = series.flatMap((s) => s.points.map((p) => p.y)).filter((y) => Number.isFinite(y) && y > 0);
  if (values.length > 0 && Math.max(...values) / Math.min(...values) > 100) {
    for (const s of series) s.points = s.points.map((p) => ({ x: p.x, y: p.y > 0 ? Math.log10(p.y) : Number.NaN }));
    metric = `log10(${metric})`;
  }
  const epochs = Math.max(...series.map((s) => s.points.length));
  const rungs = scheduler['type'] === 'asha'
    ? rungEpochs(Number(scheduler['grace_period']), Number(scheduler['reduction_factor']), Number(scheduler['max_t'] ?? epochs)).map((x) => ({ x, label: `rung ${x}` }))
    : [{ x: Number(scheduler['grace_period']), label: 'grace period' }];
  return lineChart(series, { title: `${metric} per epoch of ${String(scheduler['stage'])} (${String(scheduler['type'])})`, x: 'epoch (of the stage)', y: metric }, { verticals: rungs });
}

/**
 * The MLflow compare view of the sweep's trial runs (the children of the parent run), whose
 * parallel-coordinates plot shows each trial's swept params and metrics side by side.
 *
 * Relative to the server (`#/compare-runs?…`): the UI resolves it against the page it shows, so it
 * stays right when the server moves — the embedded server takes a free port at each start — or is
 * reached through another name or a proxy. Where a full URL is wanted (the `pipe.compare_url` tag
 * holds the same link), put the server's in front: `${uri}/#/compare-runs?…`.
 */
async function compareLink(client: MLflowClient, experimentId: string, parentRunId: string): Promise<string | undefined> {
  const { runs } = await client.searchRuns({ experimentIds: [experimentId], filter: `tags.\`mlflow.parentRunId\` = '${parentRunId}'`, maxResults: 1000 });
  if (runs.length === 0) return undefined;
  const ids = encodeURIComponent(JSON.stringify(runs.map((r) => r.info.run_id)));
  return `#/compare-runs?runs=${ids}&experiments=${encodeURIComponent(JSON.stringify([experimentId]))}`;
}

/** The objective against the first numeric swept param, one line per combination of the others. */
export async function objectiveChart(rows: TrialRow[], swept: string[], objective: string): Promise<Buffer | undefined> {
  const xName = swept.includes('fine_tune_at') ? 'fine_tune_at' : swept.find((n) => rows.every((r) => typeof r.values[n] === 'number'));
  if (!xName) return undefined;
  const others = swept.filter((n) => n !== xName);
  const series = new Map<string, Series>();
  for (const row of rows) {
    const y = row.metrics[objective];
    if (y === undefined) continue;
    const name = others.map((n) => `${n}=${JSON.stringify(row.values[n])}`).join(' ') || objective;
    const s = series.get(name) ?? { name, points: [] };
    s.points.push({ x: Number(row.values[xName]), y });
    series.set(name, s);
  }
  if (series.size === 0) return undefined;
  return lineChart([...series.values()], { title: `${objective} by ${xName}`, x: xName, y: objective });
}
