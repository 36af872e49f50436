// `pipe run|sweep --queue redis://…`: the plan is made here, cached stages are restored here, and
// the stages that have to run go to the `pipe worker`s as one BullMQ flow per stage (see queue.ts).
// This process then follows the jobs: the workers' progress events become this run's events (so the
// terminal, the run log and the MLflow tracker see what a local run shows), and each finished job
// becomes a stage-end read back from the shared cache. MLflow runs are made here, once per run or
// trial, whichever worker computed the stages.

import * as os from 'node:os';
import * as path from 'node:path';
import { FlowProducer, Job, Queue, QueueEvents, type FlowJob } from 'bullmq';
import { Redis } from 'ioredis';
import type { RunSummary } from '../core/events.ts';
import { RunBook, skippedOutcome, type ExecuteOptions, type Outcome, type Runner } from '../exec/run-book.ts';
import { restore } from '../exec/run-stage.ts';
import { stageJob } from '../exec/stage-job.ts';
import type { PlannedStage } from '../plan/plan.ts';
import {
  CANCEL_CHANNEL, EDGE_QUEUE, PREFIX, STAGE_QUEUE, edgeJobId, parseQueueUrl, stageJobId,
  type StageJobData, type StageJobProgress, type StageJobResult,
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
}

const KEEP_FINISHED_JOBS_S = 7 * 24 * 3600;

/** A runner that sends the stages to `pipe worker`s through the Redis queue at `target.url`. */
export function queueRunner(target: QueueTarget): Runner {
  return (options) => executeOnQueue(options, target);
}

async function executeOnQueue(options: ExecuteOptions, target: QueueTarget): Promise<RunSummary> {
  const connection = parseQueueUrl(target.url);
  await ping(target.url, connection);
  const { plan, cache } = options;
  const runId = options.run.runId;
  const book = new RunBook(options);
  const submitter = `${os.hostname()}:${process.pid}`;

  // Stages whose entry is here already are restored like in a local run.
  const remote: PlannedStage[] = [];
  for (const stage of plan.stages) {
    const onDamaged = (problem: string) => book.emit({ type: 'stage-log', stage: stage.name, stream: 'log', line: `${problem}: the stage runs again` });
    const entry = stage.cached ? await cache.readIntact(stage.fingerprint, onDamaged) : undefined;
    if (entry) book.finish(stage, await restore(stage, entry, options));
    else remote.push(stage);
  }
  if (remote.length === 0) return book.close();

  const remoteNames = new Set(remote.map((s) => s.name));
  const byName = new Map(remote.map((s) => [s.name, s]));
  const jobIds = new Map(remote.map((s) => [s.name, stageJobId(runId, s.fingerprint)]));
  // The DAG among the stages that go to the queue: one edge job per dependency.
  const edgesInto = new Map(remote.map((stage) => [stage.name, stage.stage.upstream.filter((up) => remoteNames.has(up)).map((up) => ({
    up,
    id: edgeJobId(runId, byName.get(up)!.fingerprint, stage.fingerprint),
  }))]));
  const releases = new Map<string, string[]>(remote.map((s) => [s.name, []]));
  const dependents = new Map<string, string[]>(remote.map((s) => [s.name, []]));
  for (const [name, edges] of edgesInto) {
    for (const { up, id } of edges) {
      releases.get(up)!.push(id);
      dependents.get(up)!.push(name);
    }
  }
  const flows: FlowJob[] = remote.map((stage) => {
    const job = stageJob(plan, stage, options.backend);
    const data: StageJobData = {
      job: { ...job, cwd: path.relative(target.projectDir, job.cwd) || '.' },
      runId,
      cacheDir: cache.root,
      backend: options.backend,
      releases: releases.get(stage.name)!,
      submitter,
    };
    const edges = edgesInto.get(stage.name)!.map(({ up, id }) => ({
      name: `${up} -> ${stage.name}`, queueName: EDGE_QUEUE, prefix: PREFIX, data: { from: up, to: stage.name }, opts: { jobId: id },
    }));
    return {
      name: stage.name,
      queueName: STAGE_QUEUE,
      prefix: PREFIX,
      data,
      opts: {
        jobId: jobIds.get(stage.name)!,
        attempts: 1 + target.retries,
        backoff: { type: 'fixed', delay: 2000 },
        removeOnComplete: { age: KEEP_FINISHED_JOBS_S },
        removeOnFail: { age: KEEP_FINISHED_JOBS_S },
      },
      ...(edges.length > 0 ? { children: edges } : {}),
    };
  });

  const queue = new Queue(STAGE_QUEUE, { connection, prefix: PREFIX });
  const events = new QueueEvents(STAGE_QUEUE, { connection, prefix: PREFIX });
  const producer = new FlowProducer({ connection, prefix: PREFIX });
  const publisher = new Redis(connection);
  const pending = new Set(remote.map((s) => s.name));
  const stageOfJob = new Map(remote.map((s) => [jobIds.get(s.name)!, s]));
  const workerOf = new Map<string, string>();
  let wake: (() => void) | undefined;
  const nudge = () => wake?.();

  try {
    const forward = (stage: PlannedStage, p: StageJobProgress) => {
      switch (p.type) {
        case 'stage-start':
          workerOf.set(stage.name, p.worker);
          book.emit({ type: 'stage-start', stage: stage.name, fingerprint: stage.fingerprint, startedAt: p.startedAt, worker: p.worker });
          return;
        case 'stage-log':
          book.emit({ type: 'stage-log', stage: stage.name, stream: p.stream, line: p.line });
          return;
        case 'stage-progress':
          book.emit({ type: 'stage-progress', stage: stage.name, done: p.done, total: p.total, label: p.label });
          return;
        case 'stage-metric':
          book.emit({ type: 'stage-metric', stage: stage.name, point: p.point });
          return;
      }
    };

    await events.waitUntilReady();
    events.on('progress', ({ jobId, data }) => {
      const stage = stageOfJob.get(jobId);
      if (!stage || !pending.has(stage.name)) return;
      forward(stage, data as StageJobProgress);
    });
    events.on('completed', nudge);
    events.on('failed', nudge);
    await producer.addBulk(flows);

    const settle = (stage: PlannedStage, outcome: Outcome) => {
      if (!pending.delete(stage.name)) return;
      book.finish(stage, outcome);
    };
    const skipDownstream = async (from: string, why: string) => {
      const stack = [...(dependents.get(from) ?? [])];
      while (stack.length > 0) {
        const name = stack.shift()!;
        if (!pending.has(name)) continue;
        await removeJob(queue, jobIds.get(name)!);
        settle(byName.get(name)!, skippedOutcome(why));
        stack.push(...(dependents.get(name) ?? []));
      }
    };

    book.onAbort((reason) => {
      void (async () => {
        const active: string[] = [];
        for (const name of [...pending]) {
          if (await removeJob(queue, jobIds.get(name)!)) settle(byName.get(name)!, skippedOutcome(`not started: ${reason}`));
          else active.push(jobIds.get(name)!);
        }
        if (active.length > 0) await publisher.publish(CANCEL_CHANNEL, JSON.stringify({ jobIds: active, reason }));
        nudge();
      })();
    });

    const startedWaiting = Date.now();
    let toldNoWorker = false;
    while (pending.size > 0) {
      for (const name of [...pending]) {
        const stage = byName.get(name)!;
        const job = await Job.fromId(queue, jobIds.get(name)!);
        if (!job) {
          settle(stage, failed(book.abortReason ? `stopped: ${book.abortReason}` : 'its job vanished from the queue', workerOf.get(name)));
          await skipDownstream(name, `upstream stage '${name}' did not complete`);
          continue;
        }
        const state = await job.getState();
        if (state === 'completed') {
          const result = job.returnvalue as StageJobResult;
          const entry = await cache.read(stage.fingerprint);
          if (!entry) {
            settle(stage, failed(`${result.worker} completed it, but its entry is not in the cache at ${cache.root}: do the workers share this cache (--cache)?`, result.worker));
            await skipDownstream(name, `upstream stage '${name}' did not complete`);
            continue;
          }
          const restored = await restore(stage, entry, options);
          const ran = result.status === 'ran';
          settle(stage, { ...restored, status: result.status, durationMs: result.durationMs, worker: result.worker, ...(ran ? { summary: result.summary } : {}) });
        } else if (state === 'failed') {
          const worker = workerOf.get(name);
          settle(stage, { ...failed(job.failedReason || 'failed on a worker', worker), durationMs: job.finishedOn && job.processedOn ? job.finishedOn - job.processedOn : 0 });
          await skipDownstream(name, `upstream stage '${name}' did not complete`);
        }
      }
      if (pending.size === 0) break;
      if (!toldNoWorker && Date.now() - startedWaiting > 10_000 && workerOf.size === 0 && (await queue.getWorkersCount()) === 0) {
        toldNoWorker = true;
        target.log(`waiting: no pipe worker is connected to ${target.url} (start one: pipe worker --queue ${target.url})`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, target.pollMs ?? 500);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    await Promise.allSettled([events.close(), queue.close(), producer.close(), publisher.quit()]);
  }
  return book.close();
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
    throw new Error(`cannot reach the queue at ${url}: ${(error as Error).message}`);
  } finally {
    client.disconnect();
  }
}
