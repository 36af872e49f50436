// `pipe run|sweep --queue redis://…`: the plan is made here, cached stages are restored here, and
// the stages that have to run go to the `pipe worker`s as one BullMQ flow per stage (see protocol.ts).
// This process then follows the jobs: the workers' progress events become this run's events (so the
// terminal, the run log and the MLflow tracker see what a local run shows), and each finished job
// becomes a stage-end read back from the shared cache. MLflow runs are made here, once per run or
// trial, whichever worker computed the stages.

import * as os from 'node:os';
import * as path from 'node:path';
import { FlowProducer, Job, Queue, QueueEvents, type FlowJob } from 'bullmq';
import { Redis } from 'ioredis';
import { UnavailableError } from '../core/errors.ts';
import type { RunSummary } from '../core/events.ts';
import { RunBook, skippedOutcome, upstreamOutcome, type ExecuteOptions, type Outcome, type Runner } from '../exec/run-book.ts';
import { prunedKey } from '../cache/cache.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import { restore } from '../exec/run-stage.ts';
import { shardJobs, stageJob, type StageJob } from '../exec/stage-job.ts';
import type { PlannedStage } from '../plan/plan.ts';
import {
  CANCEL_CHANNEL, DECISION_CHANNEL, EDGE_QUEUE, PREFIX, STAGE_QUEUE, edgeJobId, parseQueueUrl, stageJobId,
  type EpochAnswer, type StageJobData, type StageJobProgress, type StageJobResult,
} from './protocol.ts';

export interface QueueTarget {
  url: string;
  /** How many times a stage that failed is tried again (a worker that died does not count). */
  retries: number;
  /** Command stages' working directories are sent relative to this. */
  projectDir: string;
  /** Run-level notes for the person watching (no worker connected, …). */
  log: (line: string) => void;
  /** How often the jobs' states are read, in ms. */
  pollMs?: number;
  /**
   * Shard jobs per stage whose kind maps over its input (`--shards`; 1 = one job per stage). Such
   * a stage becomes `shards` shard jobs and a merge job that waits for them (stage-job.ts).
   */
  shards?: number;
}

const KEEP_FINISHED_JOBS_S = 7 * 24 * 3600;

/** A runner that sends the stages to `pipe worker`s through the Redis queue at `target.url`. */
export function queueRunner(target: QueueTarget): Runner {
  return (options) => executeOnQueue(options, target);
}

async function executeOnQueue(options: ExecuteOptions, target: QueueTarget): Promise<RunSummary> {
  const connection = parseQueueUrl(target.url);
  await ping(target.url, connection);
  const book = new RunBook(options);
  const remote = await restoreCachedStages(options, book);
  if (remote.length === 0) return book.close();

  const dag = queueDag(remote, options.run.runId, target.shards ?? 1);
  const submitter = `${os.hostname()}:${process.pid}`;
  const flows = remote.map((stage) => stageFlow(stage, dag, options, target, submitter));
  const follower = new QueueFollower(options, target, book, dag, connection);
  try {
    await follower.submit(flows);
    await follower.followUntilSettled();
  } finally {
    await follower.close();
  }
  return book.close();
}

/** Restores the stages whose entry is in the cache already, as a local run would; returns the others. */
async function restoreCachedStages(options: ExecuteOptions, book: RunBook): Promise<PlannedStage[]> {
  const remote: PlannedStage[] = [];
  for (const stage of options.plan.stages) {
    const onDamaged = (problem: string) => book.emit({ type: 'stage-log', stage: stage.name, stream: 'log', line: `${problem}: the stage runs again` });
    const entry = stage.cached ? await options.cache.readIntact(stage.fingerprint, onDamaged) : undefined;
    if (entry) book.finish(stage, await restore(stage, entry, options));
    else remote.push(stage);
  }
  return remote;
}

/** The DAG among the stages that go to the queue, with the job ids it becomes. */
interface QueueDag {
  remote: PlannedStage[];
  byName: Map<string, PlannedStage>;
  jobIds: Map<string, string>;
  /** Stage name -> its shard jobs' ids, for a stage split into shards (the stage's own job merges). */
  shardIds: Map<string, string[]>;
  /**
   * Stage name -> one edge job per upstream stage that also goes to the queue; per shard (`shard`
   * = its index) for a sharded stage, whose shard jobs are what waits for the upstream stages.
   */
  edgesInto: Map<string, Array<{ up: string; id: string; shard?: number }>>;
  /** Stage name -> the edge jobs its worker removes when it completes. */
  releases: Map<string, string[]>;
  dependents: Map<string, string[]>;
}

function queueDag(remote: PlannedStage[], runId: string, shards: number): QueueDag {
  const remoteNames = new Set(remote.map((s) => s.name));
  const byName = new Map(remote.map((s) => [s.name, s]));
  const jobIds = new Map(remote.map((s) => [s.name, stageJobId(runId, s.fingerprint)]));
  const shardIds = new Map(remote.filter((s) => shards > 1 && s.stage.kind?.shard).map((s) => [
    s.name,
    Array.from({ length: shards }, (_, i) => `${jobIds.get(s.name)!}.s${i}`),
  ]));
  const edgesInto = new Map(remote.map((stage) => {
    const ups = stage.stage.upstream.filter((up) => remoteNames.has(up));
    const edgeId = (up: string) => edgeJobId(runId, byName.get(up)!.fingerprint, stage.fingerprint);
    const count = shardIds.get(stage.name)?.length;
    const edges = count
      ? ups.flatMap((up) => Array.from({ length: count }, (_, shard) => ({ up, id: `${edgeId(up)}.s${shard}`, shard })))
      : ups.map((up) => ({ up, id: edgeId(up) }));
    return [stage.name, edges];
  }));
  const releases = new Map<string, string[]>(remote.map((s) => [s.name, []]));
  const dependents = new Map<string, string[]>(remote.map((s) => [s.name, []]));
  for (const [name, edges] of edgesInto) {
    for (const { up, id } of edges) {
      releases.get(up)!.push(id);
      if (!dependents.get(up)!.includes(name)) dependents.get(up)!.push(name);
    }
  }
  return { remote, byName, jobIds, shardIds, edgesInto, releases, dependents };
}

/** One stage's BullMQ flow: its job as the parent, one child edge job per upstream stage in the queue. */
function stageFlow(stage: PlannedStage, dag: QueueDag, options: ExecuteOptions, target: QueueTarget, submitter: string): FlowJob {
  const job = stageJob(options.plan, stage, options.flavour);
  const dataOf = (unit: StageJob, releases: string[]): StageJobData => ({
    job: { ...unit, cwd: path.relative(target.projectDir, unit.cwd) || '.' },
    runId: options.run.runId,
    cacheDir: options.cache.root,
    backend: options.flavour,
    releases,
    submitter,
    ...(options.epochGate?.watches(stage.name) ? { scheduled: true } : {}),
  });
  const opts = {
    attempts: 1 + target.retries,
    backoff: { type: 'fixed' as const, delay: 2000 },
    removeOnComplete: { age: KEEP_FINISHED_JOBS_S },
    removeOnFail: { age: KEEP_FINISHED_JOBS_S },
  };
  const edgesOf = (shard: number | undefined): FlowJob[] => dag.edgesInto.get(stage.name)!.filter((edge) => edge.shard === shard).map(({ up, id }) => ({
    name: `${up} -> ${stage.name}`, queueName: EDGE_QUEUE, prefix: PREFIX, data: { from: up, to: stage.name }, opts: { jobId: id },
  }));
  const shardIds = dag.shardIds.get(stage.name);
  if (!shardIds) {
    const edges = edgesOf(undefined);
    return {
      name: stage.name,
      queueName: STAGE_QUEUE,
      prefix: PREFIX,
      data: dataOf(job, dag.releases.get(stage.name)!),
      opts: { ...opts, jobId: dag.jobIds.get(stage.name)! },
      ...(edges.length > 0 ? { children: edges } : {}),
    };
  }
  // The stage's job merges; its children are the shard jobs, which wait for the upstream stages.
  // A shard that fails for good fails the merge job, and so the stage.
  const { shards, merge } = shardJobs(job, shardIds.length);
  const children = shards.map((shard, i): FlowJob => {
    const edges = edgesOf(i);
    return {
      name: `${stage.name} [shard ${i + 1}/${shards.length}]`,
      queueName: STAGE_QUEUE,
      prefix: PREFIX,
      data: dataOf(shard, []),
      opts: { ...opts, jobId: shardIds[i]!, failParentOnFailure: true },
      ...(edges.length > 0 ? { children: edges } : {}),
    };
  });
  return {
    name: stage.name,
    queueName: STAGE_QUEUE,
    prefix: PREFIX,
    data: dataOf(merge, dag.releases.get(stage.name)!),
    opts: { ...opts, jobId: dag.jobIds.get(stage.name)! },
    children,
  };
}

/**
 * Follows a submitted run: forwards the workers' progress as this run's events, reads each job's
 * state until every stage has settled (completed, failed, or skipped after an upstream failure),
 * and on abort removes the jobs not started and asks the workers to stop the others.
 */
class QueueFollower {
  private readonly queue: Queue;
  private readonly events: QueueEvents;
  private readonly producer: FlowProducer;
  private readonly publisher: Redis;
  private readonly pending: Set<string>;
  private readonly stageOfJob: Map<string, PlannedStage>;
  private readonly workerOf = new Map<string, string>();
  /** Metric points of the stages in the queue so far (a scheduler decides on them). */
  private readonly metricsOf = new Map<string, MetricPoint[]>();
  /** Shard job id -> its stage's name and its index. */
  private readonly shardOfJob = new Map<string, { stage: string; index: number }>();
  /** Per sharded stage: when its first shard started, the workers of its shards, each shard's progress. */
  private readonly sharded = new Map<string, { startedAt?: number; workers: Set<string>; progress: Array<{ done: number; total?: number }> }>();
  private wake: (() => void) | undefined;
  private readonly nudge = () => this.wake?.();

  constructor(
    private readonly options: ExecuteOptions,
    private readonly target: QueueTarget,
    private readonly book: RunBook,
    private readonly dag: QueueDag,
    connection: ReturnType<typeof parseQueueUrl>,
  ) {
    this.queue = new Queue(STAGE_QUEUE, { connection, prefix: PREFIX });
    this.events = new QueueEvents(STAGE_QUEUE, { connection, prefix: PREFIX });
    this.producer = new FlowProducer({ connection, prefix: PREFIX });
    this.publisher = new Redis(connection);
    this.pending = new Set(dag.remote.map((s) => s.name));
    this.stageOfJob = new Map(dag.remote.map((s) => [dag.jobIds.get(s.name)!, s]));
    for (const [name, ids] of dag.shardIds) {
      ids.forEach((id, index) => {
        this.stageOfJob.set(id, dag.byName.get(name)!);
        this.shardOfJob.set(id, { stage: name, index });
      });
      this.sharded.set(name, { workers: new Set(), progress: ids.map(() => ({ done: 0 })) });
    }
  }

  /** Listens for the jobs' events, adds the flows, and arranges for an abort to stop them. */
  async submit(flows: FlowJob[]): Promise<void> {
    const { events } = this;
    await events.waitUntilReady();
    events.on('progress', ({ jobId, data }) => {
      const stage = this.stageOfJob.get(jobId);
      if (!stage || !this.pending.has(stage.name)) return;
      const shard = this.shardOfJob.get(jobId);
      if (shard) this.forwardShard(stage, shard.index, data as StageJobProgress);
      else this.forward(stage, data as StageJobProgress);
    });
    events.on('completed', this.nudge);
    events.on('failed', this.nudge);
    await this.producer.addBulk(flows);
    this.book.onAbort((reason) => void this.cancel(reason));
  }

  async followUntilSettled(): Promise<void> {
    const startedWaiting = Date.now();
    let toldNoWorker = false;
    while (this.pending.size > 0) {
      for (const name of [...this.pending]) await this.check(name);
      if (this.pending.size === 0) break;
      if (!toldNoWorker && Date.now() - startedWaiting > 10_000 && this.workerOf.size === 0 && (await this.queue.getWorkersCount()) === 0) {
        toldNoWorker = true;
        this.target.log(`waiting: no pipe worker is connected to ${this.target.url} (start one: pipe worker --queue ${this.target.url})`);
      }
      await this.sleepUntilNudged();
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.events.close(), this.queue.close(), this.producer.close(), this.publisher.quit()]);
  }

  /**
   * A shard's events as its stage's: one stage-start (the first shard's), log lines marked with
   * the shard, progress summed over the shards; the pass's metrics come from the merge.
   */
  private forwardShard(stage: PlannedStage, index: number, p: StageJobProgress): void {
    const { book } = this;
    const state = this.sharded.get(stage.name)!;
    const count = state.progress.length;
    switch (p.type) {
      case 'stage-start':
        state.workers.add(p.worker);
        this.workerOf.set(stage.name, [...state.workers].sort().join('+'));
        if (state.startedAt !== undefined) return;
        state.startedAt = p.startedAt;
        book.emit({ type: 'stage-start', stage: stage.name, fingerprint: stage.fingerprint, startedAt: p.startedAt, worker: p.worker });
        return;
      case 'stage-log':
        book.emit({ type: 'stage-log', stage: stage.name, stream: p.stream, line: `[shard ${index + 1}/${count}] ${p.line}` });
        return;
      case 'stage-progress': {
        if (p.label === 'downloading weights') return;
        state.progress[index] = { done: p.done, total: p.total };
        const done = state.progress.reduce((sum, s) => sum + s.done, 0);
        const totals = state.progress.map((s) => s.total);
        const total = totals.every((t) => t !== undefined) ? totals.reduce((sum, t) => sum + t!, 0) : undefined;
        book.emit({ type: 'stage-progress', stage: stage.name, done, total, label: p.label });
        return;
      }
      case 'stage-metric':
        return;
    }
  }

  private forward(stage: PlannedStage, p: StageJobProgress): void {
    const { book } = this;
    switch (p.type) {
      case 'stage-start':
        // A sharded stage started with its first shard; its merge job is not news.
        if (this.sharded.has(stage.name)) return;
        this.workerOf.set(stage.name, p.worker);
        book.emit({ type: 'stage-start', stage: stage.name, fingerprint: stage.fingerprint, startedAt: p.startedAt, worker: p.worker });
        return;
      case 'stage-log':
        book.emit({ type: 'stage-log', stage: stage.name, stream: p.stream, line: p.line });
        return;
      case 'stage-progress':
        book.emit({ type: 'stage-progress', stage: stage.name, done: p.done, total: p.total, label: p.label });
        return;
      case 'stage-metric':
        this.metricsOf.set(stage.name, [...(this.metricsOf.get(stage.name) ?? []), p.point]);
        book.emit({ type: 'stage-metric', stage: stage.name, point: p.point });
        return;
      case 'stage-epoch':
        void this.answerEpoch(stage, p.epoch, p.of);
        return;
    }
  }

  /** The scheduler's decision after an epoch of a watched stage, made here and sent to its worker. */
  private async answerEpoch(stage: PlannedStage, epoch: number, of: number): Promise<void> {
    const gate = this.options.epochGate;
    let stop = false;
    try {
      stop = gate ? await gate.decide(stage.name, epoch, of, this.metricsOf.get(stage.name) ?? []) : false;
    } catch {
      // a scheduler's failure never stops a stage
    }
    const answer: EpochAnswer = { jobId: this.dag.jobIds.get(stage.name)!, epoch, stop };
    await this.publisher.publish(DECISION_CHANNEL, JSON.stringify(answer)).catch(() => undefined);
  }

  /** Reads the state of stage `name`'s job and settles the stage when the job has ended. */
  private async check(name: string): Promise<void> {
    const { book, options } = this;
    const stage = this.dag.byName.get(name)!;
    const id = this.dag.jobIds.get(name)!;
    // The state first, then the job: read the other way round, a job that completes in between is
    // 'completed' without its return value.
    const state = await this.queue.getJobState(id);
    const job = state === 'unknown' ? undefined : await Job.fromId(this.queue, id);
    if (!job) {
      this.settle(stage, failed(book.abortReason ? `stopped: ${book.abortReason}` : 'its job vanished from the queue', this.workerOf.get(name)));
      await this.skipDownstream(name, `upstream stage '${name}' did not complete`);
      return;
    }
    if (state === 'completed') {
      const result = job.returnvalue as StageJobResult;
      const key = result.status === 'pruned' && result.pruned ? prunedKey(stage.fingerprint, result.pruned.epoch) : stage.fingerprint;
      const entry = await options.cache.read(key);
      if (!entry) {
        this.settle(stage, failed(`${result.worker} completed it, but its entry is not in the cache at ${options.cache.root}: do the workers share this cache (--cache)?`, result.worker));
        await this.skipDownstream(name, `upstream stage '${name}' did not complete`);
        return;
      }
      if (result.status === 'pruned') return this.settlePruned(stage, result);
      const restored = await restore(stage, entry, options);
      const ran = result.status === 'ran';
      const shards = this.sharded.get(name);
      // A sharded stage took from its first shard's start to the end of its merge, on its shards' workers.
      const durationMs = shards?.startedAt !== undefined && job.finishedOn ? job.finishedOn - shards.startedAt : result.durationMs;
      const worker = shards ? (this.workerOf.get(name) ?? result.worker) : result.worker;
      this.settle(stage, { ...restored, status: result.status, durationMs, worker, ...(ran ? { summary: result.summary } : {}) });
    } else if (state === 'failed') {
      const worker = this.workerOf.get(name);
      const reason = (await this.failedShard(name)) ?? (job.failedReason || 'failed on a worker');
      this.settle(stage, { ...failed(reason, worker), durationMs: job.finishedOn && job.processedOn ? job.finishedOn - job.processedOn : 0 });
      await this.stopShards(name, 'another shard of the stage failed');
      await this.skipDownstream(name, `upstream stage '${name}' did not complete`);
    }
  }

  /** A watched stage its worker stopped early: pruned, and what depends on it is held back. */
  private async settlePruned(stage: PlannedStage, result: StageJobResult): Promise<void> {
    const entry = await this.options.cache.read(prunedKey(stage.fingerprint, result.pruned!.epoch));
    const outcome: Outcome = {
      status: 'pruned',
      durationMs: result.durationMs,
      metrics: this.metricsOf.get(stage.name) ?? [],
      artifacts: (entry?.result.artifacts ?? []).map((name) => ({ name, path: path.join(entry!.outDir, name) })),
      summary: result.summary,
      worker: result.worker,
      pruned: result.pruned!,
      ...(entry ? { outDir: entry.outDir } : {}),
    };
    this.settle(stage, outcome);
    await this.skipDownstream(stage.name, upstreamOutcome([stage.name], [outcome])?.error ?? 'trial pruned', true);
  }

  /** Why a sharded stage failed: its first shard that failed for good, with that shard's error. */
  private async failedShard(name: string): Promise<string | undefined> {
    const ids = this.dag.shardIds.get(name) ?? [];
    for (const [index, id] of ids.entries()) {
      if ((await this.queue.getJobState(id)) !== 'failed') continue;
      const job = await Job.fromId(this.queue, id);
      if (job) return `shard ${index + 1} of ${ids.length}: ${job.failedReason || 'failed on a worker'}`;
    }
    return undefined;
  }

  /** The shards of a failed sharded stage that are still waiting or running are not needed any more. */
  private async stopShards(name: string, reason: string): Promise<void> {
    const active: string[] = [];
    for (const id of this.dag.shardIds.get(name) ?? []) if (!(await removeJob(this.queue, id))) active.push(id);
    if (active.length > 0) await this.publisher.publish(CANCEL_CHANNEL, JSON.stringify({ jobIds: active, reason }));
  }

  private settle(stage: PlannedStage, outcome: Outcome): void {
    if (!this.pending.delete(stage.name)) return;
    this.book.finish(stage, outcome);
  }

  private async skipDownstream(from: string, why: string, afterPruned = false): Promise<void> {
    const { dependents, jobIds, byName } = this.dag;
    const stack = [...(dependents.get(from) ?? [])];
    while (stack.length > 0) {
      const name = stack.shift()!;
      if (!this.pending.has(name)) continue;
      await removeJob(this.queue, jobIds.get(name)!);
      this.settle(byName.get(name)!, skippedOutcome(why, afterPruned));
      stack.push(...(dependents.get(name) ?? []));
    }
  }

  /** Removes the jobs not started yet; asks the workers running the others to stop them. */
  private async cancel(reason: string): Promise<void> {
    const { jobIds, byName } = this.dag;
    const active: string[] = [];
    for (const name of [...this.pending]) {
      // A sharded stage's running shards are what runs of it.
      active.push(...(this.dag.shardIds.get(name) ?? []));
      if (await removeJob(this.queue, jobIds.get(name)!)) this.settle(byName.get(name)!, skippedOutcome(`not started: ${reason}`));
      else active.push(jobIds.get(name)!);
    }
    if (active.length > 0) await this.publisher.publish(CANCEL_CHANNEL, JSON.stringify({ jobIds: active, reason }));
    this.nudge();
  }

  /** Waits one poll interval, or less when a job completes or fails. */
  private async sleepUntilNudged(): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.target.pollMs ?? 500);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = undefined;
  }
}

function failed(error: string, worker: string | undefined): Outcome {
  return { status: 'failed', durationMs: 0, error, metrics: [], artifacts: [], summary: {}, ...(worker ? { worker } : {}) };
}

/** Removes a job that has not started (waiting for its edges or for a worker); false when it runs. */
async function removeJob(queue: Queue, id: string): Promise<boolean> {
  const job = await Job.fromId(queue, id);
  if (!job) return true;
  const state = await job.getState();
  if (state === 'active') return false;
  if (state === 'completed' || state === 'failed') return false;
  try {
    await job.remove({ removeChildren: true });
    return true;
  } catch {
    return false;
  }
}

async function ping(url: string, connection: ReturnType<typeof parseQueueUrl>): Promise<void> {
  const client = new Redis({ ...connection, maxRetriesPerRequest: 1, retryStrategy: () => null, connectTimeout: 5000, lazyConnect: true });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    throw new UnavailableError(`cannot reach the queue at ${url}: ${(error as Error).message}`);
  } finally {
    client.disconnect();
  }
}
