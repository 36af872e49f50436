// The stage-job processor of `pipe worker` (the command itself, its options and signals, is
// src/app/worker.ts): takes stage jobs from the queue and runs each with the executor's own code (a
// child process per stage, the machine's CPU and GPU slots, CUDA_VISIBLE_DEVICES per job), into
// the shared cache. Progress goes back as job progress; the result is the cache entry. A worker
// that dies mid-job loses its lock on the job: BullMQ hands the job to another worker after the
// lock expires, which takes over the stale cache lock and computes the stage again from scratch (a
// half-written entry is never published).

import * as path from 'node:path';
import { Job, Queue, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { Cache } from '../cache/cache.ts';
import { StageError } from '../core/errors.ts';
import type { RunEvent } from '../core/events.ts';
import { restoreOuts, runStage, type StageProcess } from '../exec/run-stage.ts';
import type { StageJob } from '../exec/stage-job.ts';
import { Slots } from '../exec/slots.ts';
import { formatDuration } from '../render/render.ts';
import {
  CANCEL_CHANNEL, DECISION_CHANNEL, EDGE_QUEUE, PREFIX, STAGE_QUEUE, parseQueueUrl,
  type EpochAnswer, type StageJobData, type StageJobProgress, type StageJobResult,
} from './protocol.ts';
import type { EpochGate } from '../exec/run-book.ts';

export interface WorkerConfig {
  /** The Redis server of the queue: redis://HOST:PORT[/DB]. */
  queueUrl: string;
  /** How runs name this worker (stage-start events, outcomes, its log lines). */
  name: string;
  /** CPU slots: also how many jobs the worker takes at once. */
  cpus: number;
  /**
   * TensorFlow's intra-op threads in the stage processes (`--cpus` given: that number, inter-op 1);
   * unset, TensorFlow uses every core of the machine.
   */
  tfThreads?: number;
  /** Ids of the GPUs it hands out (CUDA_VISIBLE_DEVICES values). */
  gpus: string[];
  /** Command stages' working directories (sent relative) are resolved against this. */
  projectDir: string;
  /** The cache every worker reaches, when its path here differs from the submitter's. */
  cacheDir?: string;
  /** Where fetch stages keep their downloads. */
  downloadCacheDir: string;
  /** How long a job's lock lasts without renewal; also how often stalled jobs are looked for. */
  lockMs: number;
  /** Lines for the person watching the worker: a job started, ran, failed, was cancelled. */
  log: (line: string) => void;
  /** Stops taking jobs: the running ones finish, then `run()` returns. */
  signal?: AbortSignal;
}

export interface StartedWorker {
  /** Takes jobs until `config.signal` aborts and the running jobs end; then closes the connections. */
  run(): Promise<void>;
}

/** Connects to the queue and waits until the worker can take jobs. */
export async function startWorker(config: WorkerConfig): Promise<StartedWorker> {
  const connection = parseQueueUrl(config.queueUrl);
  const edges = new Queue(EDGE_QUEUE, { connection, prefix: PREFIX });
  const slots = new Slots(config.cpus, config.gpus);
  const answers = new Map<string, (stop: boolean) => void>();
  const worker = new Worker(STAGE_QUEUE, (job: Job, _token?: string, signal?: AbortSignal) => processStageJob(job, signal, { config, slots, edges, answers }), {
    connection,
    prefix: PREFIX,
    name: config.name,
    concurrency: config.cpus,
    lockDuration: config.lockMs,
    stalledInterval: config.lockMs,
    maxStalledCount: 2,
    autorun: false,
  });
  worker.on('error', (error) => config.log(`queue error: ${error.message}`));
  config.signal?.addEventListener('abort', () => void worker.close());
  const subscriber = await listenToSubmitters(connection, worker, answers, config.log);
  await worker.waitUntilReady();
  return {
    async run() {
      await worker.run();
      await Promise.allSettled([edges.close(), subscriber.quit()]);
    },
  };
}

/**
 * What submitters say to the workers: a submitter that stops (Ctrl-C, --fail-fast) asks them to
 * stop its running jobs; a sweep's scheduler answers each epoch of a watched stage.
 */
async function listenToSubmitters(connection: ReturnType<typeof parseQueueUrl>, worker: Worker, answers: Map<string, (stop: boolean) => void>, log: (line: string) => void): Promise<Redis> {
  const subscriber = new Redis(connection);
  subscriber.on('error', () => undefined);
  await subscriber.subscribe(CANCEL_CHANNEL, DECISION_CHANNEL);
  subscriber.on('message', (channel: string, message: string) => {
    try {
      if (channel === DECISION_CHANNEL) {
        const answer = JSON.parse(message) as EpochAnswer;
        answers.get(answerKey(answer.jobId, answer.epoch))?.(answer.stop);
        return;
      }
      const { jobIds, reason } = JSON.parse(message) as { jobIds: string[]; reason?: string };
      for (const id of jobIds) if (worker.cancelJob(id, reason ?? 'cancelled by the submitter')) log(`cancelling job ${id}: ${reason ?? ''}`);
    } catch {
      // not ours
    }
  });
  return subscriber;
}

interface Processor {
  config: WorkerConfig;
  slots: Slots;
  /** The queue of edge jobs, removed when the upstream stage's entry is published. */
  edges: Queue;
  /** Watched stages waiting for the submitter's answer after an epoch, by job and epoch. */
  answers: Map<string, (stop: boolean) => void>;
}

const answerKey = (jobId: string, epoch: number) => `${jobId}@${epoch}`;

/** How long a watched stage waits for the submitter's answer before it goes on (a submitter that died). */
const ANSWER_TIMEOUT_MS = Number(process.env['PIPE_DECISION_TIMEOUT_MS'] ?? 120_000);

/**
 * The scheduler of a watched stage's job, as the worker sees it: each epoch goes to the submitter
 * (as job progress, after the epoch's metrics) and the stage waits for its answer.
 */
function remoteGate(job: Job, data: StageJobData, processor: Processor, send: (p: StageJobProgress) => void): EpochGate | undefined {
  if (!data.scheduled || job.id === undefined) return undefined;
  const jobId = job.id;
  return {
    watches: () => true,
    decide: (_stage, epoch, of) =>
      new Promise<boolean>((resolve) => {
        const key = answerKey(jobId, epoch);
        const timer = setTimeout(() => {
          processor.answers.delete(key);
          processor.config.log(`${data.job.name}: no early-stopping answer from the submitter after epoch ${epoch}; going on`);
          resolve(false);
        }, ANSWER_TIMEOUT_MS);
        processor.answers.set(key, (stop) => {
          clearTimeout(timer);
          processor.answers.delete(key);
          resolve(stop);
        });
        send({ type: 'stage-epoch', epoch, of });
      }),
  };
}

/** Runs one stage job into the cache; throws (BullMQ marks the job failed) when the stage fails. */
async function processStageJob(job: Job, signal: AbortSignal | undefined, processor: Processor): Promise<StageJobResult> {
  const { config, slots } = processor;
  const { name, log } = config;
  const data = job.data as StageJobData;
  const cache = new Cache(config.cacheDir ?? data.cacheDir);
  const stage: StageJob = { ...data.job, cwd: path.resolve(config.projectDir, data.job.cwd) };
  await restoreUpstream(stage, cache, name, log);
  const progress = progressSender(job);

  const grant = await slots.acquire(stage.cpu, stage.gpu);
  const started = Date.now();
  const attempt = job.attemptsStarted > 1 ? ` (attempt ${job.attemptsStarted})` : '';
  const part = stage.shard ? ` shard ${stage.shard.index + 1}/${stage.shard.count}` : stage.parts ? ` merge of ${stage.parts.length} shards` : '';
  log(`${stage.name}${part} ${stage.fingerprint.slice(0, 12)} started${attempt}${grant.gpus.length ? ` on GPU ${grant.gpus.join(',')}` : ''}`);
  progress.send({ type: 'stage-start', startedAt: started, worker: name });
  const children = new Set<StageProcess>();
  let cancelled: string | undefined;
  const onAbort = () => {
    cancelled = String(signal?.reason ?? 'cancelled by the submitter');
    for (const child of children) child.stop(cancelled);
  };
  signal?.addEventListener('abort', onAbort);
  let outcome;
  const epochGate = remoteGate(job, data, processor, progress.send);
  try {
    outcome = await runStage(stage, grant, {
      ...(epochGate ? { epochGate } : {}),
      cache,
      downloadCacheDir: config.downloadCacheDir,
      flavour: data.backend,
      gpusConfigured: config.gpus.length > 0,
      ...(config.tfThreads !== undefined ? { tfThreads: config.tfThreads } : {}),
      emit: progress.forward,
      children,
      aborted: () => cancelled,
    });
  } finally {
    grant.release();
    signal?.removeEventListener('abort', onAbort);
    await progress.sent();
  }
  if (outcome.status === 'failed') {
    log(`${stage.name}${part} failed after ${formatDuration(Date.now() - started)}: ${outcome.error}`);
    if (cancelled) throw new UnrecoverableError(outcome.error ?? cancelled);
    throw new StageError(outcome.error ?? 'failed');
  }
  if (outcome.status === 'pruned' && outcome.pruned) {
    // Its dependents stay held: the submitter removes their jobs and reports the trial pruned.
    log(`${stage.name} pruned after epoch ${outcome.pruned.epoch} of ${outcome.pruned.of} (${formatDuration(outcome.durationMs)})`);
    return { status: 'pruned', pruned: outcome.pruned, durationMs: outcome.durationMs, summary: outcome.summary, worker: name };
  }
  await releaseDependents(processor.edges, data.releases);
  log(`${stage.name}${part} ${outcome.status === 'cached' ? 'was in the cache already' : 'ran'} (${formatDuration(outcome.durationMs)})`);
  return { status: outcome.status === 'cached' ? 'cached' : 'ran', durationMs: outcome.durationMs, summary: outcome.summary, worker: name };
}

/**
 * Upstream entries must be in the shared cache; a command reads its upstream commands' outputs
 * from this worker's working directory, so those are put there first.
 */
async function restoreUpstream(stage: StageJob, cache: Cache, worker: string, log: (line: string) => void): Promise<void> {
  for (const fingerprint of stage.upstream) {
    const entry = await cache.readIntact(fingerprint, (problem) => log(`${stage.name}: upstream ${problem}: the submitter's next run recomputes it`));
    if (!entry) {
      throw new UnrecoverableError(`upstream entry ${fingerprint.slice(0, 12)} is not in the cache at ${cache.root} on ${worker}: is it the shared cache (--cache)?`);
    }
    if (stage.command !== undefined) await restoreOuts(entry, stage.cwd);
  }
}

/** The stage's run events as job progress, in order, progress bars thinned to a few a second. */
function progressSender(job: Job): { send: (p: StageJobProgress) => void; forward: (e: RunEvent) => void; sent: () => Promise<void> } {
  let sent = Promise.resolve();
  let lastProgress = 0;
  const send = (p: StageJobProgress) => {
    sent = sent.then(() => job.updateProgress(p)).catch(() => undefined);
  };
  const forward = (e: RunEvent) => {
    if (e.type === 'stage-log') send({ type: 'stage-log', stream: e.stream, line: e.line });
    else if (e.type === 'stage-metric') send({ type: 'stage-metric', point: e.point });
    else if (e.type === 'stage-progress') {
      // Progress is a live display: a few updates a second are enough.
      if (Date.now() - lastProgress < 250 && e.done !== e.total) return;
      lastProgress = Date.now();
      send({ type: 'stage-progress', done: e.done, total: e.total, label: e.label });
    }
  };
  return { send, forward, sent: () => sent };
}

/**
 * The entry is published: lets the stages that wait for it go. Last first: BullMQ puts a released
 * stage at the head of the waiting jobs, so the first in plan order (a sweep's t1 before t2) is
 * the next taken, and a sweep's scheduler sees the trials in the order a local sweep does.
 */
async function releaseDependents(edges: Queue, releases: string[]): Promise<void> {
  for (const id of [...releases].reverse()) {
    const edge = await Job.fromId(edges, id);
    if (!edge) continue;
    await edge.removeChildDependency();
    await edge.remove().catch(() => undefined);
  }
}
