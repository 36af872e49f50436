// `pipe run` and `pipe status`: load → analyze → plan → execute, with the terminal, the run log
// and the MLflow tracker subscribed to the executor's events.

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isMap, isScalar } from 'yaml';
import { analyze, parseOverride, type AnalyzedPipeline, type Override } from '../pipeline/analyze.ts';
import { UsageError } from '../core/errors.ts';
import type { CommandStatus, Io } from '../core/io.ts';
import { printDiagnostics } from '../render/diagnostics.ts';
import type { CommandOptions } from './options.ts';
import { dedupeDiagnostics, type Diagnostic } from '../core/diagnostics.ts';
import type { RunListener, RunSummary } from '../core/events.ts';
import { stageKinds } from '../stages/index.ts';
import { localRunner } from '../exec/local-runner.ts';
import { shortFingerprint } from '../cache/fingerprint.ts';
import { loadPipeline, type PipelineFile } from '../pipeline/pipeline.ts';
import { planPipeline, type Plan } from '../plan/plan.ts';
import { hashIndexPath, newRunId, openCache, projectPaths, statePath, type ProjectPaths } from '../cache/project.ts';
import { outputLinker, plainRenderer, runLogWriter, ttyRenderer } from '../render/render.ts';
import { gpuIds, resolveFlavour, runtimeFingerprint } from '../exec/runtime.ts';

export interface Prepared {
  paths: ProjectPaths;
  file: PipelineFile;
  pipeline: AnalyzedPipeline;
  plan: Plan;
  flavour: 'cpu' | 'gpu';
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
  const requested = (values.backend as 'auto' | 'cpu' | 'gpu' | undefined) ?? pipelineFile.backend;
  if (!['auto', 'cpu', 'gpu'].includes(requested)) throw new UsageError(`--backend ${requested}: expected auto, cpu or gpu`);
  let flavour: 'cpu' | 'gpu';
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
  if (values.json) {
    io.out(`${JSON.stringify({
      pipeline: prepared.file.name,
      stages: plan.stages.map((s) => ({ name: s.name, kind: s.kindName, fingerprint: s.fingerprint, status: s.cached ? 'cached' : 'will-run', reasons: s.reasons })),
    }, null, 2)}\n`);
    return 'ok';
  }
  const width = Math.max(5, ...plan.stages.map((s) => s.name.length));
  for (const s of plan.stages) {
    if (s.cached) io.out(`${s.name.padEnd(width)}  cached    ${shortFingerprint(s.fingerprint)}\n`);
    else io.out(`${s.name.padEnd(width)}  will run  ${shortFingerprint(s.fingerprint)}  ${s.reasons.join('; ')}\n`);
  }
  const toRun = plan.stages.filter((s) => !s.cached).length;
  io.out(toRun === 0 ? 'up to date: every stage is cached\n' : `${toRun} of ${plan.stages.length} stages would run\n`);
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

export async function executePrepared(
  prepared: Prepared,
  values: CommandOptions,
  io: Io,
  extra: { sweep?: { id: string; trial: string }; parentRunId?: string; listeners?: RunListener[]; quiet?: boolean; runId?: string; runDir?: string; latest?: boolean; summaryMetrics?: boolean } = {},
): Promise<RunOutcome> {
  const { paths, file, pipeline, plan, flavour } = prepared;
  const runId = extra.runId ?? newRunId();
  const runDir = extra.runDir ?? path.join(paths.runsDir, file.name, runId);
  await fs.mkdir(runDir, { recursive: true });
  const pipelineYaml = yamlAsRun(file, pipeline.params);
  await fs.writeFile(path.join(runDir, 'pipeline.yaml'), pipelineYaml);
  const cache = openCache(paths);
  await cache.cleanStale();

  const verbose = Boolean(values.verbose);
  const listeners: RunListener[] = [];
  if (!extra.quiet) {
    const write = values.json ? io.err : io.err;
    listeners.push(io.isTTY ? ttyRenderer(write, { verbose }) : plainRenderer(write, { verbose }));
  }
  const logWriter = runLogWriter(path.join(runDir, 'log.txt'));
  listeners.push(logWriter.listener, outputLinker(runDir, { latest: extra.latest ?? true }), ...(extra.listeners ?? []));

  let tracker: import('../tracking/tracker.ts').Tracker | undefined;
  if (file.tracking.enabled && !values['no-track'] && process.env['PIPE_NO_TRACK'] !== '1') {
    try {
      const { createTracker } = await import('../tracking/tracker.ts');
      tracker = createTracker({
        projectDir: paths.projectDir,
        trackingUri: file.tracking.uri,
        parentRunId: extra.parentRunId,
        log: (line: string) => io.err(`${line}\n`),
        ...(values.register !== undefined ? { register: { name: values.register, aliases: values.alias ?? [] } } : {}),
      });
      listeners.push(tracker.listener);
    } catch (error) {
      io.err(`tracking: ${(error as Error).message} (the run goes on; \`pipe sync\` sends it later)\n`);
    }
  }

  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  let summary: RunSummary;
  try {
    const runner = values.queue
      ? (await import('../queue/submit.ts')).queueRunner({ url: values.queue, retries: values.retries !== undefined ? retriesOf(values.retries) : 1, projectDir: paths.projectDir, log: (line) => io.err(`${line}\n`) })
      : localRunner;
    summary = await runner({
      plan,
      cache,
      run: {
        runId,
        runDir,
        pipelineName: file.name,
        pipelineFile: path.relative(paths.projectDir, path.resolve(file.dir, path.basename(file.source.path))) || file.source.path,
        experiment: file.experiment,
        pipelineYaml,
        pipelineHash: createHash('sha256').update(file.source.text).digest('hex'),
        params: pipeline.params,
        backend: flavour === 'gpu' ? 'tensorflow-gpu' : 'tensorflow',
        sweep: extra.sweep,
        startedAt: Date.now(),
      },
      statePath: statePath(paths, file.name),
      downloadCacheDir: paths.downloadsDir,
      backend: flavour,
      cpuSlots: values.jobs ? Math.max(1, Number(values.jobs)) : os.availableParallelism(),
      gpuIds: gpuIds(),
      failFast: Boolean(values['fail-fast']),
      summaryMetrics: extra.summaryMetrics,
      listeners,
      signal: controller.signal,
    });
  } finally {
    process.removeListener('SIGINT', onSigint);
    const tracked = await tracker?.close().catch((error: Error) => {
      io.err(`tracking: ${error.message}\n`);
      return undefined;
    });
    for (const run of tracked?.runs ?? []) {
      if (run.url) io.err(`MLflow run: ${run.url}\n`);
      if (run.pending > 0) io.err(`tracking: ${run.pending} request(s) could not be sent yet; \`pipe sync\` sends them\n`);
    }
    await logWriter.close();
  }
  await fs.writeFile(path.join(runDir, 'summary.json'), JSON.stringify(summary, null, 2));
  return { summary, runDir };
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
  return summary.status === 'succeeded' ? 'ok' : 'failed';
}
