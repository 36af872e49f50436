// The MLflow tracker: a RunListener that turns the executor's events into an MLflow run.
//
// The listener never waits for the network: each event becomes requests appended to the run's
// journal (journal.ts), and a background sender ships them in order — metric points batched, at
// least every `batchIntervalMs`. When the server is unreachable the run goes on; the sender retries
// every `reconnectIntervalMs`, and what is still unsent at close() stays in the journal for
// `pipe sync` or the next `pipe run`.

import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { PlannedStageInfo, RunEndEvent, RunEvent, RunListener, RunStartEvent, RunSummary, StageEndEvent, StageStatus } from '../core/events.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import { unreachable } from '../core/errors.ts';
import { Journal, JOURNAL_FILE, lockJournal, replayJournal, ReplaySession, unlockJournal, type JournalOp, type TrackingRef } from './journal.ts';
import { authFromEnv, MLflowClient, splitCredentials, type KeyValue, type Metric, type RetryOptions } from './mlflow-client.ts';
import { resolveTracking } from './server.ts';
import { syncRuns, writeTrackingRecord, type TrackingRecord } from './sync.ts';
import { bookkeepingKey, isBookkeeping, mlflowPoints, optimizerParams } from './naming.ts';
import { stageDatasets } from './datasets.ts';
import { isModelMetric, loggedModelOps } from './logged-model.ts';
import { samplingIntervalMs, SystemSampler } from './system-metrics.ts';

export { markOrphans } from './sync.ts';

/** MLflow's limits (mlflow/utils/validation.py). */
export const MAX_PARAM_VALUE = 6000;
export const MAX_TAG_VALUE = 8000;
export const MAX_KEY = 250;

export interface TrackerOptions {
  projectDir: string;
  /** A tracking server named by the pipeline or the command line; else MLFLOW_TRACKING_URI; else embedded. */
  trackingUri?: string;
  /** Tags the run `mlflow.parentRunId` (sweep trials under their parent run). */
  parentRunId?: string;
  env?: NodeJS.ProcessEnv;
  /** Warnings for the user (server unreachable, requests kept for `pipe sync`). Default: stderr. */
  log?: (message: string) => void;
  batchIntervalMs?: number;
  reconnectIntervalMs?: number;
  /** Retries of each live request (kept short: the journal is the real retry). */
  retry?: Partial<RetryOptions>;
  /** Replay other runs' journals and mark orphaned runs in the background (default true). */
  syncOthers?: boolean;
  /** System metrics sampling (system-metrics.ts); 0 turns it off. Default: MLflow's 10 s. */
  systemMetricsIntervalMs?: number;
  /** `--register NAME`: the run's logged model becomes a version of this registered model. */
  register?: { name: string; aliases: string[] };
}

export interface TrackerResult {
  /** MLflow ids of the run(s) recorded (several only when one tracker saw several run-starts). */
  runs: Array<{ runDir: string; runId?: string; experimentId?: string; url?: string; pending: number }>;
  uri?: string;
  /** Requests not sent yet (kept in the journals). */
  pending: number;
}

export interface Tracker {
  listener: RunListener;
  /** Sends what is queued now (one attempt when the server is unreachable). */
  flush(): Promise<void>;
  /** Sends what is left (waits for the server a little), releases the journals. */
  close(): Promise<TrackerResult>;
}

interface RunState {
  start: RunStartEvent;
  runDir: string;
  journal: Journal;
  session: ReplaySession;
  record: TrackingRecord;
  /** stage -> signatures of points already journaled from stage-metric events. */
  streamed: Map<string, Set<string>>;
  /** The planned stages by name (their kinds and params name the metrics). */
  stages: Map<string, PlannedStageInfo>;
  ended: boolean;
  /** Records that need reading files first (datasets), in order; later records wait for them. */
  work: Promise<void>;
  /** The run's test set, once its datasets are read (the test metrics name it). */
  testSet?: { name: string; digest: string };
  /** Samples the run's system metrics until it ends. */
  sampler?: { timer: NodeJS.Timeout; sampler: SystemSampler };
  /** Size of log.txt when it was queued for upload. */
  logSize: number;
  fatal?: string;
}

export function createTracker(opts: TrackerOptions): Tracker {
  return new MLflowTracker(opts);
}

/** How the tracker reaches the server, found (or started) in the background; undefined: offline. */
function connect(opts: TrackerOptions, env: NodeJS.ProcessEnv, log: (m: string) => void): Promise<MLflowClient | undefined> {
  return (async () => {
    try {
      const resolveOpts: Parameters<typeof resolveTracking>[0] = { projectDir: opts.projectDir, env };
      if (opts.trackingUri !== undefined) resolveOpts.trackingUri = opts.trackingUri;
      const target = await resolveTracking(resolveOpts);
      const clientOpts: ConstructorParameters<typeof MLflowClient>[0] = {
        uri: target.uri,
        retry: { retries: 2, baseDelayMs: 250, timeoutMs: 15_000, ...opts.retry },
      };
      const auth = target.embedded ? undefined : authFromEnv(env);
      if (auth !== undefined) clientOpts.auth = auth;
      return new MLflowClient(clientOpts);
    } catch (error) {
      log(`MLflow tracking is offline for this run: ${(error as Error).message}. The run's records are kept in its journal; \`pipe sync\` sends them later.`);
      return undefined;
    }
  })();
}

/**
 * Ships the runs' journals to the server in order, one replay at a time: soon after each record
 * (metric points batched for `batchIntervalMs`), and every `reconnectIntervalMs` while the server
 * is unreachable.
 */
class JournalSender {
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private offline = false;
  private lastAttempt = 0;
  /** Set by close(): no more reconnection attempts are scheduled. */
  closing = false;

  constructor(
    private readonly client: Promise<MLflowClient | undefined>,
    private readonly runs: readonly RunState[],
    private readonly reconnectIntervalMs: number,
    private readonly log: (m: string) => void,
  ) {}

  /** Sends within `delayMs` (at once for 0); a send already scheduled sooner stands. */
  schedule(delayMs: number): void {
    if (delayMs <= 0) {
      this.cancelTimer();
      void this.pump();
      return;
    }
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.pump();
    }, delayMs);
    this.timer.unref();
  }

  /** Sends what is queued now, even while offline (one attempt). */
  flush(): Promise<void> {
    this.cancelTimer();
    return this.pump(true);
  }

  private cancelTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private pump(force = false): Promise<void> {
    this.chain = this.chain.then(() => this.sendAll(force)).catch((error: unknown) => this.log(`MLflow tracking error: ${(error as Error).stack ?? error}`));
    return this.chain;
  }

  private async sendAll(force: boolean): Promise<void> {
    const client = await this.client;
    if (client === undefined) return;
    if (this.offline && !force && Date.now() - this.lastAttempt < this.reconnectIntervalMs) {
      this.schedule(this.reconnectIntervalMs - (Date.now() - this.lastAttempt));
      return;
    }
    this.lastAttempt = Date.now();
    for (const run of this.runs) {
      if (run.fatal !== undefined || run.journal.pending().length === 0) continue;
      const error = await this.sendRun(client, run);
      if (error === undefined) continue;
      if (!this.offline) {
        this.log(
          `MLflow server ${client.uri} is unreachable (${error}); the run goes on, ` +
            `its records are kept in ${run.journal.path} and sent when the server is back (or by \`pipe sync\`)`,
        );
      }
      this.offline = true;
      if (!this.closing) this.schedule(this.reconnectIntervalMs);
      return;
    }
    if (this.offline) this.log(`MLflow server ${client.uri} is reachable again; pending records sent`);
    this.offline = false;
  }

  /** Replays one run's journal; returns why the server could not be reached, if it could not. */
  private async sendRun(client: MLflowClient, run: RunState): Promise<string | undefined> {
    const hadRun = run.journal.run !== undefined;
    const res = await replayJournal(run.journal, client, run.session);
    if (!hadRun && run.journal.run !== undefined) {
      run.record = { ...run.record, run_id: run.journal.run.runId, experiment_id: run.journal.run.experimentId };
      writeTrackingRecord(run.runDir, run.record);
    }
    if (res.rejected > 0) {
      for (const r of run.journal.rejected.slice(-res.rejected)) this.log(`MLflow refused a request: ${r.error}`);
    }
    if (res.error === undefined) return undefined;
    if (res.error.kind === 'rejected') {
      run.fatal = res.error.message;
      this.log(`MLflow tracking stopped for this run: ${res.error.message}`);
      return undefined;
    }
    return res.error.message;
  }
}

/** The tracker: each run event becomes journal records of the current run (see the top of this file). */
class MLflowTracker implements Tracker {
  private readonly env: NodeJS.ProcessEnv;
  private readonly log: (m: string) => void;
  private readonly batchIntervalMs: number;
  private readonly systemInterval: number;
  private readonly trackingRef: TrackingRef;
  private readonly client: Promise<MLflowClient | undefined>;
  private readonly runs: RunState[] = [];
  private readonly sender: JournalSender;
  private current: RunState | undefined;
  private background: Promise<unknown> = Promise.resolve();
  private backgroundStarted = false;

  constructor(private readonly opts: TrackerOptions) {
    this.env = opts.env ?? process.env;
    this.log = opts.log ?? ((m: string) => process.stderr.write(`pipe: ${m}\n`));
    this.batchIntervalMs = opts.batchIntervalMs ?? 2000;
    this.systemInterval = opts.systemMetricsIntervalMs ?? samplingIntervalMs(this.env);
    const named = opts.trackingUri ?? this.env['MLFLOW_TRACKING_URI'];
    this.trackingRef = named !== undefined && named !== '' ? { embedded: false, uri: splitCredentials(named).uri } : { embedded: true };
    // The server is found (or started) in the background: events are journaled meanwhile.
    this.client = connect(opts, this.env, this.log);
    this.sender = new JournalSender(this.client, this.runs, opts.reconnectIntervalMs ?? 5000, this.log);
  }

  readonly listener: RunListener = (event) => {
    try {
      this.handle(event);
    } catch (error) {
      // Tracking must never fail the run.
      this.log(`MLflow tracking error: ${(error as Error).stack ?? error}`);
    }
  };

  flush(): Promise<void> {
    return this.sender.flush();
  }

  async close(): Promise<TrackerResult> {
    this.sender.closing = true;
    await Promise.all(this.runs.map((run) => run.work));
    await Promise.all(this.runs.map((run) => this.stopSampling(run)));
    for (const run of this.runs) {
      if (!run.ended) this.finishWithoutEnd(run, 'the run ended without a run-end event');
      else this.queueRunLog(run); // the run log may have grown after run-end
    }
    await this.sender.flush();
    await this.background;
    const client = await this.client;
    const result: TrackerResult = { runs: [], pending: 0 };
    if (client !== undefined) result.uri = client.uri;
    for (const run of this.runs) {
      const entry = this.release(run, client);
      result.pending += entry.pending;
      result.runs.push(entry);
    }
    return result;
  }

  /** What a closed run left: its MLflow ids and URL, what is still pending; its journal unlocked. */
  private release(run: RunState, client: MLflowClient | undefined): TrackerResult['runs'][number] {
    const pending = run.journal.pending().length;
    const r = run.journal.run;
    const entry: TrackerResult['runs'][number] = { runDir: run.runDir, pending };
    if (r !== undefined) {
      entry.runId = r.runId;
      entry.experimentId = r.experimentId;
      if (client !== undefined) entry.url = `${client.uri}/#/experiments/${r.experimentId}/runs/${r.runId}`;
    }
    unlockJournal(run.runDir);
    if (pending > 0) {
      this.log(`${pending} MLflow request(s) of this run are kept in ${run.journal.path}; \`pipe sync\` sends them when the server is reachable`);
    }
    return entry;
  }

  private handle(e: RunEvent): void {
    if (e.type === 'run-start') return this.onRunStart(e);
    const run = this.current;
    if (run === undefined || run.ended) return;
    switch (e.type) {
      case 'stage-start':
      case 'stage-progress':
      case 'stage-log':
        return;
      case 'stage-metric':
        return this.onStageMetric(run, e.stage, e.point);
      case 'stage-end':
        return this.onStageEnd(run, e);
      case 'run-end':
        return this.onRunEnd(run, e);
      default:
        return unreachable(e, 'run event');
    }
  }

  private append(run: RunState, op: JournalOp, at?: number): void {
    run.journal.append(op, at);
  }

  private startBackgroundSync(exclude: string[]): void {
    if (this.backgroundStarted || this.opts.syncOthers === false) return;
    this.backgroundStarted = true;
    const { log, env } = this;
    this.background = (async () => {
      const client = await this.client;
      if (client === undefined) return;
      const syncOpts: Parameters<typeof syncRuns>[0] = { projectDir: this.opts.projectDir, exclude, env };
      const report = await syncRuns(syncOpts);
      const sent = report.runs.filter((r) => (r.result?.sent ?? 0) > 0).length;
      if (sent > 0) log(`sent the journals of ${sent} earlier run(s) to MLflow`);
    })().catch((error: unknown) => log(`could not sync earlier runs: ${(error as Error).message}`));
  }

  private onRunStart(e: RunStartEvent): void {
    if (this.current !== undefined && !this.current.ended) this.finishWithoutEnd(this.current, 'a new run started before this one ended');
    this.current = this.openRun(e);
    const run = this.current;
    if (run === undefined) return;
    this.runs.push(run);
    this.startBackgroundSync([run.runDir]);
    this.startSampling(run);
    this.sender.schedule(0);
  }

  /** A new journal in the run's directory, locked; undefined (with a word why) when there cannot be one. */
  private openRun(e: RunStartEvent): RunState | undefined {
    const runDir = resolve(e.runDir);
    if (!lockJournal(runDir)) {
      this.log(`MLflow tracking skipped: another process holds ${join(runDir, 'mlflow-journal.lock')}`);
      return undefined;
    }
    if (existsSync(join(runDir, JOURNAL_FILE))) {
      unlockJournal(runDir);
      this.log(`MLflow tracking skipped: ${runDir} already has a journal (one MLflow run per run directory)`);
      return undefined;
    }
    // tracking.json first (a journal without it could never be marked KILLED), then the journal with
    // the run's first ops in one step: a runner killed at any instant leaves no journal, or one whose
    // run `pipe sync` can create and end.
    const record: TrackingRecord = {
      run_id: null,
      experiment_id: null,
      journal_id: randomUUID(),
      pid: process.pid,
      host: hostname(),
      started_at: e.startedAt,
    };
    writeTrackingRecord(runDir, record);
    const journal = Journal.create(
      runDir,
      this.trackingRef,
      (journalId) => [
        { op: { kind: 'create-run', experimentName: e.experiment, runName: runName(e), startTime: e.startedAt, tags: runTags(e, this.opts, journalId, this.env) }, at: e.startedAt },
        { op: { kind: 'log-batch', params: runParams(e) }, at: e.startedAt },
        { op: { kind: 'upload-artifact', path: 'pipeline.yaml', text: e.pipelineYaml }, at: e.startedAt },
      ],
      record.journal_id,
    );
    return {
      start: e,
      runDir,
      journal,
      session: new ReplaySession(false),
      record,
      streamed: new Map(),
      stages: new Map(e.stages.map((s) => [s.name, s])),
      ended: false,
      work: Promise.resolve(),
      logSize: -1,
    };
  }

  private startSampling(run: RunState): void {
    if (this.systemInterval <= 0) return;
    const sampler = new SystemSampler();
    const timer = setInterval(() => void this.logSystemMetrics(run, sampler), this.systemInterval);
    timer.unref();
    run.sampler = { timer, sampler };
  }

  private async logSystemMetrics(run: RunState, sampler: SystemSampler): Promise<void> {
    try {
      const metrics = await sampler.sample();
      if (metrics.length > 0) this.append(run, { kind: 'log-batch', metrics });
      this.sender.schedule(this.batchIntervalMs);
    } catch (error) {
      this.log(`MLflow tracking: system metrics: ${(error as Error).message}`);
    }
  }

  /** The last sample (the time since the previous one), then no more. */
  private stopSampling(run: RunState): Promise<void> {
    const s = run.sampler;
    if (s === undefined) return Promise.resolve();
    run.sampler = undefined;
    clearInterval(s.timer);
    return this.logSystemMetrics(run, s.sampler);
  }

  private onStageMetric(run: RunState, stage: string, point: MetricPoint): void {
    let seen = run.streamed.get(stage);
    if (seen === undefined) run.streamed.set(stage, (seen = new Set()));
    const info = run.stages.get(stage);
    // A model's test metrics wait for the stage's end, to be logged once with the model's id.
    if (isModelMetric(info, point.key)) return;
    const metrics = unseen(seen, mlflowPoints(info, point));
    if (metrics.length === 0) return;
    this.append(run, { kind: 'log-batch', metrics }, point.timestamp);
    this.sender.schedule(this.batchIntervalMs);
  }

  private onStageEnd(run: RunState, e: StageEndEvent): void {
    const seen = run.streamed.get(e.stage) ?? new Set<string>();
    // A cached stage's points come only here; a ran stage's were streamed (keep any that were not).
    const stage = run.stages.get(e.stage);
    const all = unseen(seen, e.metrics.flatMap((p) => mlflowPoints(stage, p)));
    const modelMetrics = all.filter((m) => isModelMetric(stage, m.key));
    const metrics = all.filter((m) => !isModelMetric(stage, m.key));
    run.streamed.set(e.stage, seen);
    this.append(run, { kind: 'log-batch', metrics, tags: stageTags(e) });
    for (const a of e.artifacts) {
      this.append(run, { kind: 'upload-artifact', path: `${artifactSegment(e.stage)}/${a.name}`, file: a.path });
    }
    const done = e.status === 'ran' || e.status === 'cached';
    if (done && stage !== undefined && e.outDir !== undefined) this.queueDatasets(run, stage, e.outDir);
    if (modelMetrics.length > 0 || (done && stage !== undefined && e.outDir !== undefined)) {
      // After the datasets: the test metrics name the test set they were measured on.
      const outDir = done ? e.outDir : undefined;
      run.work = run.work
        .then(() => this.queueModel(run, stage, outDir, modelMetrics.map((m) => withTestSet(run, m))))
        .catch((error: unknown) => this.log(`MLflow tracking: could not record the model of stage ${e.stage}: ${(error as Error).message}`));
    }
    this.sender.schedule(0);
  }

  private queueModel(run: RunState, stage: PlannedStageInfo | undefined, outDir: string | undefined, metrics: Metric[]): void {
    const ops = stage !== undefined && outDir !== undefined ? loggedModelOps(this.modelInput(run, stage, outDir, metrics)) : [];
    if (ops.length > 0) for (const op of ops) this.append(run, op);
    else if (metrics.length > 0) this.append(run, { kind: 'log-batch', metrics });
    this.sender.schedule(0);
  }

  private modelInput(run: RunState, stage: PlannedStageInfo, outDir: string, metrics: Metric[]): Parameters<typeof loggedModelOps>[0] {
    const input: Parameters<typeof loggedModelOps>[0] = { start: run.start, stage, outDir, params: runParams(run.start), metrics };
    if (this.opts.register !== undefined) input.register = this.opts.register;
    return input;
  }

  /** The stage's datasets (read and digested in the background), as one log-inputs request. */
  private queueDatasets(run: RunState, stage: PlannedStageInfo, outDir: string): void {
    const reading = stageDatasets(stage, outDir, run.stages);
    reading.catch(() => undefined); // handled in the chain below; not an unhandled rejection meanwhile
    run.work = run.work
      .then(async () => {
        const datasets = await reading;
        if (datasets.length > 0) this.append(run, { kind: 'log-inputs', datasets });
        const test = datasets.find((d) => d.tags.some((t) => t.value === 'testing'));
        if (test !== undefined) run.testSet = test.dataset;
        this.sender.schedule(0);
      })
      .catch((error: unknown) => this.log(`MLflow tracking: could not read the datasets of stage ${stage.name}: ${(error as Error).message}`));
  }

  private onRunEnd(run: RunState, e: RunEndEvent): void {
    run.ended = true;
    const sampled = this.stopSampling(run);
    run.work = run.work.then(() => sampled).then(() => this.recordRunEnd(run, e));
  }

  private recordRunEnd(run: RunState, e: RunEndEvent): void {
    // A trial stopped early by the sweep's scheduler is FINISHED, as Ray Tune's and Optuna's MLflow
    // callbacks end an early-stopped trial: the search decided it, nothing went wrong (KILLED is what
    // a Ctrl-C leaves). The tags say where it stopped; its curves end there.
    const status = e.summary.interrupted ? 'KILLED' : e.summary.status === 'succeeded' ? 'FINISHED' : 'FAILED';
    this.append(run, { kind: 'log-batch', tags: [{ key: 'mlflow.note.content', value: truncate(renderRunNote(run.start, e), MAX_TAG_VALUE) }, ...prunedTags(e.summary)] });
    this.queueRunLog(run);
    this.append(run, { kind: 'update-run', status, endTime: e.endedAt });
    run.record = { ...run.record, ended: status };
    writeTrackingRecord(run.runDir, run.record);
    this.sender.schedule(0);
  }

  private queueRunLog(run: RunState): void {
    const file = join(run.runDir, 'log.txt');
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      return;
    }
    if (size === run.logSize) return;
    run.logSize = size;
    this.append(run, { kind: 'upload-artifact', path: 'log.txt', file });
  }

  private finishWithoutEnd(run: RunState, why: string): void {
    run.ended = true;
    if (run.sampler !== undefined) clearInterval(run.sampler.timer);
    run.sampler = undefined;
    this.append(run, { kind: 'log-batch', tags: [{ key: 'mlflow.note.content', value: `**Run failed**: ${why}.` }] });
    this.queueRunLog(run);
    this.append(run, { kind: 'update-run', status: 'FAILED', endTime: Date.now() });
    run.record = { ...run.record, ended: 'FAILED' };
    writeTrackingRecord(run.runDir, run.record);
  }
}

/** A test metric with the name and digest of the run's test set, once it is logged. */
function withTestSet(run: RunState, m: Metric): Metric {
  const test = run.testSet;
  return test === undefined || !m.key.startsWith('test_') ? m : { ...m, dataset_name: test.name, dataset_digest: test.digest };
}

// ---- what a run records (pure; exported for tests) ----

export function runName(e: RunStartEvent): string {
  const base = `${e.pipelineName} ${shortRunId(e.runId)}`;
  return e.sweep !== undefined ? `${base} ${e.sweep.trial}` : base;
}

/** The run id as is when short enough to read (pipe's `20261128-033703-1fe1`), else its last 8 characters. */
export function shortRunId(runId: string): string {
  return runId.length <= 24 ? runId : runId.slice(-8);
}

function runTags(e: RunStartEvent, opts: TrackerOptions, journalId: string, env: NodeJS.ProcessEnv): KeyValue[] {
  const tags: KeyValue[] = [
    { key: 'mlflow.runName', value: runName(e) },
    { key: 'mlflow.source.name', value: e.pipelineFile },
    { key: 'mlflow.source.type', value: 'LOCAL' },
    { key: 'mlflow.user', value: currentUser(env) },
    { key: 'pipe.run_id', value: e.runId },
    { key: 'pipe.pipeline', value: e.pipelineName },
    { key: 'pipe.journal_id', value: journalId },
  ];
  const commit = gitCommit(resolve(opts.projectDir, e.pipelineFile));
  if (commit !== undefined) tags.push({ key: 'mlflow.source.git.commit', value: commit });
  if (opts.parentRunId !== undefined) tags.push({ key: 'mlflow.parentRunId', value: opts.parentRunId });
  if (e.sweep !== undefined) {
    tags.push({ key: 'pipe.sweep_id', value: e.sweep.id }, { key: 'pipe.trial', value: e.sweep.trial });
  }
  return tags.map((t) => ({ key: t.key, value: truncate(t.value, MAX_TAG_VALUE) }));
}

/**
 * Every resolved pipeline param by name, every stage param as `<stage>.<param>` (nested objects as
 * dotted names, arrays as JSON), `pipeline_hash` and `backend`.
 */
export function runParams(e: RunStartEvent): KeyValue[] {
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(e.params)) flattenParam(k, v, out);
  for (const s of e.stages) for (const [k, v] of Object.entries(s.params)) flattenParam(`${s.name}.${k}`, v, out);
  for (const s of e.stages) for (const [k, v] of optimizerParams(s)) out.set(k, v);
  out.set('pipeline_hash', e.pipelineHash);
  out.set('backend', e.backend);
  return [...out].map(([key, value]) => ({ key: metricKey(key), value: truncate(value, MAX_PARAM_VALUE) }));
}

function flattenParam(key: string, value: unknown, out: Map<string, string>): void {
  if (value === undefined) return;
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) out.set(key, '{}');
    for (const [k, v] of entries) flattenParam(`${key}.${k}`, v, out);
    return;
  }
  out.set(key, typeof value === 'string' ? value : JSON.stringify(value));
}

/** A markdown summary of the DAG for `mlflow.note.content`. */
export function renderRunNote(start: RunStartEvent, end: RunEndEvent): string {
  const s = end.summary;
  const lines: string[] = [];
  const ok = s.status === 'succeeded';
  const verdict = !ok ? '**failed**' : s.pruned && !s.interrupted ? `stopped early by the sweep's scheduler (\`${s.pruned.stage}\` after epoch ${s.pruned.epoch} of ${s.pruned.of})` : 'succeeded';
  lines.push(`### ${start.pipelineName} — ${verdict} in ${formatDuration(s.durationMs)}`);
  lines.push('');
  lines.push(`Run \`${start.runId}\` of \`${start.pipelineFile}\`, backend \`${start.backend}\`, pipeline hash \`${start.pipelineHash.slice(0, 12)}\`.`);
  lines.push('');
  lines.push('| stage | kind | status | duration | why it ran |');
  lines.push('| --- | --- | --- | --- | --- |');
  for (const st of s.stages) {
    const why = st.status === 'cached' ? '(from the cache)' : st.status === 'skipped' ? st.error ?? '' : st.reasons.join('; ');
    lines.push(`| ${cell(st.name)} | ${cell(st.kind)} | ${statusCell(st.status)} | ${st.status === 'skipped' ? '' : formatDuration(st.durationMs)} | ${cell(why)} |`);
  }
  const counts = new Map<StageStatus, number>();
  for (const st of s.stages) counts.set(st.status, (counts.get(st.status) ?? 0) + 1);
  lines.push('');
  lines.push([...counts].map(([k, n]) => `${n} ${k}`).join(', ') + '.');
  const failed = s.stages.filter((st) => st.status === 'failed');
  for (const st of failed) {
    lines.push('');
    lines.push(`**Stage \`${st.name}\` failed:**`);
    lines.push('');
    lines.push('```');
    lines.push((st.error ?? 'unknown error').slice(0, 3000));
    lines.push('```');
  }
  const metricNames = Object.keys(s.metrics);
  if (metricNames.length > 0) {
    lines.push('');
    lines.push('| metric | last value |');
    lines.push('| --- | --- |');
    for (const k of metricNames.slice(0, 40)) lines.push(`| ${cell(k)} | ${formatNumber(s.metrics[k]!)} |`);
  }
  return lines.join('\n');
}

// ---- helpers ----

/** The stage's bookkeeping as tags (naming.ts): its status, duration and throughput figures. */
function stageTags(e: StageEndEvent): KeyValue[] {
  const tags: KeyValue[] = [{ key: bookkeepingKey(e.stage, 'status'), value: e.status }];
  if (e.status !== 'skipped') tags.push({ key: bookkeepingKey(e.stage, 'duration_s'), value: String(Math.round(e.durationMs) / 1000) });
  for (const p of e.metrics) if (isBookkeeping(p.key)) tags.push({ key: bookkeepingKey(e.stage, p.key), value: String(Math.round(p.value * 100) / 100) });
  return tags.map((t) => ({ key: metricKey(t.key), value: t.value }));
}

function toMetric(p: MetricPoint): Metric {
  return { key: metricKey(p.key), value: p.value, timestamp: Math.round(p.timestamp), step: Math.round(p.step) };
}

function metricSignature(m: Metric): string {
  return `${m.key}|${m.step}|${m.timestamp}|${m.value}`;
}

/** The points as MLflow metrics, less those already in `seen` (which learns the rest). */
function unseen(seen: Set<string>, points: MetricPoint[]): Metric[] {
  const out: Metric[] = [];
  for (const p of points) {
    const m = toMetric(p);
    const sig = metricSignature(m);
    if (seen.has(sig)) continue;
    seen.add(sig);
    out.push(m);
  }
  return out;
}

/** A name MLflow accepts for a metric, param or tag: [A-Za-z0-9_.\- /:], no empty or dot segments. */
export function metricKey(name: string): string {
  const cleaned = name
    .replace(/[^A-Za-z0-9_.\- /:]/g, '_')
    .split('/')
    .map((seg) => (seg === '' || seg === '.' || seg === '..' ? '_' : seg))
    .join('/');
  return cleaned.slice(0, MAX_KEY) || '_';
}

function artifactSegment(stage: string): string {
  return stage.replace(/[/\\]/g, '_').replace(/^\.+$/, '_');
}

function truncate(value: string, max: number): string {
  if (value.length <= max) return value;
  const marker = '…[truncated]';
  return value.slice(0, max - marker.length) + marker;
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

/** A pruned sweep trial's tags: pipe.trial_status, pipe.pruned_at_epoch (epochs the stage ran), pipe.pruned_stage. */
function prunedTags(summary: RunSummary): KeyValue[] {
  const pruned = summary.pruned;
  if (!pruned || summary.interrupted) return [];
  return [
    { key: 'pipe.trial_status', value: 'pruned' },
    { key: 'pipe.pruned_at_epoch', value: String(pruned.epoch) },
    { key: 'pipe.pruned_stage', value: pruned.stage },
    { key: 'pipe.pruned_of_epochs', value: String(pruned.of) },
  ];
}

function statusCell(status: StageStatus): string {
  switch (status) {
    case 'ran':
      return 'ran';
    case 'cached':
      return 'cached';
    case 'failed':
      return '**failed**';
    case 'skipped':
      return 'skipped';
    case 'pruned':
      return 'pruned';
    default: {
      const never: never = status;
      return never;
    }
  }
}

function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function formatNumber(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function currentUser(env: NodeJS.ProcessEnv): string {
  try {
    return env['USER'] ?? env['LOGNAME'] ?? userInfo().username;
  } catch {
    return 'unknown';
  }
}

function gitCommit(file: string): string | undefined {
  try {
    const out = execFileSync('git', ['rev-parse', 'HEAD'], {
      cwd: dirname(file),
      timeout: 3000,
      stdio: ['ignore', 'pipe', 'ignore'],
      encoding: 'utf8',
    }).trim();
    return /^[0-9a-f]{40,64}$/.test(out) ? out : undefined;
  } catch {
    return undefined;
  }
}
