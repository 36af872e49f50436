// `pipe worker --queue redis://HOST:PORT`: takes stage jobs from the queue and runs each with the
// executor's own code (a child process per stage, the machine's CPU and GPU slots,
// CUDA_VISIBLE_DEVICES per job), into the shared cache. Progress goes back as job progress; the
// result is the cache entry. A worker that dies mid-job loses its lock on the job: BullMQ hands the
// job to another worker after the lock expires, which takes over the stale cache lock and computes
// the stage again from scratch (a half-written entry is never published).

import * as os from 'node:os';
import * as path from 'node:path';
import { Job, Queue, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { Cache } from '../cache/cache.ts';
import { UsageError } from '../core/errors.ts';
import type { CommandStatus, Io } from '../core/io.ts';
import type { CommandOptions } from '../app/options.ts';
import type { RunEvent } from '../core/events.ts';
import { restoreOuts, runStage, type StageProcess } from '../exec/run-stage.ts';
import type { StageJob } from '../exec/stage-job.ts';
import { formatDuration } from '../render/render.ts';
import { projectPaths } from '../cache/project.ts';
import { gpuIds } from '../exec/runtime.ts';
import { Slots } from '../exec/slots.ts';
import {
  CANCEL_CHANNEL, EDGE_QUEUE, PREFIX, STAGE_QUEUE, parseQueueUrl,
  type StageJobData, type StageJobProgress, type StageJobResult,
} from './protocol.ts';

export async function workerCommand(values: CommandOptions, io: Io): Promise<CommandStatus> {
  if (!values.queue) throw new UsageError('pipe worker: --queue redis://HOST:PORT is required');
  const connection = parseQueueUrl(values.queue);
  const cpus = values.cpus !== undefined ? count('--cpus', values.cpus, 1) : os.availableParallelism();
  // --gpus N: the first N GPUs found (by id), or device numbers 0..N-1 where fewer are visible.
  const found = gpuIds();
  const wanted = values.gpus !== undefined ? count('--gpus', values.gpus, 0) : found.length;
  const gpus = found.length >= wanted ? found.slice(0, wanted) : Array.from({ length: wanted }, (_, i) => String(i));
  const name = values.name ?? `${os.hostname()}:${process.pid}`;
  const projectDir = process.cwd();
  const paths = projectPaths(projectDir);
  const cacheDir = values.cache ? path.resolve(values.cache) : undefined;
  const lockMs = Number(process.env['PIPE_QUEUE_LOCK_MS'] ?? 30_000);
  const slots = new Slots(cpus, gpus);
  const say = (line: string) => io.out(`${new Date().toISOString()} ${name}: ${line}\n`);

  const edges = new Queue(EDGE_QUEUE, { connection, prefix: PREFIX });
  const worker = new Worker(
    STAGE_QUEUE,
    async (job: Job, _token?: string, signal?: AbortSignal): Promise<StageJobResult> => {
      const data = job.data as StageJobData;
      const cache = new Cache(cacheDir ?? data.cacheDir);
      const stage: StageJob = { ...data.job, cwd: path.resolve(projectDir, data.job.cwd) };
      // Upstream entries must be in the shared cache; a command reads its upstream commands' outputs
      // from this worker's working directory, so those are put there first.
      for (const fingerprint of stage.upstream) {
        const entry = await cache.readIntact(fingerprint, (problem) => say(`${stage.name}: upstream ${problem}: the submitter's next run recomputes it`));
        if (!entry) {
          throw new UnrecoverableError(`upstream entry ${fingerprint.slice(0, 12)} is not in the cache at ${cache.root} on ${name}: is it the shared cache (--cache)?`);
        }
        if (stage.command !== undefined) await restoreOuts(entry, stage.cwd);
      }
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

      const grant = await slots.acquire(stage.cpu, stage.gpu);
      const started = Date.now();
      const attempt = job.attemptsStarted > 1 ? ` (attempt ${job.attemptsStarted})` : '';
      say(`${stage.name} ${stage.fingerprint.slice(0, 12)} started${attempt}${grant.gpus.length ? ` on GPU ${grant.gpus.join(',')}` : ''}`);
      send({ type: 'stage-start', startedAt: started, worker: name });
      const children = new Set<StageProcess>();
      let cancelled: string | undefined;
      const onAbort = () => {
        cancelled = String(signal?.reason ?? 'cancelled by the submitter');
        for (const child of children) child.stop(cancelled);
      };
      signal?.addEventListener('abort', onAbort);
      let outcome;
      try {
        outcome = await runStage(stage, grant.gpus, {
          cache,
          downloadCacheDir: paths.downloadsDir,
          backend: data.backend,
          gpusConfigured: gpus.length > 0,
          emit: forward,
          children,
          aborted: () => cancelled,
        });
      } finally {
        grant.release();
        signal?.removeEventListener('abort', onAbort);
        await sent;
      }
      if (outcome.status === 'failed') {
        say(`${stage.name} failed after ${formatDuration(Date.now() - started)}: ${outcome.error}`);
        if (cancelled) throw new UnrecoverableError(outcome.error ?? cancelled);
        throw new Error(outcome.error ?? 'failed');
      }
      // The entry is published: let the stages that wait for it go.
      for (const id of data.releases) {
        const edge = await Job.fromId(edges, id);
        if (!edge) continue;
        await edge.removeChildDependency();
        await edge.remove().catch(() => undefined);
      }
      say(`${stage.name} ${outcome.status === 'cached' ? 'was in the cache already' : 'ran'} (${formatDuration(outcome.durationMs)})`);
      return { status: outcome.status === 'cached' ? 'cached' : 'ran', durationMs: outcome.durationMs, summary: outcome.summary, worker: name };
    },
    {
      connection,
      prefix: PREFIX,
      name,
      concurrency: cpus,
      lockDuration: lockMs,
      stalledInterval: lockMs,
      maxStalledCount: 2,
      autorun: false,
    },
  );
  worker.on('error', (error) => say(`queue error: ${error.message}`));

  // A submitter that stops (Ctrl-C, --fail-fast) asks the workers to stop its running jobs.
  const subscriber = new Redis(connection);
  subscriber.on('error', () => undefined);
  await subscriber.subscribe(CANCEL_CHANNEL);
  subscriber.on('message', (_channel: string, message: string) => {
    try {
      const { jobIds, reason } = JSON.parse(message) as { jobIds: string[]; reason?: string };
      for (const id of jobIds) if (worker.cancelJob(id, reason ?? 'cancelled by the submitter')) say(`cancelling job ${id}: ${reason ?? ''}`);
    } catch {
      // not ours
    }
  });

  let stopping = false;
  const stop = async (signalName: string) => {
    if (stopping) {
      say(`${signalName} again: leaving now; running jobs go back to the queue`);
      process.exit(1);
    }
    stopping = true;
    say(`${signalName}: finishing the running jobs, taking no new ones (again to leave now)`);
    await worker.close();
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));

  await worker.waitUntilReady();
  say(`taking stage jobs from ${values.queue}: ${cpus} CPU slot${cpus === 1 ? '' : 's'}, ${gpus.length ? `GPUs ${gpus.join(',')}` : 'no GPU'}, cache ${cacheDir ?? "the submitter's"}, working directory ${projectDir}`);
  await worker.run();
  await Promise.allSettled([edges.close(), subscriber.quit()]);
  say('stopped');
  return 'ok';
}

function count(flag: string, text: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} ${text}: expected a whole number ≥ ${min}`);
  return n;
}
